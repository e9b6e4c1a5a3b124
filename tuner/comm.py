"""ZeRO communication knobs (pure): searched after the main knobs settle, one knob at a time.

Users tune bucket sizes, overlap and prefetch by hand once the stage and micro-batch are chosen; their
effect is second order and mostly independent of each other, so the search does the same: at the best
main point it measures every listed value of the first knob, keeps the best, then moves to the next
knob (coordinate search, sum of the list lengths in trials rather than their product). A knob the best
point's ZeRO stage does not read is skipped.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from tuner.points import Point

# Each knob and the ZeRO stages whose DeepSpeed code reads it (deepspeed/runtime/zero/config.py).
COMM_KNOBS: dict[str, tuple[int, ...]] = {
    "overlap_comm": (1, 2, 3),
    "contiguous_gradients": (1, 2, 3),
    "reduce_bucket_size": (1, 2, 3),
    "allgather_bucket_size": (1, 2),
    "stage3_prefetch_bucket_size": (3,),
    "stage3_param_persistence_threshold": (3,),
}


def with_knob(point: Point, knob: str, value: Any) -> Point:
    """`point` with `knob` set to `value` (the other communication knobs kept)."""
    comm = dict(point.comm)
    comm[knob] = value
    return replace(point, comm=tuple(sorted(comm.items())))


def next_comm_point(
    best_main: Point, lists: Mapping[str, list[Any]], measured: Mapping[Point, float | None]
) -> Point | None:
    """The next communication variant of `best_main` to measure, or None when every knob is settled.

    `measured` holds values where higher is better (None for a failed trial); `best_main` itself is
    measured with DeepSpeed's defaults and is the baseline every knob must beat.
    """
    current = replace(best_main, comm=())
    for knob in COMM_KNOBS:
        if knob not in lists or best_main.zero_stage not in COMM_KNOBS[knob]:
            continue
        candidates = [with_knob(current, knob, value) for value in lists[knob]]
        for candidate in candidates:
            if candidate not in measured:
                return candidate
        scored = [(value, c) for c in (current, *candidates) if (value := measured.get(c)) is not None]
        if scored:
            current = max(scored, key=lambda vc: vc[0])[1]
    return None


def comm_budget(lists: Mapping[str, list[Any]]) -> int:
    """The most communication trials one search can launch (every value of every knob once)."""
    return sum(len(values) for values in lists.values())


def apply_comm(ds_config: dict[str, Any], point: Point) -> dict[str, Any]:
    """The main point's ds_config with the point's communication knobs set in zero_optimization."""
    config = copy.deepcopy(ds_config)
    if point.comm:
        config.setdefault("zero_optimization", {}).update(dict(point.comm))
    return config
