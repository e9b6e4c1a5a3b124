"""One ranking for every consumer: a study built with Optuna alone (no Ray, no DeepSpeed) where a point's single
best draw beats another point's mean but its own mean does not. The summary table, the `best:` line, the
progress line, `tuner results`, `tuner report`, `tuner export` and the attributes recorded for optuna-dashboard
must all name the same trial and the same order."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import optuna
import pytest
from optuna.distributions import CategoricalDistribution
from optuna.trial import TrialState, create_trial
from rich.console import Console

from tuner.export import choose_trial
from tuner.points import Point
from tuner.ranking import best, rank_study, record_ranking, recording
from tuner.report import _best_section
from tuner.results import results_frame
from tuner.store import open_storage
from tuner.summary import best_line, failure_lines, front_table, summary_table

A, B, C = Point(4, 0), Point(4, 1), Point(2, 0)
CHOICES: dict[str, list[Any]] = {
    "micro_batch_size": [1, 2, 4, 8], "zero_stage": [0, 1, 2, 3], "offload_optimizer": ["none", "cpu"],
    "offload_param": ["none", "cpu"], "activation_checkpointing": [False, True],
}  # fmt: skip
DISTRIBUTIONS = {name: CategoricalDistribution(values) for name, values in CHOICES.items()}


def add(study: optuna.Study, point: Point, state: TrialState, value: float | None = None, **attrs: Any) -> None:
    study.add_trial(
        create_trial(
            state=state, value=value, params=point.params(), distributions=DISTRIBUTIONS,
            user_attrs={"point": point.label(), "tokens_per_s": value, **attrs},
        )
    )  # fmt: skip


@pytest.fixture
def study(tmp_path: Path) -> optuna.Study:
    """A at 1,000 then 800 (mean 900), B at 950 then 960 (mean 955), C once at 900 (ties A's mean)."""
    s = optuna.create_study(
        study_name="ranked", storage=open_storage(f"sqlite:///{tmp_path / 'r.db'}"), direction="maximize"
    )
    s.set_user_attr("objectives", ["tokens_per_s"])
    add(s, A, TrialState.COMPLETE, 1000.0)  # 0: the single best draw of the study
    add(s, B, TrialState.COMPLETE, 950.0)  # 1
    add(s, C, TrialState.COMPLETE, 900.0)  # 2
    add(s, A, TrialState.COMPLETE, 800.0, repeat_of=0)  # 3: guided measured A again
    add(s, B, TrialState.COMPLETE, 960.0, repeat_of=1)  # 4
    add(s, A, TrialState.COMPLETE, 2000.0, duplicate_of=0)  # 5: a record of a point TPE proposed twice
    add(s, Point(8, 0), TrialState.FAIL, failure_category="oom", failure_reason="out of memory", log_path="/l")  # 6
    add(s, Point(8, 3), TrialState.PRUNED, prune_reason="predicted over the budget")  # 7
    s.ask()  # 8: running
    return s


ORDER = [1, 4, 0, 3, 2, 8, 6, 7]  # B (mean 955) and its repeat; A (900, first measured) and its repeat; C; the rest


def text(renderable: Any) -> str:
    console = Console(file=io.StringIO(), width=200, color_system=None)
    console.print(renderable)
    return console.file.getvalue()  # type: ignore[attr-defined]


def test_every_consumer_agrees_when_a_single_draw_beats_the_best_mean(study: optuna.Study, tmp_path: Path) -> None:
    ranking = rank_study(study)
    assert [r.number for r in ranking] == ORDER
    assert [r.rank for r in ranking] == [1, 1, 2, 2, 3, None, None, None]
    assert [r.represents for r in ranking[:5]] == [True, False, True, False, True]
    assert (ranking[0].mean, ranking[0].measurements) == (955.0, 2) and ranking[4].measurements == 1
    assert max(t.value for t in study.trials if t.value is not None and "duplicate_of" not in t.user_attrs) == 1000.0

    # tuner search: the summary table's rows, its best line and the progress line's best
    table = summary_table(study, ranking)
    assert list(table.columns[1].cells) == [str(n) for n in ORDER]
    assert list(table.columns[0].cells)[:5] == ["1", "", "2", "", "3"]
    assert "955 (2)" in text(table) and "repeat of #1" in text(table)
    line = best_line(ranking, ("tokens_per_s",), "ranked", "sqlite:///r.db")
    assert line is not None and line.startswith("best: trial 1 mb4 z1 tokens_per_s=955 (mean of 2 measurements)\n")
    assert failure_lines(ranking) == ["  trial 6 oom: out of memory (log: /l)"]
    events: list[tuple[str, dict[str, Any]]] = []
    recording(study, lambda kind, data: events.append((kind, data)))("end", {"number": 4})
    assert events[-1][1]["best"].number == 1

    # tuner results, tuner report and tuner export
    frame = results_frame(study)
    assert list(frame["number"]) == ORDER
    assert frame.loc[0, "mean_of_measurements"] == 955.0 and list(frame["rank"].iloc[:5]) == [1, 1, 2, 2, 3]
    assert "Best configuration: trial 1, mb4 z1" in _best_section(study) and "955 (mean of 2" in _best_section(study)
    assert choose_trial(study, None).number == 1

    # what optuna-dashboard shows: the study's user attributes, read back through another connection
    record_ranking(study)
    attrs = optuna.load_study(study_name="ranked", storage=f"sqlite:///{tmp_path / 'r.db'}").user_attrs
    assert attrs["best_trial"] == 1 and attrs["best_point"] == "mb4 z1" and attrs["best_mean_value"] == 955.0
    assert attrs["ranking"] == [
        "1. trial 1 mb4 z1 tokens_per_s=955 (mean of 2 measurements)",
        "2. trial 0 mb4 z0 tokens_per_s=900 (mean of 2 measurements)",
        "3. trial 2 mb2 z0 tokens_per_s=900",
    ]


def test_minimizing_ranks_the_lowest_mean_first_and_ties_go_to_the_earlier_point() -> None:
    study = optuna.create_study(direction="minimize")
    add(study, A, TrialState.COMPLETE, 1.0)  # 0: A's mean is 2.0
    add(study, B, TrialState.COMPLETE, 1.5)  # 1
    add(study, A, TrialState.COMPLETE, 3.0, repeat_of=0)  # 2
    add(study, C, TrialState.COMPLETE, 1.5)  # 3: ties B; B was measured first
    assert [(r.number, r.rank) for r in rank_study(study)] == [(1, 1), (3, 2), (0, 3), (2, 3)]
    top = best(rank_study(study))
    assert top is not None and top.number == 1


def test_duplicate_records_are_left_out_and_a_study_without_completed_trials_has_no_best() -> None:
    study = optuna.create_study(direction="maximize")
    for value, attrs in ((5.0, {}), (7.0, {}), (7.0, {"duplicate_of": 1}), (7.0, {})):
        trial = study.ask()
        for key, attr in attrs.items():
            trial.set_user_attr(key, attr)
        study.tell(trial, value)
    assert [r.number for r in rank_study(study)] == [1, 3, 0]
    empty = optuna.create_study()
    add(empty, A, TrialState.FAIL)
    assert best(rank_study(empty)) is None
    assert record_ranking(empty) is None and empty.user_attrs["ranking"] == []
    assert best_line(rank_study(empty), ("tokens_per_s",), "s", "sqlite://") is None


def test_the_pareto_front_is_listed_in_ranking_order() -> None:
    study = optuna.create_study(directions=["maximize", "minimize"])
    for point, values in ((A, [900.0, 2.0]), (B, [1000.0, 3.0]), (C, [800.0, 1.0])):
        study.add_trial(
            create_trial(
                state=TrialState.COMPLETE, values=values, params=point.params(), distributions=DISTRIBUTIONS,
                user_attrs={"point": point.label()},
            )
        )  # fmt: skip
    front = front_table(study, ("tokens_per_s", "peak_mem_gb"), rank_study(study))
    assert list(front.columns[0].cells) == ["1", "0", "2"]
