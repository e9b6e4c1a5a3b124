"""One rank of a trial: build the model, `deepspeed.initialize`, warm up, time optimizer steps (tuner.trial.timing).

Started by the launcher under torchrun as `python -m tuner.trial.worker SPEC.json`. Every rank times
its own steps with the device synchronised; the figures are reduced with MAX over ranks (the slowest
rank sets the pace of data-parallel training) and rank 0 writes `result.json`. A rank that fails
writes `error_rank<N>.json` with a category, so the launcher can say why without parsing logs.
"""

from __future__ import annotations

import json
import math
import os
import resource
import signal
import sys
import threading
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tuner.result import GB
from tuner.trial.failures import OOM, classify_exception, one_line
from tuner.trial.guard import die_with_parent
from tuner.trial.measure import WHOLE, allocator_fraction, composed_plan, reduce_on_device
from tuner.trial.spec import TrialSpec
from tuner.trial.timing import audit, measure


def _write_json(path: Path, payload: dict[str, Any]) -> None:
    """Write atomically so the launcher never reads half a file."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(payload, indent=2, sort_keys=True))
    os.replace(tmp, path)


def _peak_rss_bytes() -> int:
    """This process's peak resident set size (Linux reports ru_maxrss in KiB); the kernel keeps the peak."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _rss_bytes() -> int:
    """This process's resident set size now (Linux /proc), for the runtime baseline before the model exists."""
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _watch_host_budget(budget_bytes: float, out_dir: Path, rank: int, phase: list[str]) -> None:
    """A CPU rank's memory budget: past it, record an out-of-memory failure and end the rank at once.

    ru_maxrss is a high-water mark, so a peak between two checks is still seen at the next one.
    """
    while True:
        peak = _peak_rss_bytes()
        if peak > budget_bytes:
            _write_json(
                out_dir / f"error_rank{rank}.json",
                {
                    "rank": rank,
                    "phase": phase[0],
                    "category": OOM,
                    "reason": f"peak resident memory {peak / GB:.2f} GB went over hardware.device_memory_gb="
                    f"{budget_bytes / GB:g}",
                    "traceback": "",
                },
            )
            os._exit(1)
        time.sleep(0.05)


def _cap_device_memory(budget_gb: float | None, device: Any) -> dict[str, float]:
    """The card's size and what lives outside PyTorch's allocator now; caps the allocator at the budget less that.

    Called after the process group ran its first collective, so NCCL's communicator and buffers are counted.
    """
    import torch

    free, total = torch.cuda.mem_get_info(device)
    outside = float(total - free - torch.cuda.memory_reserved(device))
    if budget_gb:
        fraction = allocator_fraction(budget_gb * GB, total, outside)
        if fraction is None:
            raise MemoryError(
                f"hardware.device_memory_gb={budget_gb:g} leaves nothing for PyTorch after {outside / GB:.2f} GB "
                "of CUDA context and NCCL buffers (out of memory)"
            )
        torch.cuda.set_per_process_memory_fraction(fraction, device)
    return {"total": float(total), "outside": outside}


def run(spec: TrialSpec, out_dir: Path, phase: list[str]) -> None:
    """The trial's body; `phase` is updated in place so a failure can be attributed."""
    clock = {"launched": float(os.environ.get("TUNER_LAUNCH_EPOCH", time.time()))}
    import deepspeed
    import torch
    import torch.distributed as dist
    from deepspeed.accelerator import get_accelerator

    from tuner.trial.first_step import FirstStepLoss
    from tuner.workload import data, hf_causal_lm, long_seq

    clock["imported"] = time.time()
    accel = get_accelerator()
    phase[0] = "distributed"
    deepspeed.init_distributed(dist_backend=accel.communication_backend_name())
    rank, world = dist.get_rank(), dist.get_world_size()
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    on_gpu = accel.device_name() == "cuda"
    if on_gpu:
        accel.set_device(local_rank)
    device = torch.device(accel.device_name(local_rank))
    reduce_on_device([0.0], "sum", device)  # NCCL creates its communicator at the first collective: count it now
    budget_gb = spec.device_memory_gb
    card = _cap_device_memory(budget_gb, device) if on_gpu else {"total": 0.0, "outside": 0.0}
    if budget_gb and not on_gpu:
        watch = threading.Thread(target=_watch_host_budget, args=(budget_gb * GB, out_dir, rank, phase), daemon=True)
        watch.start()
    clock["distributed"] = time.time()

    def peak_now() -> float:
        return float(torch.cuda.max_memory_allocated(device) if on_gpu else _peak_rss_bytes())

    hf_causal_lm.import_model_code(spec.model_config)
    # the interpreter and libraries before any model exists: the rank's resident set on CPU, nothing on a GPU
    marks = {"runtime": float(torch.cuda.memory_allocated(device) if on_gpu else _rss_bytes())}
    ds_config = spec.ds_config
    phase[0] = "build"
    if (ds_config.get("zero_optimization") or {}).get("stage") == 3:
        model = hf_causal_lm.build_partitioned_model(spec.model_config, spec.seed, ds_config, spec.model_options)
    else:
        model = hf_causal_lm.build_model(spec.model_config, seed=spec.seed, options=spec.model_options)
    if spec.activation_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    facts = hf_causal_lm.model_facts(model)
    vocab = hf_causal_lm.vocab_size(model)
    mpu = long_seq.prepare(model, spec)  # Ulysses' groups (its mpu), TiledMLP, the tiled logits loss
    marks["build"] = peak_now()
    clock["built"] = time.time()

    phase[0] = "initialize"
    engine, _, _, _ = deepspeed.initialize(
        model=model, model_parameters=[p for p in model.parameters() if p.requires_grad], config=ds_config, mpu=mpu
    )
    first = FirstStepLoss(engine.module, spec.grad_accum)
    marks["initialize"] = peak_now()
    clock["initialized"] = time.time()

    phase[0] = "data"
    # One optimizer step's micro-batches (random ids, or this rank's part of the dataset's global batch), made on
    # the device before any timing and reused by every step: no host copy falls inside the clock.
    batches = data.step_batches(spec, rank, world, vocab, device)
    phase[0] = "train"
    timing = measure(engine, batches, spec, accel.synchronize, device)
    if spec.audit_rounds and composed_plan(len(batches)) < len(batches):
        timing.audit = audit(engine, batches, spec.audit_rounds, accel.synchronize, device)
    clock["warmed_up"] = timing.warmed_up
    # A composed sample runs a few of the step's micro-batches, not the whole step: no first-step loss to compare.
    first_loss = first.value() if timing.step_timing == WHOLE else None
    ending = Ending(out_dir, device, on_gpu, local_rank, card, marks, clock, facts, timing.summary(), first_loss)
    end_trial(ending, timing.times, timing.stopped_early, timing.loss)


