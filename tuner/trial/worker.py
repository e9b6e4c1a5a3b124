"""One rank of a trial: build the model, `deepspeed.initialize`, warm up, time whole optimizer steps.

Started by the launcher under torchrun as `python -m tuner.trial.worker SPEC.json`. Every rank times
its own steps with the device synchronised; the figures are reduced with MAX over ranks (the slowest
rank sets the pace of data-parallel training) and rank 0 writes `result.json`. A rank that fails
writes `error_rank<N>.json` with a category, so the launcher can say why without parsing logs.
"""

from __future__ import annotations

import json
import os
import resource
import signal
import statistics
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from tuner.trial.failures import classify_exception, one_line
from tuner.trial.guard import die_with_parent


def _write_json(path: Path, payload: dict[str, Any]) -> None:
    """Write atomically so the launcher never reads half a file."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(payload, indent=2, sort_keys=True))
    os.replace(tmp, path)


def _peak_rss_bytes() -> int:
    """This process's peak resident set size (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def run(spec: dict[str, Any], out_dir: Path, phase: list[str]) -> None:
    """The trial's body; `phase` is updated in place so a failure can be attributed."""
    import deepspeed
    import torch
    import torch.distributed as dist
    from deepspeed.accelerator import get_accelerator

    from tuner.workload import hf_causal_lm

    accel = get_accelerator()
    phase[0] = "distributed"
    deepspeed.init_distributed(dist_backend=accel.communication_backend_name())
    rank, world = dist.get_rank(), dist.get_world_size()
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    on_gpu = accel.device_name() == "cuda"
    if on_gpu:
        accel.set_device(local_rank)
    device = torch.device(accel.device_name(local_rank))
    budget_gb = spec.get("device_memory_gb")
    if on_gpu and budget_gb:
        # A budget below the card's size is enforced by the caching allocator: past it, a real OOM.
        total = torch.cuda.get_device_properties(device).total_memory
        torch.cuda.set_per_process_memory_fraction(min(1.0, budget_gb * 1024**3 / total), device)

    ds_config = spec["ds_config"]
    phase[0] = "build"
    # Built whole on each rank and partitioned by deepspeed.initialize: deepspeed.zero.Init, which would
    # build ZeRO-3 models already partitioned, fails under torch 2.13's tensor-constructor checks.
    model = hf_causal_lm.build_model(spec["model_config"], seed=spec["seed"])
    if spec["activation_checkpointing"]:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    vocab = hf_causal_lm.vocab_size(model)

    phase[0] = "initialize"
    engine, _, _, _ = deepspeed.initialize(
        model=model, model_parameters=[p for p in model.parameters() if p.requires_grad], config=ds_config
    )

    phase[0] = "train"
    generator = torch.Generator().manual_seed(spec["seed"] + rank)
    micro, accum, seq = spec["micro_batch_size"], spec["grad_accum"], spec["sequence_length"]

    def optimizer_step() -> tuple[float, float]:
        accel.synchronize()
        start = time.perf_counter()
        loss_sum = 0.0
        for _ in range(accum):
            batch = hf_causal_lm.synthetic_batch(generator, vocab, micro, seq, device)
            loss = engine(**batch).loss
            engine.backward(loss)
            engine.step()
            loss_sum += float(loss.detach())
        accel.synchronize()
        return time.perf_counter() - start, loss_sum / accum

    for _ in range(spec["warmup_steps"]):
        optimizer_step()
    times, losses = [], []
    for _ in range(spec["measure_steps"]):
        elapsed, loss_value = optimizer_step()
        times.append(elapsed)
        losses.append(loss_value)

    # The slowest rank's time per step counts; memory is the maximum over ranks.
    step_times = torch.tensor(times, dtype=torch.float64)
    dist.all_reduce(step_times, op=dist.ReduceOp.MAX)
    if on_gpu:
        mem = [float(torch.cuda.max_memory_allocated(device)), float(torch.cuda.max_memory_reserved(device))]
    else:
        mem = [float(_peak_rss_bytes()), float(_peak_rss_bytes())]
    mem_t = torch.tensor(mem, dtype=torch.float64)
    dist.all_reduce(mem_t, op=dist.ReduceOp.MAX)
    final_loss = torch.tensor([losses[-1]], dtype=torch.float64)
    dist.all_reduce(final_loss, op=dist.ReduceOp.SUM)

    if rank == 0:
        median = statistics.median(step_times.tolist())
        spread = statistics.pstdev(step_times.tolist()) / statistics.fmean(step_times.tolist())
        _write_json(
            out_dir / "result.json",
            {
                "world_size": world,
                "device": "cuda" if on_gpu else "cpu",
                "step_times_s": step_times.tolist(),
                "step_time_s": median,
                "step_time_cv": spread,
                "peak_mem_bytes": mem_t[0].item(),
                "peak_reserved_bytes": mem_t[1].item(),
                "final_loss": final_loss.item() / world,
                "num_parameters": sum(p.ds_numel if hasattr(p, "ds_numel") else p.numel() for p in model.parameters()),
            },
        )
    dist.barrier()
    dist.destroy_process_group()


def main(argv: list[str]) -> int:
    """Entry point of one rank; returns the process exit code."""
    die_with_parent(signal.SIGKILL)  # a rank must not outlive its torchrun
    spec_path = Path(argv[0])
    spec = json.loads(spec_path.read_text())
    out_dir = spec_path.parent
    rank = int(os.environ.get("RANK", "0"))
    phase = ["start"]
    try:
        run(spec, out_dir, phase)
    except BaseException as exc:
        category = classify_exception(exc, phase[0])
        _write_json(
            out_dir / f"error_rank{rank}.json",
            {
                "rank": rank,
                "phase": phase[0],
                "category": category,
                "reason": one_line(exc),
                "traceback": traceback.format_exc(),
            },
        )
        traceback.print_exc()
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
