"""The communication phase (pure): its knobs searched after the main knobs settle, one knob at a time.

Users tune bucket sizes, overlap, prefetch and ZeRO++'s quantization by hand once the stage and micro-batch
are chosen; their effect is second order and mostly independent of each other, so the search does the
same: at the best main point it measures every listed value of the first knob, keeps the best, then moves
to the next knob (coordinate search, sum of the list lengths in trials rather than their product). The
knobs and the ZeRO stages whose code reads them are the registry's (tuner.knobs, phase "comm"); a knob the
best point's stage does not read, or whose value its rank count cannot take, is skipped.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from tuner.knobs import COMM
from tuner.parallel import Context
from tuner.points import Point


def next_comm_point(
    best_main: Point, lists: Mapping[str, list[Any]], measured: Mapping[Point, float | None], ranks: int = 1
) -> Point | None:
    """The next communication variant of `best_main` to measure, or None when every knob is settled.

    `measured` holds values where higher is better (None for a failed trial); `best_main` itself is
    measured with DeepSpeed's defaults and is the baseline every knob must beat.
    """
    current = best_main.main()
    for k in COMM:
        if k.name not in lists or best_main.zero_stage not in k.stages:
            continue
        values = [v for v in lists[k.name] if not (k.rule and k.rule(v, best_main.values(), Context(ranks)))]
        candidates = [current.with_knob(k.name, value) for value in values]
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
