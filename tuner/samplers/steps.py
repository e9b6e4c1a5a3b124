"""Steps after the main search, composed by `Phases`: re-measure the best few, then the communication knobs."""

from __future__ import annotations

from typing import Any

from tuner.comm import comm_budget, next_comm_point
from tuner.orders import workload_key
from tuner.points import Point
from tuner.samplers.base import DONE, WAIT, Done, Proposal, SearchView, Wait
from tuner.store import REPEAT_OF

REMEASURE_MAX_POINTS = 3


class Remeasure:
    """One more measurement of each point within `within` of the best (at most `max_points`), ranked by mean.

    One measurement can be off by more than the gap between the best few points (a median 13% and up to
    63% between runs of the same point on a shared 2-core machine, benchmarks/results). Each workload (a
    searched sequence length, tuner.orders.workload_key) has its own best, so its own near points and its own
    `max_points`.
    """

    def __init__(self, within: float, max_points: int = REMEASURE_MAX_POINTS, workloads: int = 1) -> None:
        self.within, self.max_points, self.workloads = within, max_points, workloads

    def propose(self, view: SearchView) -> Proposal | Wait | Done:
        if view.busy():
            return WAIT  # the best must be known first
        values = {p: v for p in view.done if not p.comm and (v := view.value(p)) is not None}
        for workload in sorted({workload_key(p) for p in values}, key=str):
            mine = {p: v for p, v in values.items() if workload_key(p) == workload}
            if len([p for p in view.repeats if not p.comm and workload_key(p) == workload]) >= self.max_points:
                continue
            best = max(mine.values())
            near = [
                p
                for p, v in mine.items()
                if p not in view.repeats and p not in view.skipped and v >= best - abs(best) * self.within
            ]
            if near:
                choice = max(near, key=lambda p: mine[p])
                return Proposal(choice, attrs={REPEAT_OF: view.done[choice].number})
        return DONE

    def extra_trials(self) -> int:
        return self.max_points * self.workloads


class CommPhase:
    """The communication knobs, one at a time at the best main point (tuner.comm)."""

    def __init__(self, lists: dict[str, list[Any]]) -> None:
        self.lists = lists

    def propose(self, view: SearchView) -> Proposal | Wait | Done:
        if not self.lists:
            return DONE
        if view.busy():
            return WAIT  # the best main point, and each knob's best value, must be known first
        main = [(v, p) for p in view.done if not p.comm and (v := view.value(p)) is not None]
        if not main:
            return DONE
        best = max(main, key=lambda vp: vp[0])[1]
        measured: dict[Point, float | None] = {p: view.signed(t) for p, t in view.done.items()}
        measured.update({p: None for p in view.skipped | view.pruned_before if p.comm})
        choice = next_comm_point(best, self.lists, measured, view.ranks)
        return DONE if choice is None else Proposal(choice)

    def extra_trials(self) -> int:
        return comm_budget(self.lists)
