"""The orchestrator: a Ray Tune searcher whose every trial is an Optuna trial in the study's SQL storage.

Ray's OptunaSearch leaves a trial RUNNING in the store when the last report lacks the metric, has no hook
for user attributes and cannot record a failure's reason; this searcher owns the ask/tell cycle instead. It
asks its sampler (tuner.samplers, built from the space; it names none) for the next point, judges the point
with the memory model (calibrated on the trials measured so far: a point predicted not to fit is recorded
PRUNED with its prediction and reason, and never launched), and has the recorder (tuner.recorder) write
every trial's start and end, so each ends COMPLETE, FAIL or PRUNED.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import optuna
from optuna.trial import Trial
from ray.tune.search import Searcher

from tuner.dsconfig import apply_knobs
from tuner.plan import EvidenceJudge, MemoryPlanner, Planned
from tuner.points import Point
from tuner.recorder import StudyRecorder
from tuner.result import TrialResult
from tuner.samplers import DONE, WAIT, Proposal, Sampler, make_sampler
from tuner.space import Space
from tuner.state import SearchState
from tuner.store import measured_memory
from tuner.trial.failures import Failure
from tuner.trial.trainable import RESULT_KEY


class StudySearcher(Searcher):
    """Suggests points from its sampler and records each Tune trial's outcome in the Optuna study."""

    def __init__(
        self,
        study: optuna.Study,
        space: Space,
        valid: tuple[Point, ...],
        ds_configs: dict[Point, dict[str, Any]],
        on_event: Callable[[str, dict[str, Any]], None],
        memory: MemoryPlanner | EvidenceJudge | None = None,
        sampler: Sampler | None = None,
        accelerator: str | None = None,
    ) -> None:
        super().__init__()
        self.study, self.space, self.ds_configs, self.on_event = study, space, ds_configs, on_event
        self.memory = memory
        # the device kind: the search's, else the memory model's; without either, rules as on a GPU
        self.accelerator = accelerator or (memory.setup.accelerator if isinstance(memory, MemoryPlanner) else "cuda")
        self.state = SearchState.of(study, valid)
        self.recorder = StudyRecorder(study, space, valid)
        self.sampler = sampler or make_sampler(space)
        self.view = _View(self)
        self.launched = 0
        self.finished = False  # told Tune there is nothing more to run; a fit() that returns before was stopped
        most = len(self.state.remaining()) + self.sampler.extra_trials()
        self.budget = min(space.search.max_trials or most, most)

    def __getstate__(self) -> dict[str, Any]:
        """Nothing: Tune pickles its searcher into the run folder (tuner.pkl) for a restore this tool never
        does (a rerun reads the store), and the study's storage URL, which may hold a password, must not
        land in a file."""
        return {}

    def ran_to_the_end(self) -> bool:
        """Whether nothing was left to launch: told Tune so, or the budget is spent (Tune stops asking at
        num_samples). Tune's fit() returning before that was stopped (Ctrl-C), even with no trial in flight."""
        return self.finished or self.launched >= self.budget

    def set_search_properties(self, metric: str | None, mode: str | None, config: dict[str, Any], **spec: Any) -> bool:
        return True  # the space lives in this searcher, not in Tune's config

    def save_to_dir(self, checkpoint_dir: str, session_str: str = "default") -> None:
        """Tune's experiment checkpoints are not needed: the Optuna store is this search's state."""

    def restore_from_dir(self, checkpoint_dir: str) -> None:
        """Nothing to restore: a rerun reads finished points from the store."""

    def remaining(self) -> list[Point]:
        return self.state.remaining()

    def judge(self, point: Point) -> Planned | None:
        """The memory model's decision on `point`, or None without a model."""
        if self.memory is None:
            return None
        return self.memory.judge(point, measured_memory(self.study), self.state.ran_out())

    def _prunes(self, planned: Planned | None) -> bool:
        return planned is not None and planned.fits is False and self.memory is not None and self.memory.prune

    def suggest(self, trial_id: str) -> dict[str, Any] | None:  # or Searcher.FINISHED, a str
        """The next trial's config; None asks Tune to come back (the trials in flight must report first)."""
        while True:
            if self.launched >= self.budget:
                self.finished = True
                return Searcher.FINISHED  # type: ignore[return-value]
            proposed = self.sampler.propose(self.view)
            if proposed == WAIT:
                return None
            if proposed == DONE:
                self.finished = True
                return Searcher.FINISHED  # type: ignore[return-value]
            assert isinstance(proposed, Proposal)
            started = self._start(proposed)
            if started is not None:
                break
        trial, point, config = started
        self.state.in_flight[trial_id] = (trial, point)
        self.launched += 1
        self.on_event("start", {"number": trial.number, "index": self.launched, "point": point})
        return config

    def _start(self, proposal: Proposal) -> tuple[Trial, Point, dict[str, Any]] | None:
        """Record and configure the proposed trial, or record it PRUNED (None: the sampler is asked again)."""
        point, planned = proposal.point, self.judge(proposal.point)
        attrs = planned.attrs() if planned is not None else {}
        again = point in self.state.pruned_before
        if self._prunes(planned) and again and proposal.trial is None:
            self.state.skipped.add(point)  # recorded PRUNED by an earlier run; not recorded twice
            return None
        trial = proposal.trial or self.recorder.ask(point)
        if proposal.trial is None:
            suggested = self.recorder.suggest(trial, [name for name, _ in point.comm])
            assert suggested == point, f"enqueued {point} but the trial suggested {suggested}"
        if self._prunes(planned):
            assert planned is not None
            self.recorder.pruned(trial, point, attrs, planned.reason, again)
            self.state.skipped.add(point)
            self.on_event("pruned", {"number": trial.number, "point": point, "reason": planned.reason})
            return None
        ds_config = apply_knobs(self.ds_configs[point.main()], point.comm, self.accelerator)
        best = self.state.best_step_time()
        limit = best * (1 + self.space.search.early_stop_margin) if best and self.space.search.stops_early else None
        if limit is not None:
            attrs["early_stop_over_step_s"] = limit
        self.recorder.started(trial, point, ds_config, {**attrs, **proposal.attrs})
        config = {"point": point.params(), "trial_number": trial.number, "ds_config": ds_config}
        return trial, point, {**config, "stop_over_step_s": limit}

    def on_trial_complete(self, trial_id: str, result: dict[str, Any] | None = None, error: bool = False) -> None:
        entry = self.state.in_flight.pop(trial_id, None)
        if entry is None:
            return
        trial, point = entry
        outcome = _outcome(result, error)
        frozen = self.recorder.finished(trial, outcome)
        self.state.ended(point, frozen)
        self.on_event("end", {"number": trial.number, "point": point, "result": outcome, "trial": frozen})

    def abandon_in_flight(self, reason: str) -> int:
        """Trials Tune never finished (stopped or interrupted) end as FAIL with `reason`; returns how many."""
        abandoned = len(self.state.in_flight)
        for trial_id in list(self.state.in_flight):
            trial, _ = self.state.in_flight.pop(trial_id)
            self.recorder.abandoned(trial, reason)
        return abandoned


