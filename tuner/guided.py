"""The guided sampler (pure): the next point to measure, or None when nothing left can plausibly win.

It uses the structure of the space instead of sampling it blindly. Its assumptions, stated so they can be
checked against the grid (benchmarks/search_efficiency.py):
1. Within a family (ZeRO stage, offload, checkpointing) throughput rises with the micro-batch size until
   memory runs out, so only the largest micro-batch that fits needs measuring; one that runs out of memory
   rules out the larger ones of its family, and the next smaller one is tried.
2. At the same micro-batch, adding work never makes a step faster: activation checkpointing (a second
   forward), offload (host copies and a CPU optimizer), a higher ZeRO stage from 1 up (more collectives).
   Stage 0 and 1 are not ordered.
A point is bounded by a measured point that an assumption says is at least as fast; it can plausibly beat
the best only if that bound, widened by `slack` (noise and the assumptions' error), is above the best: so
points within `slack` of the best are still measured, the rest never. The search stops when no unmeasured
point that fits can plausibly beat the best.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from tuner.points import Point

DEFAULT_SLACK = 0.03


@dataclass(frozen=True)
class Outcome:
    """A measured point: its throughput-like value (higher is better), or a failure (oom or not)."""

    value: float | None
    oom: bool = False


def _work(point: Point) -> tuple[int, int, int]:
    """Checkpointing, offload and ZeRO stage: the less of each, the earlier a point is tried."""
    offload = (point.offload_optimizer != "none") + (point.offload_param != "none")
    return int(point.activation_checkpointing), offload, point.zero_stage


def _stage_no_faster(fast: int, slow: int) -> bool:
    """ZeRO stage 1 <= 2 <= 3 in communication, and 0 <= 3; stage 0 is not ordered against 1 and 2."""
    return fast == slow or (fast == 0 and slow == 3) or (0 < fast < slow)


def at_least_as_fast(fast: Point, slow: Point, offload_is_slower: bool = True) -> bool:
    """Assumption 2: the same micro-batch, and `slow` adds checkpointing, ZeRO partitioning or offload.

    Offload counts only where it moves work off the device (`offload_is_slower`): on a CPU-only machine the
    optimizer runs on the CPU either way, and DeepSpeed's CPU Adam can beat torch's AdamW.
    """
    if fast == slow or fast.micro_batch_size != slow.micro_batch_size:
        return False
    if fast.activation_checkpointing and not slow.activation_checkpointing:
        return False
    if not _stage_no_faster(fast.zero_stage, slow.zero_stage):
        return False
    for knob in ("offload_optimizer", "offload_param"):
        fast_off, slow_off = getattr(fast, knob) != "none", getattr(slow, knob) != "none"
        if fast_off != slow_off and not (offload_is_slower and slow_off):
            return False
    return True


def family(point: Point) -> tuple[int, str, str, bool]:
    return (point.zero_stage, point.offload_optimizer, point.offload_param, point.activation_checkpointing)


def bound(point: Point, measured: dict[Point, Outcome], offload_is_slower: bool = True) -> float:
    """The most `point` can reach given the measurements and the assumptions (infinity when unbounded)."""
    best = math.inf
    for other, outcome in measured.items():
        if outcome.value is None:
            continue
        same_family_larger = family(other) == family(point) and other.micro_batch_size > point.micro_batch_size
        if same_family_larger or at_least_as_fast(other, point, offload_is_slower):
            best = min(best, outcome.value)
    return best


def blocked(point: Point, measured: dict[Point, Outcome]) -> bool:
    """A point at or above a micro-batch of its family that ran out of memory."""
    return any(
        o.oom and family(p) == family(point) and p.micro_batch_size <= point.micro_batch_size
        for p, o in measured.items()
    )


def next_point(
    candidates: Iterable[Point],
    measured: dict[Point, Outcome],
    fits: Callable[[Point], bool] = lambda _: True,
    slack: float = DEFAULT_SLACK,
    offload_is_slower: bool = True,
) -> Point | None:
    """The next point to measure, or None: no unmeasured point that fits can plausibly beat the best."""
    values = [o.value for o in measured.values() if o.value is not None]
    best = max(values) if values else -math.inf
    open_points = [p for p in candidates if p not in measured and not blocked(p, measured) and fits(p)]
    # Within a family only the largest micro-batch still open is a candidate (assumption 1).
    top: dict[tuple[int, str, str, bool], Point] = {}
    for p in open_points:
        key = family(p)
        if key not in top or p.micro_batch_size > top[key].micro_batch_size:
            top[key] = p
    bounds = [(bound(p, measured, offload_is_slower), p) for p in top.values()]
    plausible = [(b, p) for b, p in bounds if b * (1 + slack) > best]
    if not plausible:
        return None
    # Unbounded points first, then the highest bound; then larger micro-batches and less work.
    plausible.sort(key=lambda bp: (-bp[0], -bp[1].micro_batch_size, _work(bp[1]), bp[1].zero_stage))
    return plausible[0][1]
