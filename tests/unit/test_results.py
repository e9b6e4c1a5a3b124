"""The results table from a study (no trials run): order, columns, repeats and formats."""

from __future__ import annotations

from pathlib import Path

import optuna
import pandas as pd
import pytest
from optuna.distributions import CategoricalDistribution
from optuna.trial import TrialState, create_trial

from tuner.errors import SpaceError
from tuner.points import Point
from tuner.results import results_frame, write_results


def add(study: optuna.Study, point: Point, state: TrialState, tokens: float | None = None, **attrs: object) -> None:
    params = point.params()
    dists = {k: CategoricalDistribution([v]) for k, v in params.items()}
    figures = {"tokens_per_s": tokens, "peak_mem_gb": 0.5, "step_time_s": 1.0} if tokens else {}
    study.add_trial(
        create_trial(
            state=state, value=tokens if state == TrialState.COMPLETE else None, params=params, distributions=dists,
            user_attrs={"point": point.label(), **figures, **attrs},
        )
    )  # fmt: skip


@pytest.fixture
def study() -> optuna.Study:
    s = optuna.create_study(direction="maximize")
    s.set_user_attr("objectives", ["tokens_per_s"])
    add(s, Point(8, 3), TrialState.PRUNED, prune_reason="predicted peak 90 GB is over the budget")
    add(s, Point(2, 0), TrialState.COMPLETE, 900.0, predicted_mem_gb=0.45)
    add(s, Point(4, 0), TrialState.FAIL, failure_category="oom", failure_reason="CUDA out of memory")
    add(s, Point(4, 1), TrialState.COMPLETE, 1000.0)
    add(s, Point(2, 1), TrialState.COMPLETE, 950.0)
    add(s, Point(2, 1), TrialState.COMPLETE, 1150.0, repeat_of=4)  # guided measured it again
    return s


def test_rows_are_best_first_by_the_mean_of_repeats_then_failures_then_pruned(study: optuna.Study) -> None:
    frame = results_frame(study)
    assert list(frame["point"]) == ["mb2 z1", "mb2 z1", "mb4 z1", "mb2 z0", "mb4 z0", "mb8 z3"]
    assert list(frame["state"]) == ["COMPLETE"] * 4 + ["FAIL", "PRUNED"]
    assert frame.loc[0, "mean_of_measurements"] == 1050.0 and frame.loc[0, "measurements"] == 2
    assert frame.loc[2, "measurements"] == 1 and pd.isna(frame.loc[2, "mean_of_measurements"])
    assert frame.loc[4, "failure_category"] == "oom" and "over the budget" in frame.loc[5, "prune_reason"]
    assert frame.loc[3, "predicted_mem_gb"] == 0.45 and pd.isna(frame.loc[2, "predicted_mem_gb"])
    assert {"micro_batch_size", "zero_stage", "objective_tokens_per_s", "started", "completed"} <= set(frame.columns)


def test_formats_round_trip_and_bad_requests_are_errors(study: optuna.Study, tmp_path: Path) -> None:
    frame = results_frame(study)
    text = write_results(frame, "table", None)
    assert text is not None and text.splitlines()[0].split()[:3] == ["number", "point", "state"]
    write_results(frame, "parquet", tmp_path / "r.parquet")
    assert list(pd.read_parquet(tmp_path / "r.parquet")["point"]) == list(frame["point"])
    csv = write_results(frame, "csv", None)
    assert csv is not None and csv.count("\n") == len(frame) + 1
    with pytest.raises(SpaceError, match="--format: must be one of table, csv, json, parquet"):
        write_results(frame, "xlsx", None)
    with pytest.raises(SpaceError, match="--output: parquet is binary"):
        write_results(frame, "parquet", None)


def test_an_empty_study_is_an_empty_table() -> None:
    empty = optuna.create_study()
    assert results_frame(empty).empty
    assert write_results(results_frame(empty), "table", None) == "no trials\n"
