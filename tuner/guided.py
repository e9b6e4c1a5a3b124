"""The guided sampler (pure): the next point to measure, or None when nothing left can plausibly win.

It uses the structure of the space instead of sampling it blindly. Its assumptions, stated so they can be
checked against the grid (benchmarks/search_efficiency.py), read the knob registry's orderings
(tuner.knobs, tuner.orders) rather than naming knobs:
1. Within a family (ZeRO stage, offload, checkpointing, tiling, tensor and sequence parallelism) throughput
   rises with the micro-batch size until memory runs out, so only the largest micro-batch that fits needs
   measuring; one that runs out of memory rules out the larger ones of its family, and the next smaller one
   is tried.
2. At the same micro-batch, adding work never makes a step faster: activation checkpointing (a second
   forward), tiled MLP and tiled logits (each recomputes its tiles), offload (host copies and a CPU
   optimizer), a higher ZeRO stage from 1 up (more collectives). Stage 0 and 1 are not ordered.
3. At the same memory, more tensor or sequence parallelism is more communication (collectives in every layer
   for the same work), so it is never faster than data parallelism unless memory forces it: a point that
   differs from a measured point that fitted only by a larger tensor- or sequence-parallel size is never
   measured, whatever the slack. Its less-parallel twin running out of memory (or the memory model ruling
   it out, which leaves it unmeasured) is what lets it be measured; the memory evidence orders tp and sp by
   memory (tuner.evidence).
4. The sequence length (data.sequence_length as a list) is a different workload, not another layout: points
   are compared, and each length has its own best, only at the same length.
A point is bounded by a measured point that an assumption says is at least as fast; it can plausibly beat
the best of its length only if that bound, widened by `slack` (noise and the assumptions' error), is above
that best: so points within `slack` of the best are still measured, the rest never. Rule 3 is the
exception: it is taken as certain. The search stops when no unmeasured point that fits can plausibly beat
the best of its length.
The rules are about speed, and hold for every objective guided accepts: step time and USD per million tokens
(tuner.cost: at the study's fixed price and device count, cost is proportional to 1/throughput) rank points
as tokens/s does; the memory evidence (tuner.evidence) does not depend on the objective.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from tuner.knobs import SCALE, family_key
from tuner.orders import at_least_as_fast, more_parallel_only, work_key, workload_key
from tuner.points import Point

DEFAULT_SLACK = 0.03


@dataclass(frozen=True)
class Outcome:
    """A measured point: its throughput-like value (higher is better), or a failure (oom or not)."""

    value: float | None
    oom: bool = False


def _scale(point: Point) -> int:
    """The point's value of the scale knob (the micro-batch): throughput rises with it until memory runs out."""
    return int(getattr(point, SCALE.name))


def family(point: Point) -> tuple[object, ...]:
    """The main knobs but the micro-batch (tuner.knobs.family_key): the family a point belongs to."""
    return family_key(point.values())


def bound(point: Point, measured: dict[Point, Outcome], offload_is_slower: bool = True) -> float:
    """The most `point` can reach given the measurements and the assumptions (infinity when unbounded)."""
    best = math.inf
    for other, outcome in measured.items():
        if outcome.value is None:
            continue
        same_family_larger = family(other) == family(point) and _scale(other) > _scale(point)
        if same_family_larger or at_least_as_fast(other, point, offload_is_slower):
            best = min(best, outcome.value)
    return best


def outpaced(point: Point, measured: dict[Point, Outcome]) -> bool:
    """A point with more tensor or sequence parallelism than a measured point that fitted, and nothing else
    changed (rule 3): never faster, so never worth measuring."""
    return any(o.value is not None and more_parallel_only(p, point) for p, o in measured.items())


def _widened(bound: float, slack: float) -> float:
    """`bound` moved up by `slack` of its size (values are higher-is-better and may be negative)."""
    return bound + abs(bound) * slack


def blocked(point: Point, measured: dict[Point, Outcome]) -> bool:
    """A point at or above a micro-batch of its family that ran out of memory."""
    return any(o.oom and family(p) == family(point) and _scale(p) <= _scale(point) for p, o in measured.items())


def next_point(
    candidates: Iterable[Point],
    measured: dict[Point, Outcome],
    fits: Callable[[Point], bool] = lambda _: True,
    slack: float = DEFAULT_SLACK,
    offload_is_slower: bool = True,
) -> Point | None:
    """The next point to measure, or None: no unmeasured point that fits can plausibly beat the best."""
    best: dict[tuple[object, ...], float] = {}  # per workload (rule 4)
    for p, o in measured.items():
        if o.value is not None:
            best[workload_key(p)] = max(o.value, best.get(workload_key(p), -math.inf))
    open_points = [p for p in candidates if p not in measured and not blocked(p, measured) and fits(p)]
    # Within a family only the largest micro-batch still open is a candidate (assumption 1).
    top: dict[tuple[object, ...], Point] = {}
    for p in open_points:
        key = family(p)
        if key not in top or _scale(p) > _scale(top[key]):
            top[key] = p
    bounds = [(bound(p, measured, offload_is_slower), p) for p in top.values()]
    plausible = [
        (b, p)
        for b, p in bounds
        if _widened(b, slack) > best.get(workload_key(p), -math.inf) and not outpaced(p, measured)
    ]
    if not plausible:
        return None
    # Unbounded points first, then the highest bound; then larger micro-batches and less work (less tp and sp).
    plausible.sort(key=lambda bp: (-bp[0], -_scale(bp[1]), work_key(bp[1])))
    return plausible[0][1]