class _View:
    """The search as samplers see it (tuner.samplers.base.SearchView): the state, and TPE's two needs."""

    def __init__(self, searcher: StudySearcher) -> None:
        self._s = searcher
        state = searcher.state
        self.valid, self.done, self.repeats = state.valid, state.done, state.repeats
        self.skipped, self.pruned_before = state.skipped, state.pruned_before
        self.remaining, self.value, self.signed, self.outcomes = (
            state.remaining, state.value, state.signed, state.outcomes,
        )  # fmt: skip
        self.ranks = searcher.space.hardware.gpus_per_trial
        # offload moves work off a device only where there is one; on CPU the optimizer runs there anyway
        self.offload_is_slower = searcher.accelerator == "cuda"

    def busy(self) -> bool:
        return bool(self._s.state.in_flight)

    def ask(self) -> Trial:
        return self._s.recorder.ask()

    def suggest(self, trial: Trial) -> Point:
        return self._s.recorder.suggest(trial)

    def duplicate(self, trial: Trial, point: Point) -> None:
        state = self._s.state
        self._s.recorder.duplicate(trial, point, state.done.get(point), point in state.skipped)


def _outcome(result: dict[str, Any] | None, error: bool) -> TrialResult:
    """The trial's TrialResult from its last Tune report, or a tuner error when there is none."""
    if result and RESULT_KEY in result:
        return TrialResult.from_json(result[RESULT_KEY])
    why = "the Tune trial raised an error" if error else "the Tune trial ended without a result"
    return TrialResult.failed(Failure.TUNER_ERROR, why + "; see the Ray logs under the run folder")
