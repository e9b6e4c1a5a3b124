"""What a search knows so far (its bookkeeping, no I/O): the points measured, re-measured, in flight, skipped.

The samplers read it through the narrow view they need (tuner.samplers.base.SearchView); the orchestrator
(tuner.searcher) updates it as trials start and end. Values are the first objective with higher better,
the mean over a point's measurements (guided re-measures the best few).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import optuna
from optuna.trial import FrozenTrial, Trial, TrialState

from tuner import guided
from tuner.points import Point
from tuner.ranking import point_mean
from tuner.store import REPEAT_OF, measured_trials
from tuner.trial.failures import Failure


def _measured(study: optuna.Study) -> list[FrozenTrial]:
    return [
        t
        for t in measured_trials(study, (TrialState.COMPLETE, TrialState.FAIL))
        if t.params and t.user_attrs.get("failure_category") != Failure.INTERRUPTED
    ]


def finished_points(study: optuna.Study) -> dict[Point, FrozenTrial]:
    """Points already measured in the study (COMPLETE or FAIL), so a rerun never measures them twice.

    A trial interrupted by a stopped search was not measured: its point runs again. Re-measurements of a
    point (`repeat_of`) are in `repeated_points`.
    """
    out: dict[Point, FrozenTrial] = {}
    for t in _measured(study):
        if REPEAT_OF not in t.user_attrs:
            out.setdefault(Point.from_params(t.params), t)
    return out


def repeated_points(study: optuna.Study) -> dict[Point, list[FrozenTrial]]:
    """The re-measurements guided made of points near the best, by point."""
    out: dict[Point, list[FrozenTrial]] = {}
    for t in _measured(study):
        if REPEAT_OF in t.user_attrs:
            out.setdefault(Point.from_params(t.params), []).append(t)
    return out


def pruned_points(study: optuna.Study) -> set[Point]:
    """Points an earlier run already recorded as PRUNED (not recorded twice)."""
    return {Point.from_params(t.params) for t in study.get_trials(deepcopy=False, states=(TrialState.PRUNED,))}


@dataclass
class SearchState:
    """The study's measured points and this run's trials in flight and points skipped."""

    valid: tuple[Point, ...]
    maximize: bool
    done: dict[Point, FrozenTrial] = field(default_factory=dict)
    repeats: dict[Point, list[FrozenTrial]] = field(default_factory=dict)
    in_flight: dict[str, tuple[Trial, Point]] = field(default_factory=dict)
    skipped: set[Point] = field(default_factory=set)  # predicted not to fit in this run
    pruned_before: set[Point] = field(default_factory=set)  # recorded PRUNED by an earlier run

    @classmethod
    def of(cls, study: optuna.Study, valid: tuple[Point, ...]) -> SearchState:
        maximize = study.directions[0] == optuna.study.StudyDirection.MAXIMIZE
        return cls(valid, maximize, finished_points(study), repeated_points(study), pruned_before=pruned_points(study))

    def remaining(self) -> list[Point]:
        """Valid main points not measured, not in flight and not skipped, in the space's order."""
        busy = set(self.busy_points())
        return [p for p in self.valid if p not in self.done and p not in busy and p not in self.skipped]

    def busy_points(self) -> list[Point]:
        return [p for _, p in self.in_flight.values()]

    def signed(self, trial: FrozenTrial) -> float | None:
        """The trial's (first) objective with higher better, or None when it did not complete."""
        if trial.state != TrialState.COMPLETE or not trial.values:
            return None
        return trial.values[0] if self.maximize else -trial.values[0]

    def value(self, point: Point) -> float | None:
        """The point's (first) objective with higher better: the mean over its completed measurements, as the
        study's one ranking (tuner.ranking) computes it."""
        trials = [self.done[point], *self.repeats.get(point, [])] if point in self.done else []
        mean = point_mean(trials)
        return None if mean is None else (mean[0] if self.maximize else -mean[0])

    def outcomes(self) -> dict[Point, guided.Outcome]:
        """The main points measured (their value, or an out-of-memory failure); points in flight without one."""
        out = {
            point: guided.Outcome(self.value(point), oom=t.user_attrs.get("failure_category") == Failure.OOM)
            for point, t in self.done.items()
            if not point.comm
        }
        for point in self.busy_points():
            out.setdefault(point, guided.Outcome(None))
        return out

    def ran_out(self) -> list[Point]:
        """Main points whose trial ran out of memory: evidence against those needing as much."""
        return [p for p, t in self.done.items() if not p.comm and t.user_attrs.get("failure_category") == Failure.OOM]

    def best_step_time(self) -> float | None:
        """The fastest completed trial's step time (every speed objective ranks alike at a fixed batch)."""
        times = [
            float(t.user_attrs["step_time_s"])
            for t in self.done.values()
            if t.state == TrialState.COMPLETE and isinstance(t.user_attrs.get("step_time_s"), (int, float))
        ]
        return min(times) if times else None

    def ended(self, point: Point, frozen: FrozenTrial) -> None:
        """A trial of `point` ended: a first measurement, or a re-measurement."""
        if REPEAT_OF in frozen.user_attrs:
            self.repeats.setdefault(point, []).append(frozen)
        else:
            self.done[point] = frozen
