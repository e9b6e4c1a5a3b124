"""Samplers behind one interface: the orchestrator drives any of them and names none (no Ray, no DeepSpeed)."""

from __future__ import annotations

import json
from typing import Any, Literal

import optuna
from optuna.trial import TrialState
from ray.tune.search import Searcher

from tests.conftest import REPO
from tests.unit.test_searcher import RAW
from tuner.points import Point, enumerate_points
from tuner.result import TrialResult
from tuner.samplers import (
    DONE,
    WAIT,
    CommPhase,
    GridSampler,
    GuidedSampler,
    Phases,
    Proposal,
    Remeasure,
    SearchView,
    make_sampler,
)
from tuner.searcher import RESULT_KEY, StudySearcher
from tuner.space import parse_space


def space_with(**search: Any) -> Any:
    raw = json.loads(json.dumps(RAW))
    raw["space"] = {"micro_batch_size": [1, 2], "zero_stage": [0, 3], "overlap_comm": [True, False]}
    raw["search"] = search
    return parse_space(raw, default_study="unit")


class Scripted:
    """A sampler the orchestrator has never heard of: a fixed list, then done."""

    def __init__(self, points: list[Point]) -> None:
        self.points = list(points)

    def propose(self, view: SearchView) -> Proposal | Literal["done"]:
        return Proposal(self.points.pop(0)) if self.points else DONE

    def extra_trials(self) -> int:
        return 0


def drive(searcher: StudySearcher) -> list[Point]:
    run = []
    for i in range(30):
        suggestion = searcher.suggest(f"t{i}")
        if suggestion == Searcher.FINISHED:
            break
        assert isinstance(suggestion, dict)
        point = Point.from_params(suggestion["point"])
        run.append(point)
        figures = {"tokens_per_s": 100.0 * point.micro_batch_size, "step_time_s": 1.0}
        searcher.on_trial_complete(f"t{i}", {RESULT_KEY: TrialResult(figures, duration_s=1.0).to_json()})
    return run


def test_the_orchestrator_runs_any_sampler_and_records_every_trial() -> None:
    space = space_with(sampler="grid")
    valid = enumerate_points(space).valid
    study = optuna.create_study(direction="maximize")
    order = [Point(2, 3), Point(1, 0)]
    searcher = StudySearcher(study, space, valid, {p: {} for p in valid}, lambda *_: None, sampler=Scripted(order))
    assert drive(searcher) == order
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 2
    assert [t.user_attrs["point"] for t in study.trials] == ["mb2 z3", "mb1 z0"]


def test_the_orchestrator_names_no_sampler() -> None:
    source = (REPO / "tuner" / "searcher.py").read_text()
    for name in ("grid", "random", "tpe", "guided", "Remeasure", "CommPhase"):
        assert f'"{name}"' not in source and f"{name}(" not in source, name


def test_each_space_gets_its_sampler_then_the_steps_after_it() -> None:
    guided = make_sampler(space_with(sampler="guided"))
    assert isinstance(guided, Phases)
    assert [type(s) for s in guided.steps] == [GuidedSampler, Remeasure, CommPhase]
    assert guided.extra_trials() == 3 + 2  # the best few re-measured, every communication value once
    grid = make_sampler(space_with(sampler="grid"))
    assert isinstance(grid, Phases) and [type(s) for s in grid.steps] == [GridSampler, CommPhase]
    assert [type(s) for s in make_sampler(space_with(sampler="guided", remeasure_within=0)).steps] == [
        GuidedSampler, CommPhase,
    ]  # fmt: skip


def test_the_steps_after_the_main_search_wait_for_the_trials_in_flight() -> None:
    space = space_with(sampler="grid")
    valid = enumerate_points(space).valid
    study = optuna.create_study(direction="maximize")
    searcher = StudySearcher(study, space, valid, {p: {} for p in valid}, lambda *_: None)
    suggested = [searcher.suggest(f"t{i}") for i in range(len(valid))]
    assert all(isinstance(s, dict) for s in suggested)
    assert searcher.suggest("next") is None  # grid is done; the communication phase waits for the best
    assert Remeasure(0.1).propose(searcher.view) == WAIT and CommPhase({"overlap_comm": [True]}).propose(
        searcher.view
    ) == WAIT  # fmt: skip
    for i in range(len(valid)):
        point = Point.from_params(suggested[i]["point"])  # type: ignore[index]
        figures = {"tokens_per_s": 100.0 * point.micro_batch_size + point.zero_stage, "step_time_s": 1.0}
        searcher.on_trial_complete(f"t{i}", {RESULT_KEY: TrialResult(figures, duration_s=1.0).to_json()})
    third = searcher.suggest("comm")
    assert isinstance(third, dict) and Point.from_params(third["point"]).comm == (("overlap_comm", True),)
    assert Point.from_params(third["point"]).main() == Point(2, 3)  # at the best main point


def test_a_trial_another_search_reclaimed_meanwhile_keeps_that_record() -> None:
    """A stalled search's trial failed as stale by a rerun elsewhere (tuner.heartbeat): its late result is dropped."""
    space = space_with(sampler="grid")
    valid = enumerate_points(space).valid
    study = optuna.create_study(direction="maximize")
    searcher = StudySearcher(study, space, valid, {p: {} for p in valid}, lambda *_: None)
    first = searcher.suggest("t0")
    assert isinstance(first, dict)
    trial_id = study.trials[first["trial_number"]]._trial_id
    study._storage.set_trial_state_values(trial_id, TrialState.FAIL)  # what the other host's reclaim did
    result = TrialResult({"tokens_per_s": 5.0, "step_time_s": 1.0}, duration_s=1.0)
    searcher.on_trial_complete("t0", {RESULT_KEY: result.to_json()})  # no error
    assert study.trials[0].state == TrialState.FAIL and not searcher.state.in_flight


def test_each_searched_length_re_measures_its_own_best_few() -> None:
    """Tokens/s at 4096 tokens is lower than at 1024 by the workload, not the layout: the near points of each
    length are re-measured, not only those of the fastest length."""
    from types import SimpleNamespace

    values = {
        Point(4, 0, sequence_length=1024): 1000.0, Point(4, 1, sequence_length=1024): 950.0,
        Point(2, 0, sequence_length=1024): 500.0,
        Point(1, 0, sequence_length=4096): 300.0, Point(1, 1, sequence_length=4096): 290.0,
    }  # fmt: skip
    done = {p: SimpleNamespace(number=i) for i, p in enumerate(values)}
    repeats: set[Point] = set()
    view = SimpleNamespace(
        busy=lambda: False, done=done, value=values.get, repeats=repeats, skipped=set()
    )  # fmt: skip
    step = Remeasure(0.1, workloads=2)
    proposed = []
    while isinstance(proposal := step.propose(view), Proposal):
        proposed.append(proposal.point)
        repeats.add(proposal.point)
    assert proposal == DONE
    assert proposed == [Point(4, 0, sequence_length=1024), Point(4, 1, sequence_length=1024),
                        Point(1, 0, sequence_length=4096), Point(1, 1, sequence_length=4096)]  # fmt: skip
    assert step.extra_trials() == 6
