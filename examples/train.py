"""A minimal production-style training script for an exported ds_config.json.

    deepspeed --num_gpus 2 examples/train.py --deepspeed_config ds_config.json \
        --model-config ds_config.provenance.json --sequence-length 128 --steps 5

It reads the batch layout from the DeepSpeed config (as a real job does), trains a causal LM built from
a transformers config with random weights on random tokens, and prints the loss of every step. A config with
`tensor_parallel.autotp_size` N (AutoTP) needs nothing more than the config: DeepSpeed shards the model, and the
N consecutive ranks of a tensor-parallel group draw the same samples. One with `sequence_parallel_size` N
(Ulysses) registers DeepSpeed's sequence-parallel attention (sdpa) before `deepspeed.initialize` and feeds
each rank its slice of every sample through `UlyssesSPDataLoaderAdapter`.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

import deepspeed
import torch
from deepspeed.accelerator import get_accelerator

from tuner.workload import hf_causal_lm, long_seq


def batches(generator: torch.Generator, vocab: int, micro: int, seq: int, device: torch.device) -> Any:
    """Random micro-batches without end; position ids too, which Ulysses needs to slice a sample."""
    while True:
        batch = hf_causal_lm.synthetic_batch(generator, vocab, micro, seq, device)
        yield {**batch, "position_ids": torch.arange(seq, device=device).expand(micro, seq)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--deepspeed_config", type=Path, required=True)
    parser.add_argument(
        "--model-config",
        type=Path,
        required=True,
        help="a transformers config.json, or the export's provenance file (its model_config and checkpointing)",
    )
    parser.add_argument("--sequence-length", type=int, default=128)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--gradient-checkpointing", action="store_true")
    parser.add_argument("--local_rank", type=int, default=-1)  # passed by the deepspeed launcher
    args = parser.parse_args()

    accel = get_accelerator()
    deepspeed.init_distributed(dist_backend=accel.communication_backend_name())
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if accel.device_name() == "cuda":
        accel.set_device(local_rank)
    ds_config = json.loads(args.deepspeed_config.read_text())
    model_json = json.loads(args.model_config.read_text())
    checkpointing = args.gradient_checkpointing or bool(model_json.get("activation_checkpointing"))
    model_config = model_json.get("model_config", model_json)
    # the provenance's attention implementation and LoRA adapters (model.peft), as the trials built them
    options = {key: model_json[key] for key in ("attn_implementation", "peft") if model_json.get(key)}
    if (ds_config.get("zero_optimization") or {}).get("stage") == 3:  # built partitioned, as the trials did
        model = hf_causal_lm.build_partitioned_model(model_config, 0, ds_config, options)
    else:
        model = hf_causal_lm.build_model(model_config, seed=0, options=options)
    if checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    tp = int((ds_config.get("tensor_parallel") or {}).get("autotp_size") or 1)
    sp = int(ds_config.get("sequence_parallel_size") or 1)
    micro = int(ds_config["train_micro_batch_size_per_gpu"])
    mpu = None
    if sp > 1:
        from deepspeed.runtime.sequence_parallel.ulysses_sp import UlyssesSPAttentionHF

        lm = long_seq.causal_lm(model)
        mpu = UlyssesSPAttentionHF.register_with_transformers(
            model_name_or_path=lm, core_attn_implementation=lm.config._attn_implementation,
            sequence_parallel_size=sp, micro_batch_size=micro, seq_length=args.sequence_length,
        )  # fmt: skip
        # the loss of the whole samples from each rank's slice (each slice's share of it, see long_seq)
        long_seq.install_loss(
            lm, None, mpu.get_sequence_parallel_group(), int(ds_config["gradient_accumulation_steps"])
        )
    trainable = [p for p in model.parameters() if p.requires_grad]  # with LoRA: the adapters only
    engine, _, _, _ = deepspeed.initialize(model=model, model_parameters=trainable, config=ds_config, mpu=mpu)
    vocab = hf_causal_lm.vocab_size(model)
    device = torch.device(accel.device_name(local_rank))
    # the ranks of one tensor-parallel group (consecutive ranks) train on the same samples
    data: Any = batches(
        torch.Generator().manual_seed(engine.global_rank // tp), vocab, micro, args.sequence_length, device
    )
    if sp > 1:
        from deepspeed.runtime.sequence_parallel.ulysses_sp import UlyssesSPDataLoaderAdapter

        assert mpu is not None
        data = UlyssesSPDataLoaderAdapter(
            Endless(data), sp_rank=mpu.get_sequence_parallel_rank(), sp_group=mpu.get_sequence_parallel_group(),
            sp_world_size=sp, device=device,
        )  # fmt: skip
    for step in range(args.steps):
        for _ in range(engine.gradient_accumulation_steps()):
            batch = {key: value.to(device) for key, value in next(data).items()}
            loss = engine(**batch).loss
            engine.backward(loss)
            engine.step()
        if engine.global_rank == 0:
            print(f"step {step + 1}/{args.steps} loss {loss.item():.4f}", flush=True)


class Endless:
    """A generator as the adapter's data loader (it asks for iter() and len())."""

    def __init__(self, source: Any) -> None:
        self.source = source

    def __iter__(self) -> Any:
        return self.source

    def __len__(self) -> int:
        return 2**31


if __name__ == "__main__":
    main()
