"""Cost per token, time to train and `results --compare`, against hand computation (no trial runs)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import optuna
import pytest
from optuna.distributions import CategoricalDistribution
from optuna.trial import TrialState, create_trial
from typer.testing import CliRunner

import tests.unit.test_searcher as searcher_tests
from tests.unit.test_export import exported, study_of
from tests.unit.test_searcher import RAW, drive
from tuner.cli import app
from tuner.compare import compare_frame
from tuner.cost import cost_figures, time_to_train
from tuner.notes import study_note, trial_note
from tuner.points import Point
from tuner.result import GB, TrialResult, figures_from_worker
from tuner.results import results_frame, table_text
from tuner.space import parse_space
from tuner.trial.spec import TrialSpec

WORKER = {  # rank 0's result.json: 2 steps of 0.5 s; 32 samples of 128 tokens a step = 8,192 tokens/s
    "world_size": 8, "device": "cuda", "device_name": "NVIDIA H100 80GB HBM3", "step_times_s": [0.5, 0.5],
    "peak_mem_bytes": GB, "peak_reserved_bytes": GB, "host_mem_bytes": GB, "final_loss": 6.0,
    "num_parameters": 1000, "matmul_parameters": 900, "num_layers": 2, "hidden_size": 16,
    "clock": {"launched": 0.0, "imported": 1.0, "distributed": 1.0, "built": 2.0, "initialized": 3.0,
              "warmed_up": 4.0, "measured": 5.0},
}  # fmt: skip


def priced_space(nodes: int, ranks: int = 8) -> Any:
    raw = json.loads(json.dumps(RAW))
    raw["hardware"] = {
        "gpus_per_trial": ranks, "nodes_per_trial": nodes, "price_per_device_hour": 2.5, "price_per_node_hour": 4.0,
    }  # fmt: skip
    raw["search"] = {"objective": "usd_per_million_tokens"}
    return parse_space(raw, default_study="unit")


@pytest.mark.parametrize(("nodes", "hourly"), [(1, 8 * 2.5 + 4.0), (2, 8 * 2.5 + 2 * 4.0)])
def test_a_trial_costs_its_devices_and_nodes_per_hour_over_its_tokens_per_hour(nodes: int, hourly: float) -> None:
    space = priced_space(nodes)
    assert space.hardware.usd_per_hour == hourly  # 24 USD an hour on one node, 28 on two
    spec = TrialSpec(
        model_config={}, sequence_length=128, micro_batch_size=4, grad_accum=1, activation_checkpointing=False,
        global_batch_size=32, precision="bf16", ds_config={}, usd_per_hour=space.hardware.usd_per_hour,
    )  # fmt: skip
    f = figures_from_worker(WORKER, spec, duration_s=10.0)
    assert f["tokens_per_s"] == 8192.0 and f["usd_per_hour"] == hourly
    by_hand = hourly / (8192.0 * 3600) * 1e6  # 0.8138 USD per million tokens on one node, 0.9494 on two
    assert f["usd_per_million_tokens"] == pytest.approx(by_hand)
    assert f["usd_per_million_samples"] == pytest.approx(hourly / (64.0 * 3600) * 1e6)  # 32 samples / 0.5 s
    unpriced = figures_from_worker(WORKER, spec.replace(usd_per_hour=None), duration_s=10.0)
    assert not {"usd_per_million_tokens", "usd_per_hour"} & set(unpriced)


def test_a_script_without_tokens_is_priced_per_sample_only() -> None:
    assert cost_figures({"samples_per_s": 10.0}, 36.0) == {"usd_per_hour": 36.0, "usd_per_million_samples": 1e3}
    assert cost_figures({"tokens_per_s": 10.0}, None) == {}


def test_cost_is_an_objective_to_minimise_searched_by_guided(monkeypatch: pytest.MonkeyPatch) -> None:
    """Cost is proportional to 1/throughput at a fixed price: guided finds the fastest point, the cheapest."""
    space = priced_space(1, ranks=2)  # 2 x 2.5 + 4 = 9 USD an hour
    assert space.search.sampler == "guided" and space.directions == ["minimize"] and space.search.stops_early
    plain = searcher_tests.fake_result

    def priced(point: Point, peak_gb: float = 0.5) -> TrialResult:
        result = plain(point, peak_gb)
        extra = cost_figures(result.figures, space.hardware.usd_per_hour)
        return result if not result.ok else TrialResult({**result.figures, **extra}, log_path=result.log_path)

    monkeypatch.setattr(searcher_tests, "fake_result", priced)
    study = optuna.create_study(direction="minimize")
    drive(space, study)
    best = study.best_trial
    assert best.value == best.user_attrs["usd_per_million_tokens"] == pytest.approx(9.0 / (4000 * 3600) * 1e6)
    assert best.params["micro_batch_size"] == 4 and best.params["zero_stage"] == 0  # the fastest fake point


def test_time_to_train_scales_the_measured_per_device_rate_to_the_ranks() -> None:
    days = time_to_train(2e12, 4000.0, measured_ranks=4, ranks=1024, usd_per_million_tokens=0.5)
    assert days.tokens_per_s_per_device == 1000.0 and days.tokens_per_s == 1_024_000.0
    assert days.days == pytest.approx(2e12 / 1_024_000 / 86_400)  # 22.6 days
    assert days.usd == pytest.approx(2e6 * 0.5)  # the cost per token stays as measured
    assert "communication that grows with more data-parallel ranks is not measured" in days.line()


def test_export_tokens_prints_and_keeps_the_days_with_and_without_world_size(tmp_path: Path) -> None:
    """study_of: one trial at 1,000 tokens/s on 4 ranks, 250 per device."""
    _, prov, _ = exported(tmp_path, study_of(Point(2, 1)), world_size=8, tokens=2e12)
    kept = prov["time_to_train"]
    assert (kept["tokens"], kept["ranks"], kept["measured_ranks"], kept["tokens_per_s"]) == (2e12, 8, 4, 2000.0)
    assert kept["days"] == pytest.approx(2e12 / 2000 / 86_400) and kept["usd"] is None  # 11,574 days, unpriced
    assert "linear scaling" in kept["assumption"]
    _, prov, _ = exported(tmp_path, study_of(Point(2, 1)), tokens=1e9)
    assert prov["time_to_train"]["ranks"] == 4 and prov["time_to_train"]["days"] == pytest.approx(1e9 / 1000 / 86_400)
    _, prov, _ = exported(tmp_path, study_of(Point(2, 1)))
    assert prov["time_to_train"] is None


def test_export_tokens_through_the_cli_prints_the_days_and_the_cost(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 's.db'}"
    study = study_of(Point(2, 1))
    copied = optuna.create_study(study_name="priced", storage=url, direction="maximize")
    for key, value in study.user_attrs.items():
        copied.set_user_attr(key, value)
    trial = study.trials[0]
    trial.user_attrs["usd_per_million_tokens"] = 2.0
    copied.add_trial(trial)
    argv = ["export", "--study", "priced", "--storage", url, "--output", str(tmp_path / "c.json")]
    result = CliRunner().invoke(app, [*argv, "--tokens", "2e12", "--world-size", "8"])
    assert result.exit_code == 0, result.output
    line = next(x for x in result.stdout.splitlines() if x.startswith("time to train"))
    assert "11,574.07 days, about $4,000,000 at 250 tokens/s per device x 8 = 2,000 tokens/s" in line
    assert "measured on 4 rank(s); assumes linear scaling" in line
    prov = json.loads((tmp_path / "c.provenance.json").read_text())
    assert prov["time_to_train"]["usd"] == 4e6 and prov["figures"]["usd_per_million_tokens"] == 2.0


def add_best(url: str, name: str, ranks: int, tokens: float, device: str, cost: float | None = None) -> None:
    """A study with one COMPLETE trial (and a slower one), as `tuner search` records them."""
    study = optuna.create_study(study_name=name, storage=url, direction="maximize")
    study.set_user_attr("space", {"hardware": {"gpus_per_trial": ranks, "nodes_per_trial": ranks // 8}})
    study.set_user_attr("objectives", ["tokens_per_s"])
    study.set_user_attr("accelerator", "cuda")
    for value in (tokens / 2, tokens):
        attrs: dict[str, Any] = {"point": "mb4 z1", "tokens_per_s": value, "peak_mem_gb": 60.0, "device_name": device}
        if cost is not None:
            attrs["usd_per_million_tokens"] = cost * tokens / value
        study.add_trial(
            create_trial(
                state=TrialState.COMPLETE, value=value, params={"micro_batch_size": 4},
                distributions={"micro_batch_size": CategoricalDistribution([4])}, user_attrs=attrs,
            )
        )  # fmt: skip


def test_compare_lines_up_each_studys_best_by_cost_else_by_tokens_per_device(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 's.db'}"
    add_best(url, "h100-8", 8, 80_000.0, "NVIDIA H100 80GB HBM3", cost=0.30)  # 10,000 tokens/s per device
    add_best(url, "a100-16", 16, 96_000.0, "NVIDIA A100-SXM4-80GB", cost=0.25)  # 6,000 per device
    studies = [optuna.load_study(study_name=n, storage=url) for n in ("h100-8", "a100-16")]
    frame = compare_frame(studies)
    assert list(frame["study"]) == ["a100-16", "h100-8"]  # cheaper first
    assert list(frame["tokens_per_s_per_device"]) == [6000.0, 10_000.0]
    assert list(frame["usd_per_million_tokens"]) == [0.25, 0.30] and list(frame["ranks"]) == [16, 8]
    assert list(frame["trial"]) == [1, 1] and frame.loc[0, "device_name"] == "NVIDIA A100-SXM4-80GB"
    add_best(url, "cpu-2", 2, 100.0, "cpu")  # unpriced: the order falls back to tokens/s per device
    studies.append(optuna.load_study(study_name="cpu-2", storage=url))
    assert list(compare_frame(studies)["study"]) == ["h100-8", "a100-16", "cpu-2"]
    optuna.create_study(study_name="empty", storage=url)
    studies.append(optuna.load_study(study_name="empty", storage=url))
    frame = compare_frame(studies)
    assert frame.loc[3, "study"] == "empty" and frame["trial"].isna().tolist() == [False] * 3 + [True]

    runner = CliRunner()
    result = runner.invoke(app, ["results", "--storage", url, "--compare", "h100-8", "a100-16", "--format", "json"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    assert [r["study"] for r in rows] == ["a100-16", "h100-8"] and rows[1]["tokens_per_s_per_device"] == 10_000.0
    result = runner.invoke(app, ["results", "--storage", url, "--compare", "h100-8", "cpu-2"])
    assert result.exit_code == 0 and result.stdout.rstrip().endswith(
        "ordered by tokens_per_s_per_device (highest first)"
    )
    assert result.stdout.splitlines()[1].split()[:2] == ["h100-8", "1"]
    result = runner.invoke(app, ["results", "--storage", url, "--compare", "h100-8", "a100-40"])
    assert result.exit_code == 2 and "error: --compare: no study named 'a100-40'" in result.stderr


def test_a_priced_study_shows_its_cost_in_the_table_and_the_notes(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 's.db'}"
    add_best(url, "h100-8", 8, 80_000.0, "NVIDIA H100 80GB HBM3", cost=0.30)
    study = optuna.load_study(study_name="h100-8", storage=url)
    frame = results_frame(study)
    assert list(frame["usd_per_million_tokens"]) == [0.30, 0.60] and frame.loc[0, "device_name"].startswith("NVIDIA")
    header = table_text(frame).splitlines()[0].split()
    assert header[header.index("tokens_per_s") + 1] == "usd_per_million_tokens"
    assert "usd_per_million_tokens" not in table_text(frame.drop(columns=["usd_per_million_tokens"]))
    best = study.trials[1]
    assert "$0.3 per million tokens" in trial_note(best)
    assert "peak memory 60.00 GB, $0.3 per million tokens." in study_note("h100-8", url, best, "tokens_per_s", 8e4)
