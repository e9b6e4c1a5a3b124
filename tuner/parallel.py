"""Tensor and sequence parallelism (pure): the batch arithmetic, and which combinations DeepSpeed 0.19 runs.

DeepSpeed's AutoTP training (`"tensor_parallel": {"autotp_size": tp}`, deepspeed/runtime/tensor_parallel/)
shards each transformer layer's linear layers over tp consecutive ranks; its Ulysses sequence parallelism
for Hugging Face models (deepspeed/runtime/sequence_parallel/ulysses_sp.py) gives each of sp ranks a slice of
the sequence and exchanges heads for the attention. The data-parallel ranks are what is left: ranks / (tp x
sp); gradient accumulation keeps the global batch over them; ZeRO partitions over the data-parallel group
(and, for Ulysses, over the sequence x data group). Read from DeepSpeed 0.19.8's sources and probed on CPU:
- AutoTP counts DeepSpeed's batch over the whole world (runtime/config.py: train_batch_size = micro x
  accumulation x world), the tp ranks of a group seeing the same samples; Ulysses over world / sp.
- AutoTP accepts ZeRO 0-3 (engine.py) and splits attention by key-value head groups, unevenly when tp does
  not divide them (module_inject/tp_shard.py); ranks past the key-value head count hold no attention shard.
  The tuner takes only even splits, so the slowest rank does not set a misleading pace.
- Ulysses needs sp to divide the attention heads (a ValueError otherwise), the key-value heads and sp to
  divide one another, and refuses eager attention (a 4D mask); it needs sdpa or flash attention.
- The two do not combine in 0.19.8: AutoTP's set-up replaces the mpu Ulysses passes (engine.py
  `_configure_tensor_parallel`), and both build their groups from consecutive ranks.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

TP, SP, LENGTH = "tensor_parallel_size", "sequence_parallel_size", "sequence_length"
# Model types AutoTP refuses (deepspeed/module_inject/auto_tp.py AutoTP.supported, 0.19.8; a test keeps it in step)
AUTOTP_UNSUPPORTED = ("deberta", "flaubert", "fsmt", "gpt2", "led", "longformer", "xlm", "xlnet")
LOGITS_TILE_BYTES = 2**30  # ArcticTraining's target: about 1 GiB of fp32 logits per tile


@dataclass(frozen=True)
class Context:
    """What a point is judged against besides its own knob values: the ranks, the model, the sequence."""

    ranks: int
    ranks_per_node: int | None = None
    heads: int | None = None
    kv_heads: int | None = None
    sequence_length: int | None = None  # the fixed one; a point may set its own (data.sequence_length list)
    attention: str | None = None  # transformers' attn_implementation; None: its default (sdpa)
    model_type: str | None = None  # transformers' model_type; None: a script's own model


def sizes(values: Mapping[str, Any]) -> tuple[int, int]:
    """A point's tensor- and sequence-parallel sizes (1 when it does not set them)."""
    return int(values.get(TP) or 1), int(values.get(SP) or 1)


def data_parallel(values: Mapping[str, Any], ranks: int) -> int:
    """The data-parallel ranks: what tensor and sequence parallelism leave of the ranks."""
    tp, sp = sizes(values)
    return ranks // (tp * sp)


def deepspeed_world(values: Mapping[str, Any], ranks: int) -> int:
    """The world DeepSpeed's batch check multiplies by: all ranks under AutoTP, ranks / sp under Ulysses."""
    return ranks // sizes(values)[1]


def tp_problem(tp: int, values: Mapping[str, Any], ctx: Context) -> str | None:
    """Why tensor_parallel_size `tp` cannot run with the rest of the point, or None."""
    if tp == 1:
        return None
    if sizes(values)[1] > 1:
        return (
            f"tensor_parallel_size {tp} with sequence_parallel_size {sizes(values)[1]}: DeepSpeed 0.19's AutoTP "
            "replaces the process groups Ulysses needs (engine.py _configure_tensor_parallel); use one of them"
        )
    if ctx.ranks % tp:
        return f"tensor_parallel_size {tp} does not divide the {ctx.ranks} ranks"
    if ctx.ranks_per_node is not None and tp > ctx.ranks_per_node:
        return (
            f"tensor_parallel_size {tp} would span nodes: a tensor-parallel group stays within one node's "
            f"{ctx.ranks_per_node} ranks"
        )
    if ctx.model_type in AUTOTP_UNSUPPORTED:
        return f"tensor_parallel_size {tp}: DeepSpeed's AutoTP does not support {ctx.model_type} models (auto_tp.py)"
    if ctx.kv_heads is not None and ctx.kv_heads % tp:
        return f"tensor_parallel_size {tp} does not divide the model's {ctx.kv_heads} key-value heads"
    return None


def sp_problem(sp: int, values: Mapping[str, Any], ctx: Context) -> str | None:
    """Why sequence_parallel_size `sp` cannot run with the rest of the point, or None."""
    if sp == 1:
        return None
    if ctx.ranks % sp:
        return f"sequence_parallel_size {sp} does not divide the {ctx.ranks} ranks"
    if ctx.heads is not None and ctx.heads % sp:
        return f"sequence_parallel_size {sp} does not divide the model's {ctx.heads} attention heads"
    kv = ctx.kv_heads
    if kv is not None and kv % sp and sp % kv:
        return f"sequence_parallel_size {sp} and the model's {kv} key-value heads: one must divide the other"
    length = values.get(LENGTH) or ctx.sequence_length
    if length is not None and length % sp:
        return f"sequence_parallel_size {sp} does not divide sequence_length {length}"
    if ctx.attention == "eager":
        return "sequence_parallel_size needs sdpa or flash attention: DeepSpeed's Ulysses refuses eager"
    return None


def mlp_tile_shards(local_sequence: int, hidden: int) -> int:
    """Tiles DeepSpeed's TiledMLP splits a rank's sequence into: ceil(seq / hidden), each tile about as long as
    the model is wide (the heuristic in TiledMLP's docstring, deepspeed/runtime/sequence_parallel/ulysses_sp.py,
    and ArcticTraining's tiled_mlp_forward). `local_sequence` is what the rank holds: seq / sp under Ulysses.
    The workload and the memory model both read this one function."""
    return max(1, math.ceil(local_sequence / hidden))


def logits_tile_shards(micro_batch: int, local_sequence: int, vocab: int) -> int:
    """Tiles TiledFusedLogitsLoss splits a rank's logits into: about 1 GiB of fp32 logits each
    (ArcticTraining's sft_trainer: ceil(b x seq x vocab x 4 / 2**30)); DeepSpeed leaves the number to the caller."""
    return max(1, math.ceil(micro_batch * local_sequence * vocab * 4 / LOGITS_TILE_BYTES))
