"""Recording a search's trials in the Optuna study: the one component that writes trials to the store.

Every Optuna trial it asks for ends COMPLETE (the objective values), FAIL (a failure category and reason),
or PRUNED (the memory model's prediction and reason), with the point, the ds_config and every figure as user
attributes. It tags each trial with the search that owns it (tuner.orphans), so a rerun can reclaim what a
killed search left RUNNING.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import optuna
from optuna.exceptions import UpdateFinishedTrialError
from optuna.trial import FrozenTrial, Trial, TrialState

from tuner.knobs import MAIN, SCALE
from tuner.notes import note_trial
from tuner.orphans import OWNER, owner_tag
from tuner.points import COMM_PREFIX, Point
from tuner.result import TrialResult
from tuner.space import Space
from tuner.trial.failures import Failure

STAGE = "zero_stage"  # the knob the others' `stages` refer to (tuner.knobs)


def suggest_point(trial: Trial, space: Space, valid: Sequence[Point], comm_knobs: Sequence[str] = ()) -> Point:
    """Define-by-run suggestion of a valid point; a knob the suggested stage cannot use is not suggested.

    The scale knob and the stage are suggested from the valid points; every other main knob from its list,
    unless the stage leaves it one value. `comm_knobs` are the communication knobs a second-phase trial sets
    (tuner.comm), suggested last.
    """
    values: dict[str, Any] = {}
    for k in MAIN:
        if k.name in (SCALE.name, STAGE):
            values[k.name] = trial.suggest_categorical(k.name, sorted({getattr(p, k.name) for p in valid}))
            continue
        full = space.knob_values(k.name)
        if k.optional and full == [k.neutral]:
            continue  # an optional knob the space does not search: the point leaves it out
        stage = values[STAGE]
        allowed = sorted({getattr(p, k.name) for p in valid if p.zero_stage == stage}, key=full.index)
        values[k.name] = trial.suggest_categorical(k.name, full) if allowed == full else allowed[0]
    lists = space.space.comm_lists()
    comm = [(name, trial.suggest_categorical(COMM_PREFIX + name, lists[name])) for name in comm_knobs]
    return Point(**values, comm=comm)


class StudyRecorder:
    """Asks the study for trials and ends each one with its outcome; nothing it asked for stays RUNNING."""

    def __init__(self, study: optuna.Study, space: Space, valid: Sequence[Point]) -> None:
        self.study, self.space, self.valid = study, space, tuple(valid)
        self.owner = owner_tag()

    def _noted(self, trial: Trial) -> FrozenTrial:
        """The ended trial as stored, with its optuna-dashboard note written (tuner.notes)."""
        frozen = self.study._storage.get_trial(trial._trial_id)
        if frozen.state.is_finished():
            note_trial(self.study, frozen)
        return frozen

    def ask(self, point: Point | None = None) -> Trial:
        """A new trial (of `point`, enqueued; else the study's sampler chooses), tagged with this search."""
        if point is not None:
            self.study.enqueue_trial(self.enqueued_params(point))
        trial = self.study.ask()
        trial.set_user_attr(OWNER, self.owner)
        return trial

    def enqueued_params(self, point: Point) -> dict[str, Any]:
        """`point`'s params with the optional knobs it leaves out at their neutral value where the space searches
        them: left out of an enqueued trial, Optuna would draw them at random when the trial suggests them."""
        params = point.params()
        for k in MAIN:
            if k.optional and k.name not in params and self.space.knob_values(k.name) != [k.neutral]:
                params[k.name] = k.neutral
        return params

    def suggest(self, trial: Trial, comm_knobs: Sequence[str] = ()) -> Point:
        return suggest_point(trial, self.space, self.valid, comm_knobs)

    def started(self, trial: Trial, point: Point, ds_config: dict[str, Any], attrs: dict[str, Any]) -> None:
        trial.set_user_attr("point", point.label())
        trial.set_user_attr("ds_config", ds_config)
        for key, value in attrs.items():
            trial.set_user_attr(key, value)

    def pruned(self, trial: Trial, point: Point, attrs: dict[str, Any], reason: str | None, again: bool) -> None:
        """`point` is predicted not to fit: PRUNED, never launched (`again`: an earlier run recorded it)."""
        trial.set_user_attr("point", point.label())
        for key, value in attrs.items():
            trial.set_user_attr(key, value)
        trial.set_user_attr("prune_reason", reason)
        if again:
            trial.set_user_attr("duplicate_of", -1)  # proposed again; the earlier record stands
        self.study.tell(trial, state=TrialState.PRUNED)
        self._noted(trial)

    def duplicate(self, trial: Trial, point: Point, earlier: FrozenTrial | None, skipped: bool) -> None:
        """TPE proposed a point already measured: reuse its value (Optuna's advice) without running it."""
        trial.set_user_attr("point", point.label())
        if skipped:
            trial.set_user_attr("duplicate_of", -1)
            trial.set_user_attr("prune_reason", "proposed a point already pruned; not run")
            self.study.tell(trial, state=TrialState.PRUNED)
        elif earlier is not None and earlier.state == TrialState.COMPLETE:
            trial.set_user_attr("duplicate_of", earlier.number)
            self.study.tell(trial, earlier.values)
        else:
            trial.set_user_attr("duplicate_of", earlier.number if earlier is not None else -1)
            trial.set_user_attr("failure_category", Failure.DUPLICATE.value)
            trial.set_user_attr("failure_reason", "proposed a point already failed or running; not run again")
            self.study.tell(trial, state=TrialState.FAIL)
        self._noted(trial)

    def finished(self, trial: Trial, outcome: TrialResult) -> FrozenTrial:
        """Write the figures and end the trial; whatever goes wrong, it must not stay RUNNING.

        A trial another search already ended (reclaimed as stale when this search's heartbeats stalled past
        the grace, tuner.heartbeat) keeps that record: Optuna refuses to change a finished trial.
        """
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
                    trial.set_user_attr("failure_category", Failure.TUNER_ERROR.value)
                    trial.set_user_attr("failure_reason", f"objective {names} is not finite")
                self.study.tell(trial, state=TrialState.FAIL)
        except UpdateFinishedTrialError:
            pass  # reclaimed by another search meanwhile: its record stands
        except Exception:
            if self.study._storage.get_trial(trial._trial_id).state.is_finished():
                return self.study._storage.get_trial(trial._trial_id)  # ended elsewhere: that record stands
            self.study.tell(trial, state=TrialState.FAIL, skip_if_finished=True)
            raise
        return self._noted(trial)

    def abandoned(self, trial: Trial, reason: str) -> None:
        """A trial Tune never finished (stopped or interrupted): FAIL `interrupted` with `reason`."""
        trial.set_user_attr("failure_category", Failure.INTERRUPTED.value)
        trial.set_user_attr("failure_reason", reason)
        self.study.tell(trial, state=TrialState.FAIL, skip_if_finished=True)
        self._noted(trial)
