"""How a rank measures: timed optimizer steps, the stopping rules, reductions over ranks, the GPU budget.

Kept apart from the worker's flow so that each rule runs in the unit tests on CPU:
- Every collective's tensor is made on the rank's own device. On GPUs DeepSpeed starts the process group
  as `nccl`, and torch gives NCCL CUDA tensors only ("No backend type associated with device type cpu");
  gloo on CPU ranks takes CPU tensors. `reduce_on_device` is the one way the worker reduces a figure.
- A timed step runs on batches already on the device and reads the loss on the host once, after the clock
  stops. A host-to-device copy from pageable memory or a `float(loss)` in every micro-step is a device
  synchronisation that a training job with a prefetching data loader does not pay; at 128 accumulation
  micro-steps (the 7B space) it would make small micro-batches look slower than they are.
- On a GPU the memory budget caps PyTorch's caching allocator, which is what `torch.cuda.
  set_per_process_memory_fraction` limits (reserved memory, as a fraction of the card). The CUDA context
  and NCCL's buffers live outside the allocator, so the cap is the budget less what was already outside it
  once the process group had run a collective.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

from tuner.result import spread

EARLY_STOP_MIN_STEPS = 2  # one timed step can be an outlier; two that are both over the limit are not


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


def reduce_on_device(values: Sequence[float], op: str, device: Any) -> list[float]:
    """`values` reduced over all ranks (`op`: max or sum), through a float64 tensor made on `device`."""
    import torch
    import torch.distributed as dist

    ops = {"max": dist.ReduceOp.MAX, "sum": dist.ReduceOp.SUM}
    tensor = torch.tensor([float(v) for v in values], dtype=torch.float64, device=device)
    dist.all_reduce(tensor, op=ops[op])
    return [float(v) for v in tensor.tolist()]


def timed_step(engine: Any, batches: Sequence[dict[str, Any]], synchronize: Callable[[], None]) -> tuple[float, Any]:
    """One optimizer step over every accumulation micro-step: its wall time and the mean loss (a device tensor).

    The clock runs from a synchronised device before the first forward to a synchronised device after the
    last `engine.step()`; the loss stays on the device until the caller reads it, outside the timing.
    """
    assert batches, "an optimizer step has at least one micro-step"
    synchronize()
    start = time.perf_counter()
    total: Any = None
    for batch in batches:
        loss = engine(**batch).loss
        engine.backward(loss)
        engine.step()
        total = loss.detach() if total is None else total + loss.detach()
    synchronize()
    elapsed = time.perf_counter() - start
    return elapsed, total / len(batches)


def allocator_fraction(budget_bytes: float, total_bytes: float, outside_bytes: float) -> float | None:
    """The fraction of the card the caching allocator may reserve so the rank stays within `budget_bytes`.

    `outside_bytes` is the card's memory in use but not reserved by the allocator (CUDA context, NCCL
    buffers, other processes). None when nothing is left for the allocator. A budget above the card
    caps at the card: the allocator cannot reserve what the card does not have.
    """
    room = budget_bytes - outside_bytes
    if room <= 0:
        return None
    return min(1.0, room / total_bytes)
