"""Communication knobs: coordinate search at the best main point, after the main knobs settle."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import optuna
import pytest
from ray.tune.search import Searcher

from tests.unit.test_searcher import RAW
from tuner.comm import comm_budget, next_comm_point
from tuner.dsconfig import apply_knobs, build_ds_config
from tuner.points import Point, enumerate_points
from tuner.result import TrialResult
from tuner.samplers import REMEASURE_MAX_POINTS
from tuner.searcher import RESULT_KEY, StudySearcher
from tuner.space import parse_space

LISTS: dict[str, list[Any]] = {"overlap_comm": [True, False], "reduce_bucket_size": [50_000_000, 200_000_000]}


def speed(point: Point) -> float:
    """A landscape where overlap off and the larger bucket each add a little at ZeRO-2."""
    comm = dict(point.comm)
    bonus = 30.0 * (comm.get("overlap_comm") is False) + 10.0 * (comm.get("reduce_bucket_size") == 200_000_000)
    return 1000.0 * point.micro_batch_size - 100 * point.zero_stage + bonus


def test_coordinate_search_settles_one_knob_then_the_next() -> None:
    best = Point(4, 2)
    measured: dict[Point, float | None] = {best: speed(best)}
    order = []
    while (nxt := next_comm_point(best, LISTS, measured)) is not None:
        order.append(nxt)
        measured[nxt] = speed(nxt)
    assert len(order) == comm_budget(LISTS) == 4  # the sum of the lists, not their product
    assert [dict(p.comm).get("reduce_bucket_size") for p in order[:2]] == [None, None]  # overlap first
    winner = max(measured, key=lambda p: measured[p] or 0)
    assert dict(winner.comm) == {"overlap_comm": False, "reduce_bucket_size": 200_000_000}


def test_a_knob_the_stage_does_not_read_is_skipped_and_a_failure_never_wins() -> None:
    lists: dict[str, list[Any]] = {"stage3_prefetch_bucket_size": [10_000_000], "allgather_bucket_size": [10**8]}
    assert next_comm_point(Point(4, 3), {"allgather_bucket_size": [10**8]}, {Point(4, 3): 1.0}) is None
    only = next_comm_point(Point(4, 3), lists, {Point(4, 3): 1.0})
    assert only is not None and dict(only.comm) == {"stage3_prefetch_bucket_size": 10_000_000}
    base = Point(4, 2)
    failed = base.with_knob("overlap_comm", False)
    measured: dict[Point, float | None] = {base: 5.0, failed: None, base.with_knob("overlap_comm", True): 4.0}
    nxt = next_comm_point(base, LISTS, measured)
    assert nxt is not None and dict(nxt.comm) == {"reduce_bucket_size": 50_000_000}  # the baseline's overlap kept


def test_point_params_round_trip_and_config_carries_the_knobs() -> None:
    point = Point(4, 2).with_knob("reduce_bucket_size", 5).with_knob("overlap_comm", False)
    assert point.params()["comm_overlap_comm"] is False and "comm" not in point.params()
    assert Point.from_params(point.params()) == point
    assert point.label() == "mb4 z2 overlap_comm=false reduce_bucket_size=5"
    base = build_ds_config({}, Point(4, 2), global_batch=8, ranks=2, precision="bf16", accelerator="cpu")
    config = apply_knobs(base, point.comm, "cpu")
    assert config["zero_optimization"] == {"stage": 2, "overlap_comm": False, "reduce_bucket_size": 5}
    assert "overlap_comm" not in base["zero_optimization"]


@pytest.mark.parametrize("sampler", ["grid", "guided"])
def test_the_search_tunes_communication_after_the_main_knobs(sampler: str) -> None:
    raw = json.loads(json.dumps(RAW))
    raw["space"] = {"micro_batch_size": [1, 4], "zero_stage": [2, 3], **LISTS}
    raw["search"] = {"sampler": sampler}
    space = parse_space(raw, default_study="unit")
    valid = enumerate_points(space).valid
    configs = {p: build_ds_config({}, p, global_batch=8, ranks=2, precision="bf16", accelerator="cpu") for p in valid}
    study = optuna.create_study(direction="maximize")
    searcher = StudySearcher(study, space, valid, configs, lambda *_: None)
    # every point, guided's re-measurements of the best few first, then every communication value once
    extra = REMEASURE_MAX_POINTS if sampler == "guided" else 0
    assert searcher.budget == len(valid) + extra + comm_budget(LISTS)
    run: list[Point] = []
    for i in range(50):
        suggestion = searcher.suggest(f"t{i}")
        if suggestion == Searcher.FINISHED:
            break
        assert isinstance(suggestion, dict)
        point = Point.from_params(suggestion["point"])
        assert suggestion["ds_config"]["zero_optimization"].items() >= dict(point.comm).items()
        run.append(point)
        figures = {"tokens_per_s": speed(point), "step_time_s": 1.0, "peak_mem_gb": 0.5}
        result = TrialResult(figures, log_path="/nonexistent", duration_s=1.0)
        searcher.on_trial_complete(f"t{i}", {RESULT_KEY: json.dumps(dataclasses.asdict(result))})
    main = [p for p in run if not p.comm]
    tuned = [p for p in run if p.comm]
    assert run.index(tuned[0]) == len(main)  # every communication trial after the main ones
    assert {p.micro_batch_size for p in tuned} == {4} and {p.zero_stage for p in tuned} == {2}
    assert len(tuned) == 4
    best = Point.from_params(study.best_trial.params)
    assert dict(best.comm) == {"overlap_comm": False, "reduce_bucket_size": 200_000_000}
    assert study.best_trial.user_attrs["ds_config"]["zero_optimization"]["overlap_comm"] is False
