"""A point's Ulysses sequence parallelism, TiledMLP and tiled logits loss, set up on the built model.

Called between building the model and `deepspeed.initialize` (AutoTP needs nothing here: the config's
`tensor_parallel.autotp_size` makes DeepSpeed shard the model; tuner.workload.layout gives its ranks the same
samples). The APIs are DeepSpeed 0.19.8's deepspeed/runtime/sequence_parallel/ulysses_sp.py, used as its
docstrings and ArcticTraining use them:
- Ulysses: `UlyssesSPAttentionHF.register_with_transformers` swaps the model's attention kernel for one that
  exchanges heads over the sequence-parallel group and returns the `mpu` deepspeed.initialize takes.
- TiledMLP: each decoder layer's MLP runs over sequence tiles (forward under no_grad, recomputed tile by tile in
  the backward); tuner.parallel.mlp_tile_shards says how many, as for the memory model.
- TiledFusedLogitsLoss: the output projection and the loss run tile by tile, never holding all logits;
  tuner.parallel.logits_tile_shards says how many.

Under Ulysses, or with tiled logits, the model's forward becomes `_loss_forward`: the decoder's hidden states,
then the cross-entropy sum over this rank's pre-shifted labels divided by the tokens of the whole sample
(all its sequence slices). DeepSpeed sums the gradients over a Ulysses group (zero/stage_1_and_2.py divides
by dp / sp), so each rank's loss is its slice's share and the gradients are those of the whole sample's mean;
the loss *value* is the whole sample's mean on every rank, so the trial's loss means what a tp 1 / sp 1
trial's does. TiledFusedLogitsLoss computes the output projection's gradient inside its forward, out of
reach of DeepSpeed's 1/accumulation loss scaling, so the tiles' loss carries that factor itself.
"""

from __future__ import annotations

from functools import partial
from types import MethodType, SimpleNamespace
from typing import TYPE_CHECKING, Any

from tuner.parallel import logits_tile_shards, mlp_tile_shards, sizes
from tuner.workload.layout import IGNORE

if TYPE_CHECKING:
    import torch

    from tuner.trial.spec import TrialSpec


def causal_lm(model: Any) -> Any:
    """The transformers causal LM inside LoRA's wrapper (PEFT calls its forward), or the model itself."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def prepare(model: Any, spec: TrialSpec) -> Any:
    """Set up the point's Ulysses group and tiled knobs on `model`; the mpu for deepspeed.initialize, or None."""
    _, sp = sizes(spec.point)
    tiled_mlp, tiled_logits = bool(spec.point.get("tiled_mlp")), bool(spec.point.get("tiled_logits"))
    lm = causal_lm(model)
    assert spec.sequence_length is not None, "the built-in workload has a sequence length"
    local = spec.sequence_length // sp
    mpu = None
    if sp > 1:
        from deepspeed.runtime.sequence_parallel.ulysses_sp import UlyssesSPAttentionHF

        mpu = UlyssesSPAttentionHF.register_with_transformers(
            model_name_or_path=lm,
            core_attn_implementation=lm.config._attn_implementation,
            sequence_parallel_size=sp,
            micro_batch_size=spec.micro_batch_size,
            seq_length=spec.sequence_length,
        )
    if tiled_mlp:
        tile_mlps(lm, mlp_tile_shards(local, int(lm.config.hidden_size)))
    if sp > 1 or tiled_logits:
        vocab = int(lm.get_output_embeddings().weight.shape[0])
        shards = logits_tile_shards(spec.micro_batch_size, local, vocab) if tiled_logits else None
        group = mpu.get_sequence_parallel_group() if mpu is not None else None
        install_loss(lm, shards, group, spec.grad_accum)
    return mpu


def install_loss(lm: Any, shards: int | None, group: Any, accum: int) -> None:
    """Make `lm`'s forward return the whole samples' loss from this rank's slice (`group`: its Ulysses group, or
    None), the logits in `shards` tiles (None: whole); `accum` micro-batches per optimizer step."""
    lm.forward = MethodType(partial(_loss_forward, shards=shards, group=group, accum=accum), lm)


def tile_mlps(lm: Any, shards: int) -> int:
    """Run every decoder layer's MLP (a module named `mlp`) through TiledMLP in `shards` tiles; how many."""
    mlps = [module for name, module in lm.named_modules() if name.rsplit(".", 1)[-1] == "mlp"]
    if not mlps:
        raise ValueError(f"tiled_mlp: {type(lm).__name__} has no module named 'mlp' to tile")
    for mlp in mlps:
        mlp.forward = MethodType(partial(_tiled_mlp_forward, shards=shards), mlp)
    return len(mlps)


def _mlp(mlp: Any, x: torch.Tensor) -> torch.Tensor:
    """The MLP's own forward (its class's), which TiledMLP calls on each tile."""
    return type(mlp).forward(mlp, x)


def _tiled_mlp_forward(mlp: Any, x: torch.Tensor, shards: int) -> torch.Tensor:
    from deepspeed.runtime.sequence_parallel.ulysses_sp import TiledMLP

    # the parameters read at call time: AutoTP replaces the MLP's linear layers after this patch
    return TiledMLP.apply(_mlp, mlp, x, shards, list(mlp.parameters()))


def _loss_sum(head: Any, x: torch.Tensor, y: torch.Tensor, scale: float) -> torch.Tensor:
    """Cross-entropy summed over the labelled tokens (fp32 logits, as transformers' loss), times `scale`."""
    import torch

    logits = head(x).float()
    loss = torch.nn.functional.cross_entropy(
        logits.reshape(-1, logits.shape[-1]), y.reshape(-1), ignore_index=IGNORE, reduction="sum"
    )
    return loss * scale


def _loss_forward(
    lm: Any,
    input_ids: torch.Tensor,
    labels: torch.Tensor | None = None,
    shift_labels: torch.Tensor | None = None,
    *,
    shards: int | None,
    group: Any,
    accum: int,
    **kwargs: Any,
) -> SimpleNamespace:
    """The mean next-token loss of the whole samples, computed from this rank's part (module docstring)."""
    import torch
    import torch.distributed as dist

    if shift_labels is None:
        assert labels is not None, "a training batch has labels"
        shift_labels = torch.nn.functional.pad(labels, (0, 1), value=IGNORE)[:, 1:]
    hidden = lm.get_decoder()(input_ids=input_ids, **kwargs).last_hidden_state
    head = lm.get_output_embeddings()
    tokens = (shift_labels != IGNORE).sum().to(torch.float32)
    if group is not None:
        dist.all_reduce(tokens, group=group)
    tokens = tokens.clamp(min=1.0)
    if shards is None:
        local = _loss_sum(head, hidden, shift_labels, 1.0) / tokens
    else:
        from deepspeed.runtime.sequence_parallel.ulysses_sp import TiledFusedLogitsLoss

        fn = partial(_loss_sum, scale=float(1.0 / (tokens * accum)))
        params = list(head.parameters())
        local = TiledFusedLogitsLoss.apply(fn, head, hidden, shift_labels, None, shards, params, "sum") * accum
    if group is None:
        return SimpleNamespace(loss=local)
    whole = local.detach().clone()
    dist.all_reduce(whole, group=group)
    return SimpleNamespace(loss=local + (whole - local).detach())  # the value of the whole, the slice's gradient