@dataclass(frozen=True)
class Ending:
    """What a rank needs to end a trial: where to write, its device, and what it measured on the way."""

    out_dir: Path
    device: Any
    on_gpu: bool
    local_rank: int
    card: dict[str, float]
    marks: dict[str, float]
    clock: dict[str, float]
    facts: dict[str, int]
    timing: dict[str, Any] = field(default_factory=lambda: {"step_timing": "whole"})  # how the steps were timed
    first_loss: float | None = None  # the first optimizer step's loss (tuner.trial.first_step); None: not known


def end_trial(end: Ending, times: list[float], stopped_early: bool, loss_value: float) -> None:
    """Reduce the memory figures and the loss over the ranks, write rank 0's result.json, leave the group.

    The built-in worker and a user's script (tuner.trial.script_meter) end a trial alike: every collective on
    the rank's device, the slowest rank's figures.
    """
    import torch
    import torch.distributed as dist

    end.clock["measured"] = time.time()
    device, on_gpu, marks = end.device, end.on_gpu, end.marks
    rss = float(_peak_rss_bytes())
    if on_gpu:
        free, total = torch.cuda.mem_get_info(device)
        outside = max(end.card["outside"], float(total - free - torch.cuda.memory_reserved(device)))
        mem = [float(torch.cuda.max_memory_allocated(device)), float(torch.cuda.max_memory_reserved(device)), rss]
    else:
        outside, mem = 0.0, [rss, rss, rss]
    (peak, reserved, host, runtime, build, initialize, overhead, card_total) = reduce_on_device(
        [*mem, marks["runtime"], marks["build"], marks["initialize"], outside, end.card["total"]], "max", device
    )
    world = dist.get_world_size()
    first = math.nan if end.first_loss is None else end.first_loss
    first_loss, final_loss = (value / world for value in reduce_on_device([first, loss_value], "sum", device))
    if dist.get_rank() == 0:
        _write_json(
            end.out_dir / "result.json",
            {
                "world_size": world,
                "device": "cuda" if on_gpu else "cpu",
                "device_name": torch.cuda.get_device_name(device) if on_gpu else "cpu",
                "step_times_s": times,
                "stopped_early": stopped_early,
                "peak_mem_bytes": peak,
                "peak_reserved_bytes": reserved,
                "host_mem_bytes": host,
                "runtime_mem_bytes": runtime,
                "build_peak_bytes": build,
                "initialize_peak_bytes": initialize,
                "device_overhead_bytes": overhead,
                "device_total_bytes": card_total,
                "threads_per_rank": torch.get_num_threads(),
                # forked from the warm server (tuner.trial.warm_leader sets it) or started by torchrun
                "rank_start": "fork" if os.environ.get("TUNER_WARM_RANK") == "1" else "torchrun",
                "final_loss": final_loss,
                **({} if end.first_loss is None else {"first_loss": first_loss}),
                **end.facts,
                **end.timing,
                "clock": end.clock,
            },
        )
    if on_gpu:
        dist.barrier(device_ids=[end.local_rank])  # NCCL's barrier on this rank's own card
    else:
        dist.barrier()
    dist.destroy_process_group()


def main(argv: list[str]) -> int:
    """Entry point of one rank; returns the process exit code."""
    die_with_parent(signal.SIGKILL)  # a rank must not outlive its torchrun
    spec_path = Path(argv[0])
    spec = TrialSpec.from_json(spec_path.read_text())
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
    # The result is written and every rank passed the barrier: skip the interpreter's teardown of torch,
    # DeepSpeed and transformers, which took about 5 s of a 20 s CPU trial here.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
