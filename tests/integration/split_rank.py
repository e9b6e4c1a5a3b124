"""One rank of tests/integration/test_split_ranks.py: the model split by AutoTP (`tp`) or run under Ulysses
(`sp`) over all ranks, ZeRO 1, bf16; writes what the rank holds: parameters, ZeRO's group and fp32 partition,
and the bytes autograd saved in one forward pass (counted once per storage, parameters left out).

Run as: python -m torch.distributed.run --nproc_per_node 2 split_rank.py MODE CONFIG_JSON OUT SEQ MICRO
"""

from __future__ import annotations

import json
import sys
from typing import Any

import deepspeed
import deepspeed.comm as dist
import torch

from tuner.workload.hf_causal_lm import build_model


def main(mode: str, config: dict[str, Any], out: str, seq: int, micro: int) -> None:
    deepspeed.init_distributed(dist_backend="gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    model = build_model(config, seed=0)
    ds: dict[str, Any] = {
        "train_micro_batch_size_per_gpu": micro, "gradient_accumulation_steps": 1, "bf16": {"enabled": True},
        "optimizer": {"type": "Adam", "params": {"lr": 1e-3, "torch_adam": True}}, "zero_optimization": {"stage": 1},
    }  # fmt: skip
    mpu = None
    if mode == "tp":
        ds["tensor_parallel"] = {"autotp_size": world}
    else:
        from deepspeed.runtime.sequence_parallel.ulysses_sp import UlyssesSPAttentionHF

        mpu = UlyssesSPAttentionHF.register_with_transformers(
            model_name_or_path=model, core_attn_implementation="sdpa", sequence_parallel_size=world,
            micro_batch_size=micro, seq_length=seq, seq_length_is_variable=True,
        )  # fmt: skip
    engine, optimizer, _, _ = deepspeed.initialize(model=model, model_parameters=model.parameters(), config=ds, mpu=mpu)
    ids = torch.randint(0, config["vocab_size"], (micro, seq), generator=torch.Generator().manual_seed(0))
    batch = {"input_ids": ids, "labels": ids}
    if mode == "sp":  # what UlyssesSPDataLoaderAdapter hands rank r: its slice of the sequence, labels pre-shifted
        shift = torch.cat([ids[:, 1:], torch.full((micro, 1), -100)], dim=1)
        part = slice(rank * seq // world, (rank + 1) * seq // world)
        batch = {"input_ids": ids[:, part], "labels": shift[:, part], "shift_labels": shift[:, part],
                 "position_ids": torch.arange(seq).expand(micro, seq)[:, part]}  # fmt: skip
        batch = {k: v.contiguous() for k, v in batch.items()}
    params = {p.untyped_storage().data_ptr() for p in engine.module.parameters()}
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        key = t.untyped_storage().data_ptr()
        if key not in params:
            seen.setdefault(key, t.untyped_storage().nbytes())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = engine(**batch).loss
    engine.backward(loss)
    engine.step()
    result = {
        "parameters": sum(p.numel() for p in engine.module.parameters()),
        "zero_ranks": dist.get_world_size(optimizer.dp_process_group),
        "fp32_partition": sum(t.numel() for t in optimizer.single_partition_of_fp32_groups),
        "saved_bytes": sum(seen.values()),
        "loss": loss.item(),
    }
    with open(f"{out}.{rank}.json", "w") as f:
        json.dump(result, f)


if __name__ == "__main__":
    main(sys.argv[1], json.loads(sys.argv[2]), sys.argv[3], int(sys.argv[4]), int(sys.argv[5]))
