"""The report and results of a study that searched tensor parallelism and several sequence lengths, built
from fake trials (no trial runs): the per-length plots, the tp/sp/dp columns and the best at each length."""

from __future__ import annotations

import re
from typing import Any

import optuna
import pytest
from optuna.distributions import CategoricalDistribution
from optuna.trial import TrialState, create_trial

from tuner.points import Point
from tuner.ranking import best_per_length, rank_study
from tuner.report import fastest_per_length, length_figures, render_report
from tuner.results import results_frame, table_text
from tuner.summary import best_line

LENGTHS = (64, 128, 256)
CHOICES: dict[str, list[Any]] = {
    "micro_batch_size": [2, 4, 8], "zero_stage": [0, 1, 2, 3], "offload_optimizer": ["none", "cpu"],
    "offload_param": ["none", "cpu"], "activation_checkpointing": [False, True], "tensor_parallel_size": [1, 2],
    "sequence_length": list(LENGTHS),
}  # fmt: skip
# (an SQL store wants one distribution per parameter across trials)


def add(study: optuna.Study, point: Point, state: TrialState, tokens: float | None = None, **attrs: Any) -> None:
    params = point.params()
    figures = {"tokens_per_s": tokens, "peak_mem_gb": attrs.pop("gb", 0.5), "step_time_s": 1.0} if tokens else {}
    study.add_trial(
        create_trial(
            state=state, value=tokens if state == TrialState.COMPLETE else None, params=params,
            distributions={k: CategoricalDistribution(CHOICES[k]) for k in params},
            user_attrs={"point": point.label(), **figures, **attrs},
        )
    )  # fmt: skip


def lengths_study(storage: str | None = None) -> optuna.Study:
    """2 CPU ranks, tp 1 and 2 at three sequence lengths (tokens/s falls and memory rises with the length; tp2
    is slower and leaner), a repeat, an out-of-memory failure and a pruned point."""
    study = optuna.create_study(study_name="lengths", storage=storage, direction="maximize")
    study.set_user_attr("objectives", ["tokens_per_s"])
    study.set_user_attr("space", {"hardware": {"gpus_per_trial": 2, "device_memory_gb": 1.0},
                                  "data": {"sequence_length": list(LENGTHS)}})  # fmt: skip
    for i, length in enumerate(LENGTHS):
        for tp, (speed, gb) in ((1, (1.0, 0.3)), (2, (0.7, 0.2))):
            for mb in (2, 4):
                point = Point(mb, 0, tensor_parallel_size=tp, sequence_length=length)
                tokens = 1000.0 * speed * (mb / 4) / (1 + i)
                if tp == 1 and length == 256 and mb == 4:
                    add(study, point, TrialState.FAIL, failure_category="oom", failure_reason="out of memory")
                else:
                    add(study, point, TrialState.COMPLETE, tokens, gb=gb * (1 + i) * mb / 2)
    add(study, Point(2, 0, sequence_length=64), TrialState.COMPLETE, 400.0, gb=0.3, repeat_of=0)
    add(study, Point(8, 0, sequence_length=64), TrialState.PRUNED, prune_reason="predicted over the budget")
    return study


def test_the_best_at_each_length_is_reported_beside_the_one_best() -> None:
    study = lengths_study()
    ranking = rank_study(study)
    per_length = {n: r.trial.user_attrs["point"] for n, r in best_per_length(ranking).items()}
    assert per_length == {64: "mb4 z0 s64", 128: "mb4 z0 s128", 256: "mb4 z0 tp2 s256"}  # tp1 ran out at 256
    line = best_line(ranking, ("tokens_per_s",), "lengths", "sqlite:///x.db")
    assert line is not None and "best at each sequence length (export one with --trial N):" in line
    assert "  sequence_length 256: trial 11 mb4 z0 tp2 s256 tokens_per_s=233.3" in line
    assert best_per_length(ranking[:1]) == {}  # one length: nothing more to say


def test_the_results_table_shows_tp_sp_and_dp_and_the_best_per_length() -> None:
    frame = results_frame(lengths_study())
    assert set(frame["tensor_parallel_size"]) == {1, 2} and set(frame["sequence_parallel_size"]) == {1}
    assert set(zip(frame["tensor_parallel_size"], frame["data_parallel_size"], strict=True)) == {(1, 2), (2, 1)}
    assert frame["best_at_length"].sum() == 3
    text = table_text(frame)
    header = text.splitlines()[0].split()
    assert header[:7] == ["number", "point", "state", "tp", "sp", "dp", "rank"]
    assert text.endswith(
        "best at each sequence length:\n  sequence_length 64: trial 1 mb4 z0 s64\n"
        "  sequence_length 128: trial 5 mb4 z0 s128\n  sequence_length 256: trial 11 mb4 z0 tp2 s256\n"
    )


def test_a_study_without_tp_sp_or_lengths_keeps_its_table() -> None:
    study = optuna.create_study(direction="maximize")
    add(study, Point(4, 0), TrialState.COMPLETE, 900.0)
    frame = results_frame(study)
    assert table_text(frame).splitlines()[0].split()[:4] == ["number", "point", "state", "rank"]
    assert frame["best_at_length"].isna().all() and frame["data_parallel_size"].isna().all()
    assert length_figures(frame, None) == []


def test_throughput_and_memory_against_length_plot_each_familys_fastest_point() -> None:
    frame = results_frame(lengths_study())
    fastest = fastest_per_length(frame)
    assert [(f, n, p) for f, n, p in zip(fastest["family"], fastest["sequence_length"], fastest["point"],
                                         strict=True)] == [
        ("z0", 64, "mb4 z0 s64"), ("z0", 128, "mb4 z0 s128"), ("z0", 256, "mb2 z0 s256"),
        ("z0 tp2", 64, "mb4 z0 tp2 s64"), ("z0 tp2", 128, "mb4 z0 tp2 s128"), ("z0 tp2", 256, "mb4 z0 tp2 s256"),
    ]  # fmt: skip
    (_, tokens), (_, memory) = length_figures(frame, 1.0)
    lines = {trace.name: (list(trace.x), list(trace.y)) for trace in tokens.data}
    assert lines["z0"] == ([64, 128, 256], [1000.0, 500.0, pytest.approx(166.67, abs=0.01)])
    assert lines["z0 tp2"][1] == [700.0, 350.0, pytest.approx(233.33, abs=0.01)]
    assert {trace.name: list(trace.y) for trace in memory.data}["z0 tp2"] == [
        pytest.approx(0.4), pytest.approx(0.8), pytest.approx(1.2)]  # fmt: skip
    assert "fastest micro-batch" in tokens.layout.title.text


def test_the_report_holds_the_length_plots_and_the_best_per_length() -> None:
    page = render_report(lengths_study(), "sqlite:///x.db")
    assert 'data-plot="lengths"' in page and 'data-plot="lengthmemory"' in page
    assert "id='best-per-length'" in page and "sequence_length 256: trial 11 mb4 z0 tp2 s256" in page
    heads = re.findall(r'<th scope="col"[^>]*>([^<]+)</th>', page)
    assert heads[:7] == ["number", "point", "state", "tp", "sp", "dp", "rank"]
