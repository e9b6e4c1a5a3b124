"""Ranks forked by the warm server (tuner.trial.warm): figures as a fresh rank's, failures that poison nothing.

Real DeepSpeed trials, 2 ranks over gloo, through the same launcher as `tuner search`; TUNER_WARM_START=0
gives the torchrun start the same trial is compared against.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import TINY_GPT2
from tests.integration.test_trials import RANKS, processes_of, spec_for
from tuner.points import Point
from tuner.result import TrialResult
from tuner.trial.launch import run_trial
from tuner.trial.spec import TrialSpec

FORKED = "forked from a pre-imported process"
LARGE_GPT2 = {**TINY_GPT2, "n_embd": 256, "vocab_size": 32000}  # same architecture: the same sub-server


def run(spec: TrialSpec, folder: Path, timeout_s: float = 240) -> TrialResult:
    return run_trial(spec, folder, ranks=RANKS, accelerator="cpu", timeout_s=timeout_s)


def forked(folder: Path) -> bool:
    return FORKED in (folder / "trial.log").read_text(errors="replace")


def test_a_small_trial_after_a_large_one_reports_the_peak_of_a_fresh_rank(
    tmp_path: Path, cpu_ops: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    small = spec_for(Point(1, 0))
    monkeypatch.setenv("TUNER_WARM_START", "0")
    fresh = run(small, tmp_path / "fresh")
    assert fresh.ok, fresh.failure_reason
    assert not forked(tmp_path / "fresh")
    monkeypatch.setenv("TUNER_WARM_START", "1")
    large = run(spec_for(Point(4, 0), model_config=LARGE_GPT2), tmp_path / "large")
    after = run(small, tmp_path / "small")
    assert large.ok and after.ok, (large.failure_reason, after.failure_reason)
    assert forked(tmp_path / "large") and forked(tmp_path / "small")
    assert large.figures["peak_mem_gb"] > 1.2 * fresh.figures["peak_mem_gb"]  # the large one is large
    assert after.figures["peak_mem_gb"] == pytest.approx(fresh.figures["peak_mem_gb"], rel=0.05)
    assert after.figures["threads_per_rank"] == fresh.figures["threads_per_rank"]
    assert (fresh.rank_start, after.rank_start) == ("torchrun", "fork")  # each records how its ranks started
    assert after.user_attrs()["rank_start"] == "fork"


@pytest.mark.parametrize(
    ("bad", "category"),
    [
        ({"model_config": {**TINY_GPT2, "n_embd": 66}}, "crash"),  # 66 % 4 heads != 0: fails in build
        ({"device_memory_gb": 0.2}, "oom"),  # over the budget the watch enforces
    ],
    ids=["crash", "oom"],
)
def test_a_failed_forked_trial_keeps_its_category_and_the_next_one_runs(
    bad: dict[str, object], category: str, tmp_path: Path, cpu_ops: None
) -> None:
    failed = run(spec_for(Point(2, 0), **bad), tmp_path / "bad")
    assert forked(tmp_path / "bad")
    assert failed.failure_category == category, (failed.failure_category, failed.failure_reason)
    assert not processes_of(tmp_path / "bad")
    good = run(spec_for(Point(2, 0)), tmp_path / "good")
    assert good.ok, good.failure_reason
    assert forked(tmp_path / "good")


def test_a_forked_trial_past_its_timeout_is_killed_with_all_its_ranks(tmp_path: Path, cpu_ops: None) -> None:
    run(spec_for(Point(2, 0)), tmp_path / "first")  # the server is up: the next trial's ranks start at once
    result = run(spec_for(Point(2, 0), measure_steps=1000), tmp_path / "slow", timeout_s=8)
    assert forked(tmp_path / "slow")
    assert result.failure_category == "timeout"
    assert not processes_of(tmp_path / "slow")
