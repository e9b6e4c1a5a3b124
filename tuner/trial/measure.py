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
- Measuring stops once the median step time is known well enough: the 95% confidence interval of the median,
  relative to it, within `max_cv` (`median_ci`), not after a fixed count; warm-up ends once steps stop falling
  (`warmup_prefix`), not after a fixed count either.
- A composed step (`composed_sample`, `composed_time`) runs the step's first micro-step, a few middle ones and
  the boundary one (gradient reduction under ZeRO 0/1, optimizer step), the boundary set by hand, and counts
  the middle ones `grad_accum - 2` times: at 128 micro-steps per step, 5 micro-steps measure it.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

EARLY_STOP_MIN_STEPS = 2  # one timed step can be an outlier; two that are both over the limit are not
WHOLE, COMPOSED, AUTO = "whole", "composed", "auto"
STEP_TIMINGS = (AUTO, WHOLE, COMPOSED)
COMPOSED_FROM_ACCUM = 16  # auto: composed from here (5 of 16 micro-steps per sample), whole below
MIDDLE_MICRO_STEPS = 3  # middle micro-steps timed per composed sample: their median stands for all the others
# Student's t, two-sided 95%, by degrees of freedom 1..30 (1.96 beyond): small samples get wide intervals
_T95 = (
    12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
    2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042,
)  # fmt: skip
_MEDIAN_SE = math.sqrt(math.pi / 2)  # the median's standard error over the mean's, for normal noise


def median_ci(times: Sequence[float]) -> float:
    """Half-width of the 95% confidence interval of the median step time, relative to the median.

    The standard error of a sample median is sqrt(pi/2) x s / sqrt(n) for normal noise; Student's t covers small n.
    The sample standard deviation (not a robust one) keeps an outlier widening the interval: more steps, not fewer.
    Infinite below two steps: one step says nothing about its spread.
    """
    n = len(times)
    if n < 2:
        return math.inf
    t = _T95[n - 2] if n - 1 <= len(_T95) else 1.96
    return t * _MEDIAN_SE * statistics.stdev(times) / math.sqrt(n) / statistics.median(times)


def steady_state_done(times: list[float], minimum: int, cap: int, max_cv: float) -> bool:
    """Stop measuring once `minimum` steps are in and the median's 95% interval is within `max_cv`, or at `cap`."""
    if len(times) < minimum:
        return False
    return len(times) >= cap or median_ci(times) <= max_cv


def warmup_prefix(times: Sequence[float], max_cv: float) -> int:
    """How many leading timed steps were still warming up: each slower, by more than `max_cv`, than every step after.

    Needs two later steps to judge one: a single later step could be the fast outlier.
    """
    n = 0
    while len(times) - n > 2 and times[n] > (1 + max_cv) * max(times[n + 1 :]):
        n += 1
    return n


def step_timing_for(choice: str, accum: int) -> str:
    """`trial.step_timing` resolved for a trial of `accum` micro-steps per step: whole or composed."""
    assert choice in STEP_TIMINGS, choice
    if choice == AUTO:
        return COMPOSED if accum >= COMPOSED_FROM_ACCUM else WHOLE
    return choice


def composed_plan(accum: int, middles: int = MIDDLE_MICRO_STEPS) -> int:
    """Micro-steps one composed sample runs: all of them when that is no more than first + `middles` + boundary."""
    return min(accum, middles + 2)


def composed_time(micro: Sequence[float], accum: int) -> float:
    """A full step's time from one composed sample's micro-step times (first, middles..., boundary, in order).

    The first micro-step after a boundary differs (ZeRO copies its gradients where later ones accumulate) and
    the boundary one carries the reduction (ZeRO 0/1) and the optimizer step: each counts once, and the median
    middle one counts `accum - 2` times. A sample of every micro-step is the step itself.
    """
    if len(micro) == accum:
        return float(sum(micro))
    assert 3 <= len(micro) < accum, f"{len(micro)} micro-steps cannot compose a step of {accum}"
    return micro[0] + (accum - 2) * statistics.median(micro[1:-1]) + micro[-1]


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


def timed_step(
    engine: Any, batches: Sequence[dict[str, Any]], synchronize: Callable[[], None], manual_boundary: bool = False
) -> tuple[float, Any]:
    """One optimizer step over every accumulation micro-step: its wall time and the mean loss (a device tensor).

    The clock runs from a synchronised device before the first forward to a synchronised device after the
    last `engine.step()`; the loss stays on the device until the caller reads it, outside the timing.
    `manual_boundary` sets the boundary by hand, as a composed sample does: after one, DeepSpeed's own
    micro-step count no longer ends a step where the batches end.
    """
    assert batches, "an optimizer step has at least one micro-step"
    synchronize()
    start = time.perf_counter()
    total: Any = None
    for i, batch in enumerate(batches):
        if manual_boundary:
            engine.set_gradient_accumulation_boundary(i == len(batches) - 1)
        loss = engine(**batch).loss
        engine.backward(loss)
        engine.step()
        total = loss.detach() if total is None else total + loss.detach()
    synchronize()
    elapsed = time.perf_counter() - start
    return elapsed, total / len(batches)


def composed_sample(
    engine: Any, batches: Sequence[dict[str, Any]], synchronize: Callable[[], None], middles: int = MIDDLE_MICRO_STEPS
) -> tuple[list[float], Any]:
    """One composed sample: each micro-step timed alone, the last one a boundary; the times and the mean loss.

    DeepSpeed's own count would put the boundary `grad_accum` micro-steps on, so the sample sets it by hand
    (`set_gradient_accumulation_boundary`, before every forward): the reduction and the optimizer step run
    after `composed_plan` micro-steps, as at the end of a full step.
    """
    count = composed_plan(len(batches), middles)
    times: list[float] = []
    total: Any = None
    for i in range(count):
        batch = batches[i] if i < count - 1 else batches[-1]
        engine.set_gradient_accumulation_boundary(i == count - 1)
        synchronize()
        start = time.perf_counter()
        loss = engine(**batch).loss
        engine.backward(loss)
        engine.step()
        synchronize()
        times.append(time.perf_counter() - start)
        total = loss.detach() if total is None else total + loss.detach()
    return times, total / count


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
