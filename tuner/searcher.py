"""A Ray Tune searcher whose every trial is an Optuna trial in the study's SQL storage.

Ray's OptunaSearch leaves a trial RUNNING in the store when the last report lacks the metric, has no
hook for user attributes and cannot record a failure's reason; this searcher owns the ask/tell cycle
instead, so each Tune trial ends in the store as COMPLETE (objective value) or FAIL (category, reason),
with every figure and its ds_config as user attributes.

Samplers: `grid` runs the valid points in order, `random` draws them without replacement, `tpe` asks
Optuna's TPE sampler over a conditional space (offload knobs only where the ZeRO stage allows them),
`guided` follows the space's structure (tuner.guided) and stops when nothing left can plausibly win.
Before a point launches, the memory model (calibrated on the trials measured so far) judges it: a point
predicted not to fit is recorded as PRUNED with its prediction and reason, and never launched.
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import optuna
from optuna.trial import Trial, TrialState
from ray.tune.search import Searcher

from tuner import comm as comm_knobs
from tuner import guided
from tuner.orphans import INTERRUPTED, OWNER, owner_tag
from tuner.plan import MemoryPlanner, Planned
from tuner.points import COMM_PREFIX, Point
from tuner.ranking import higher_is_better, point_mean
from tuner.result import TrialResult
from tuner.space import Space
from tuner.store import REPEAT_OF, measured_memory, measured_trials
from tuner.trial import failures

RESULT_KEY = "tuner_result"
_TPE_TRIES = 20
_STOP = "stop"  # the guided sampler's verdict: nothing left can plausibly beat the best
_WAIT = "wait"  # the communication phase and re-measurements wait for the trials in flight
REMEASURE_MAX_POINTS = 3


def suggest_point(trial: Trial, space: Space, valid: tuple[Point, ...], comm_knobs: tuple[str, ...] = ()) -> Point:
    """Define-by-run suggestion of a valid point; knobs a stage cannot use are not suggested.

    `comm_knobs` are the communication knobs a second-phase trial sets (tuner.comm), suggested last.
    """
    s = space.space
    micro = trial.suggest_categorical("micro_batch_size", sorted({p.micro_batch_size for p in valid}))
    stage = trial.suggest_categorical("zero_stage", sorted({p.zero_stage for p in valid}))

    def knob(name: str, full: list[Any]) -> Any:
        allowed = sorted({getattr(p, name) for p in valid if p.zero_stage == stage}, key=full.index)
        if allowed == full:
            return trial.suggest_categorical(name, full)
        return allowed[0]  # a stage that cannot use the knob: the one value left ("none")

    offload_optimizer = knob("offload_optimizer", list(s.offload_optimizer))
    offload_param = knob("offload_param", list(s.offload_param))
    checkpointing = knob("activation_checkpointing", list(s.activation_checkpointing))
    lists = s.comm_lists()
    comm = tuple(sorted((name, trial.suggest_categorical(COMM_PREFIX + name, lists[name])) for name in comm_knobs))
    return Point(int(micro), int(stage), offload_optimizer, offload_param, bool(checkpointing), comm)


def finished_points(study: optuna.Study) -> dict[Point, optuna.trial.FrozenTrial]:
    """Points already measured in the study (COMPLETE or FAIL), so a rerun never measures them twice.

    A trial interrupted by a stopped search was not measured: its point runs again. Re-measurements of a
    point (`repeat_of`) are in `repeated_points`.
    """
    out: dict[Point, optuna.trial.FrozenTrial] = {}
    for t in _measured(study):
        if REPEAT_OF not in t.user_attrs:
            out.setdefault(Point.from_params(t.params), t)
    return out


def repeated_points(study: optuna.Study) -> dict[Point, list[optuna.trial.FrozenTrial]]:
    """The re-measurements guided made of points near the best, by point."""
    out: dict[Point, list[optuna.trial.FrozenTrial]] = {}
    for t in _measured(study):
        if REPEAT_OF in t.user_attrs:
            out.setdefault(Point.from_params(t.params), []).append(t)
    return out


def _measured(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    return [
        t
        for t in measured_trials(study, (TrialState.COMPLETE, TrialState.FAIL))
        if t.params and t.user_attrs.get("failure_category") != INTERRUPTED
    ]


def pruned_points(study: optuna.Study) -> set[Point]:
    """Points an earlier run already recorded as PRUNED (not recorded twice)."""
    return {Point.from_params(t.params) for t in study.get_trials(deepcopy=False, states=(TrialState.PRUNED,))}


class StudySearcher(Searcher):
    """Suggests valid points and records each Tune trial's outcome in the Optuna study."""

    def __init__(
        self,
        study: optuna.Study,
        space: Space,
        valid: tuple[Point, ...],
        ds_configs: dict[Point, dict[str, Any]],
        budget: int,
        on_event: Callable[[str, dict[str, Any]], None],
        memory: MemoryPlanner | None = None,
    ) -> None:
        super().__init__()
        self.memory = memory
        self.pruned_before = pruned_points(study)
        self.skipped: set[Point] = set()  # predicted not to fit in this run
        self.study = study
        self.space = space
        self.valid = valid
        self.ds_configs = ds_configs
        self.budget = budget
        self.on_event = on_event
        self.launched = 0
        self.done = finished_points(study)
        self.repeats = repeated_points(study)
        self.in_flight: dict[str, tuple[Trial, Point]] = {}
        self.rng = random.Random(space.search.seed)
        self.owner = owner_tag()

    def __getstate__(self) -> dict[str, Any]:
        """Nothing: Tune pickles its searcher into the run folder (tuner.pkl) for a restore this tool never
        does (a rerun reads the store), and the study's storage URL, which may hold a password, must not
        land in a file."""
        return {}

    def set_search_properties(self, metric: str | None, mode: str | None, config: dict[str, Any], **spec: Any) -> bool:
        return True  # the space lives in this searcher, not in Tune's config

    def save_to_dir(self, checkpoint_dir: str, session_str: str = "default") -> None:
        """Tune's experiment checkpoints are not needed: the Optuna store is this search's state."""

    def restore_from_dir(self, checkpoint_dir: str) -> None:
        """Nothing to restore: a rerun reads finished points from the store."""

    def remaining(self) -> list[Point]:
        busy = {p for _, p in self.in_flight.values()}
        return [p for p in self.valid if p not in self.done and p not in busy and p not in self.skipped]

    def judge(self, point: Point) -> tuple[Planned, dict[str, Any]] | None:
        """The memory model's decision on `point` with its store attributes, or None without a model."""
        if self.memory is None:
            return None
        planned = self.memory.judge(point, measured_memory(self.study), self.ran_out())
        return planned, planned.attrs()

    def ran_out(self) -> list[Point]:
        """Points of the main space whose trial ran out of memory: evidence against those needing as much."""
        return [p for p, t in self.done.items() if not p.comm and t.user_attrs.get("failure_category") == failures.OOM]

    def suggest(self, trial_id: str) -> dict[str, Any] | None:  # or Searcher.FINISHED, a str
        """The next trial's config; None asks Tune to come back (the main knobs are still settling)."""
        while True:
            if self.launched >= self.budget:
                return Searcher.FINISHED  # type: ignore[return-value]
            remaining = self.remaining()
            picked = self._next(remaining) if remaining else _STOP
            if picked == _STOP:  # the main knobs are settled: re-measure the best few, then the communication knobs
                picked = self._next_repeat()
            if picked == _STOP:
                picked = self._next_comm()
            if picked == _WAIT:
                return None
            if isinstance(picked, str):
                return Searcher.FINISHED  # type: ignore[return-value]
            if picked is None:
                continue  # the point was pruned; pick again
            trial, point, attrs = picked
            break
        self.in_flight[trial_id] = (trial, point)
        self.launched += 1
        ds_config = comm_knobs.apply_comm(self.ds_configs[replace(point, comm=())], point)
        trial.set_user_attr("point", point.label())
        trial.set_user_attr("ds_config", ds_config)
        limit = self.early_stop_limit()
        if limit is not None:
            trial.set_user_attr("early_stop_over_step_s", limit)
        for key, value in attrs.items():
            trial.set_user_attr(key, value)
        self.on_event("start", {"number": trial.number, "index": self.launched, "point": point})
        return {
            "point": point.params(),
            "trial_number": trial.number,
            "ds_config": ds_config,
            "stop_over_step_s": limit,
        }

    def early_stop_limit(self) -> float | None:
        """The step time past which a new trial is clearly slower: the best measured one's, plus the margin.

        The speed objectives rank alike (the global batch and sequence are fixed), so step time serves all.
        """
        if not self.space.search.stops_early:
            return None
        times = [
            float(t.user_attrs["step_time_s"])
            for t in self.done.values()
            if t.state == TrialState.COMPLETE and isinstance(t.user_attrs.get("step_time_s"), (int, float))
        ]
        return min(times) * (1 + self.space.search.early_stop_margin) if times else None

    def _next(self, remaining: list[Point]) -> tuple[Trial, Point, dict[str, Any]] | str | None:
        """The next trial to launch and its memory attributes, None when the chosen point was pruned, or _STOP."""
        if self.space.search.sampler == "guided":
            choice = self._guided_choice(remaining)
            if choice is None:
                return _STOP
            return self._launch(choice, self.judge(choice))
        if self.space.search.sampler == "tpe":
            for _ in range(_TPE_TRIES):
                trial = self._ask()
                point = suggest_point(trial, self.space, self.valid)
                if point in remaining:
                    return self._admit(trial, point)
                self._tell_duplicate(trial, point)
        choice = remaining[0] if self.space.search.sampler == "grid" else self.rng.choice(remaining)
        return self._launch(choice, self.judge(choice))

    def _ask(self) -> Trial:
        """A new Optuna trial, tagged with this search so a rerun after a crash can tell it was orphaned."""
        trial = self.study.ask()
        trial.set_user_attr(OWNER, self.owner)
        return trial

    def _signed_value(self, trial: optuna.trial.FrozenTrial) -> float | None:
        """The trial's (first) objective with higher better, or None when it did not complete."""
        sign = 1.0 if self.study.directions[0] == optuna.study.StudyDirection.MAXIMIZE else -1.0
        return sign * trial.values[0] if trial.state == TrialState.COMPLETE and trial.values else None

    def _point_value(self, point: Point) -> float | None:
        """The point's (first) objective with higher better: the mean over its completed measurements, as
        tuner.ranking ranks points."""
        scored = point_mean([self.done[point], *self.repeats.get(point, [])] if point in self.done else [])
        return None if scored is None else higher_is_better(scored[0], self.study.directions[0])

    def _next_repeat(self) -> tuple[Trial, Point, dict[str, Any]] | str | None:
        """guided: one more measurement of a point within `remeasure_within` of the best, _WAIT, or _STOP.

        One measurement can be off by more than the gap between the best few points, so those measured
        once are measured again (at most REMEASURE_MAX_POINTS points) and ranked by their mean.
        """
        within = self.space.search.remeasure_within
        if self.space.search.sampler != "guided" or within <= 0:
            return _STOP
        if self.in_flight:
            return _WAIT  # the best must be known first
        values = {p: v for p in self.done if not p.comm and (v := self._point_value(p)) is not None}
        if not values:
            return _STOP
        best = max(values.values())
        if len([p for p in self.repeats if not p.comm]) >= REMEASURE_MAX_POINTS:
            return _STOP
        near = [p for p, v in values.items() if p not in self.repeats and v >= best - abs(best) * within]
        if not near:
            return _STOP
        choice = max(near, key=lambda p: values[p])
        launched = self._launch(choice, self.judge(choice))
        if launched is None:
            return _STOP
        trial, point, attrs = launched
        return trial, point, {**attrs, REPEAT_OF: self.done[choice].number}

    def _next_comm(self) -> tuple[Trial, Point, dict[str, Any]] | str | None:
        """The next communication-knob trial at the best main point, _WAIT while trials run, or _STOP."""
        lists = self.space.space.comm_lists()
        if not lists:
            return _STOP
        if self.in_flight:
            return _WAIT  # the best main point, and each knob's best value, must be known first
        main = [(v, p) for p in self.done if not p.comm and (v := self._point_value(p)) is not None]
        if not main:
            return _STOP
        best = max(main, key=lambda vp: vp[0])[1]
        measured: dict[Point, float | None] = {p: self._signed_value(t) for p, t in self.done.items()}
        measured.update({p: None for p in self.skipped | self.pruned_before if p.comm})
        choice = comm_knobs.next_comm_point(best, lists, measured)
        if choice is None:
            return _STOP
        return self._launch(choice, self.judge(choice))

    def _guided_choice(self, remaining: list[Point]) -> Point | None:
        """Guided's next point from the measured trials; points in flight count as measured, without a value."""
        outcomes: dict[Point, guided.Outcome] = {}
        for point, t in self.done.items():
            if point.comm:
                continue  # a communication variant: not a point of the main space
            oom = t.user_attrs.get("failure_category") == failures.OOM
            outcomes[point] = guided.Outcome(self._point_value(point), oom=oom)
        for _, point in self.in_flight.values():
            outcomes.setdefault(point, guided.Outcome(None))
        # A point the memory model rules out is recorded PRUNED when chosen (see _admit) and leaves `remaining`,
        # so guided then tries the next smaller micro-batch of its family.
        offload_is_slower = self.memory is None or self.memory.setup.accelerator == "cuda"
        return guided.next_point(remaining, outcomes, offload_is_slower=offload_is_slower)

    def _launch(
        self, choice: Point, judged: tuple[Planned, dict[str, Any]] | None
    ) -> tuple[Trial, Point, dict[str, Any]] | None:
        """Ask Optuna for a trial of `choice` (enqueued), unless an earlier run already recorded it PRUNED."""
        if judged is not None and self._prunes(judged[0]) and choice in self.pruned_before:
            self.skipped.add(choice)  # recorded as PRUNED by an earlier run; not recorded twice
            return None
        self.study.enqueue_trial(choice.params())
        trial = self._ask()
        point = suggest_point(trial, self.space, self.valid, tuple(knob for knob, _ in choice.comm))
        assert point == choice, f"enqueued {choice} but the trial suggested {point}"
        return self._admit(trial, point, judged)

    def _prunes(self, planned: Planned) -> bool:
        return planned.fits is False and self.memory is not None and self.memory.prune

    def _admit(
        self, trial: Trial, point: Point, judged: tuple[Planned, dict[str, Any]] | None = None
    ) -> tuple[Trial, Point, dict[str, Any]] | None:
        """Launch `trial` unless the memory model rules its point out; then it is recorded as PRUNED."""
        judged = judged or self.judge(point)
        if judged is None:
            return trial, point, {}
        planned, attrs = judged
        if not self._prunes(planned):
            return trial, point, attrs
        trial.set_user_attr("point", point.label())
        for key, value in attrs.items():
            trial.set_user_attr(key, value)
        trial.set_user_attr("prune_reason", planned.reason)
        if point in self.pruned_before:
            trial.set_user_attr("duplicate_of", -1)  # TPE proposed it again; the earlier record stands
        self.study.tell(trial, state=TrialState.PRUNED)
        self.skipped.add(point)
        self.on_event("pruned", {"number": trial.number, "point": point, "reason": planned.reason})
        return None

    def _tell_duplicate(self, trial: Trial, point: Point) -> None:
        """TPE proposed a point already measured: reuse its value (Optuna's advice) without running it."""
        earlier = self.done.get(point)
        trial.set_user_attr("point", point.label())
        if point in self.skipped:
            trial.set_user_attr("duplicate_of", -1)
            trial.set_user_attr("prune_reason", "proposed a point already pruned; not run")
            self.study.tell(trial, state=TrialState.PRUNED)
            return
        if earlier is not None and earlier.state == TrialState.COMPLETE:
            trial.set_user_attr("duplicate_of", earlier.number)
            self.study.tell(trial, earlier.values)
            return
        number = earlier.number if earlier is not None else None
        trial.set_user_attr("duplicate_of", number if number is not None else -1)
        trial.set_user_attr("failure_category", "duplicate")
        trial.set_user_attr("failure_reason", "proposed a point already failed or running; not run again")
        self.study.tell(trial, state=TrialState.FAIL)

    def on_trial_complete(self, trial_id: str, result: dict[str, Any] | None = None, error: bool = False) -> None:
        entry = self.in_flight.pop(trial_id, None)
        if entry is None:
            return
        trial, point = entry
        outcome = _outcome(result, error)
        self.record(trial, outcome)
        frozen = self.study._storage.get_trial(trial._trial_id)
        if REPEAT_OF in frozen.user_attrs:
            self.repeats.setdefault(point, []).append(frozen)
        else:
            self.done[point] = frozen
        self.on_event("end", {"number": trial.number, "point": point, "result": outcome, "trial": frozen})

    def record(self, trial: Trial, outcome: TrialResult) -> None:
        """Write the figures and end the trial; whatever goes wrong, it must not stay RUNNING."""
        try:
            for key, value in outcome.user_attrs().items():
                trial.set_user_attr(key, value)
            values = [outcome.figures.get(name) for name in self.space.objectives] if outcome.ok else []
            finite = [v for v in values if v is not None and math.isfinite(v)]
            if outcome.ok and len(finite) == len(values):
                self.study.tell(trial, finite)
            else:
                if outcome.ok:
                    names = ", ".join(self.space.objectives)
                    trial.set_user_attr("failure_category", failures.TUNER_ERROR)
                    trial.set_user_attr("failure_reason", f"objective {names} is not finite")
                self.study.tell(trial, state=TrialState.FAIL)
        except Exception:
            self.study.tell(trial, state=TrialState.FAIL, skip_if_finished=True)
            raise

    def abandon_in_flight(self, reason: str) -> int:
        """Trials Tune never finished (stopped or interrupted) end as FAIL with `reason`; returns how many."""
        abandoned = len(self.in_flight)
        for trial_id in list(self.in_flight):
            trial, _ = self.in_flight.pop(trial_id)
            trial.set_user_attr("failure_category", INTERRUPTED)
            trial.set_user_attr("failure_reason", reason)
            self.study.tell(trial, state=TrialState.FAIL, skip_if_finished=True)
        return abandoned


def _outcome(result: dict[str, Any] | None, error: bool) -> TrialResult:
    """The trial's TrialResult from its last Tune report, or a tuner error when there is none."""
    if result and RESULT_KEY in result:
        return TrialResult(**json.loads(result[RESULT_KEY]))
    why = "the Tune trial raised an error" if error else "the Tune trial ended without a result"
    return TrialResult.failed(failures.TUNER_ERROR, why + "; see the Ray logs under the run folder")
