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
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Any

from tuner.result import GB, spread
from tuner.trial.failures import OOM, classify_exception, one_line
from tuner.trial.guard import die_with_parent

EARLY_STOP_MIN_STEPS = 2  # one timed step can be an outlier; two that are both over the limit are not


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


def steady_state_done(times: list[float], target: int, cap: int, max_cv: float) -> bool:
    """Stop measuring once `target` steps are in and their spread is within `max_cv`, or at `cap` steps."""
    if len(times) < target:
        return False
    return len(times) >= cap or spread(times) <= max_cv


def clearly_slower(times: list[float], limit_s: float | None, min_steps: int = EARLY_STOP_MIN_STEPS) -> bool:
    """Early stopping: after `min_steps` timed steps, even the fastest one took longer than `limit_s`.

    The fastest step is the trial's most optimistic figure: a trial stops only when every step it timed
    was over the limit, not because one step was slow.
    """
    return limit_s is not None and len(times) >= min_steps and min(times) > limit_s


def run(spec: dict[str, Any], out_dir: Path, phase: list[str]) -> None:
    """The trial's body; `phase` is updated in place so a failure can be attributed."""
    clock = {"launched": float(os.environ.get("TUNER_LAUNCH_EPOCH", time.time()))}
    import deepspeed
    import torch
    import torch.distributed as dist
    from deepspeed.accelerator import get_accelerator

    from tuner.workload import hf_causal_lm

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
    budget_gb = spec.get("device_memory_gb")
    if budget_gb and on_gpu:
        # A budget below the card's size is enforced by the caching allocator: past it, a real OOM.
        total = torch.cuda.get_device_properties(device).total_memory
        torch.cuda.set_per_process_memory_fraction(min(1.0, budget_gb * GB / total), device)
    elif budget_gb:
        watch = threading.Thread(target=_watch_host_budget, args=(budget_gb * GB, out_dir, rank, phase), daemon=True)
        watch.start()
    clock["distributed"] = time.time()

    def peak_now() -> float:
        return float(torch.cuda.max_memory_allocated(device) if on_gpu else _peak_rss_bytes())

    hf_causal_lm.import_model_code(spec["model_config"])
    marks = {"runtime": float(_rss_bytes())}  # the interpreter and libraries, before any model exists
    ds_config = spec["ds_config"]
    phase[0] = "build"
    if (ds_config.get("zero_optimization") or {}).get("stage") == 3:
        model = hf_causal_lm.build_partitioned_model(spec["model_config"], spec["seed"], ds_config)
    else:
        model = hf_causal_lm.build_model(spec["model_config"], seed=spec["seed"])
    if spec["activation_checkpointing"]:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    facts = hf_causal_lm.model_facts(model)
    vocab = hf_causal_lm.vocab_size(model)
    marks["build"] = peak_now()
    clock["built"] = time.time()

    phase[0] = "initialize"
    engine, _, _, _ = deepspeed.initialize(
        model=model, model_parameters=[p for p in model.parameters() if p.requires_grad], config=ds_config
    )
    marks["initialize"] = peak_now()
    clock["initialized"] = time.time()

    phase[0] = "train"
    generator = torch.Generator().manual_seed(spec["seed"] + rank)
    micro, accum, seq = spec["micro_batch_size"], spec["grad_accum"], spec["sequence_length"]

    def optimizer_step() -> tuple[float, float]:
        """One optimizer step over every accumulation micro-step, timed with the device synchronised."""
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
    clock["warmed_up"] = time.time()
    times: list[float] = []
    loss_value = float("nan")
    target = spec["measure_steps"]
    cap = max(target, spec.get("max_measure_steps") or target)
    stopped_early = False
    while not steady_state_done(times, target, cap, spec.get("max_cv", 1.0)):
        elapsed, loss_value = optimizer_step()
        # The slowest rank sets the pace; every rank gets the same list, so all decide alike when to stop.
        slowest = torch.tensor([elapsed], dtype=torch.float64)
        dist.all_reduce(slowest, op=dist.ReduceOp.MAX)
        times.append(slowest.item())
        if clearly_slower(times, spec.get("stop_over_step_s")):
            stopped_early = True
            break
    clock["measured"] = time.time()

    rss = float(_peak_rss_bytes())
    if on_gpu:
        mem = [float(torch.cuda.max_memory_allocated(device)), float(torch.cuda.max_memory_reserved(device)), rss]
    else:
        mem = [rss, rss, rss]
    mem_t = torch.tensor([*mem, marks["runtime"], marks["build"], marks["initialize"]], dtype=torch.float64)
    dist.all_reduce(mem_t, op=dist.ReduceOp.MAX)
    final_loss = torch.tensor([loss_value], dtype=torch.float64)
    dist.all_reduce(final_loss, op=dist.ReduceOp.SUM)

    if rank == 0:
        _write_json(
            out_dir / "result.json",
            {
                "world_size": world,
                "device": "cuda" if on_gpu else "cpu",
                "device_name": torch.cuda.get_device_name(device) if on_gpu else "cpu",
                "step_times_s": times,
                "stopped_early": stopped_early,
                "peak_mem_bytes": mem_t[0].item(),
                "peak_reserved_bytes": mem_t[1].item(),
                "host_mem_bytes": mem_t[2].item(),
                "runtime_mem_bytes": mem_t[3].item(),
                "build_peak_bytes": mem_t[4].item(),
                "initialize_peak_bytes": mem_t[5].item(),
                "final_loss": final_loss.item() / world,
                **facts,
                "clock": clock,
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
    # The result is written and every rank passed the barrier: skip the interpreter's teardown of torch,
    # DeepSpeed and transformers, which took about 5 s of a 20 s CPU trial here.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
