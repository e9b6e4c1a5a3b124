"""`tuner check` through the console script: a tiny real search and export, then the exported config re-run as
one real DeepSpeed trial and judged against its provenance (pass, slower, out of memory, bad input)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import optuna
import pytest
from optuna.trial import TrialState

from tests.conftest import TINY_GPT2
from tests.e2e.test_cli import tuner, write_space
from tuner.ranking import best, rank_study
from tuner.results import results_frame

SPACE: dict[str, Any] = {
    "study": "gate",
    "model": {"config": TINY_GPT2},
    "data": {"sequence_length": 64},
    "training": {
        "global_batch_size": 4,
        "precision": "fp32",
        "base_config": {"optimizer": {"type": "AdamW", "params": {"lr": 0.0002}}},
    },
    "hardware": {"gpus_per_trial": 1},
    "space": {"micro_batch_size": [2], "zero_stage": [0]},
    "search": {"sampler": "grid"},
    "trial": {"warmup_steps": 1, "measure_steps": 3, "timeout_s": 240},
}


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The folder of a one-trial search whose winner is exported to out/ds_config.json (+ its provenance)."""
    folder = tmp_path_factory.mktemp("gate")
    done = tuner("search", str(write_space(folder, SPACE)), cwd=folder)
    assert done.returncode == 0, done.stdout + done.stderr
    done = tuner("export", "--study", "gate", "--output", "out/ds_config.json", cwd=folder)
    assert done.returncode == 0, done.stdout + done.stderr
    return folder


def test_a_recheck_passes_and_is_recorded_as_a_check_of_its_trial(exported: Path) -> None:
    # CPU timing on a shared machine moves by tens of percent between runs: a generous slowdown here; the
    # gate's arithmetic is the unit tests', and the next test fails it for real.
    done = tuner(
        "check", "out/ds_config.json", "--max-slowdown", "0.9", "--max-memory-growth", "0.5", "--record",
        "--format", "json", cwd=exported,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads(done.stdout)
    assert report["verdict"] == "pass" and report["exit_code"] == 0 and report["reasons"] == []
    tokens = report["figures"]["tokens_per_s"]
    assert tokens["measured"] > 0 and tokens["change"] == pytest.approx(tokens["measured"] / tokens["recorded"] - 1)
    assert report["figures"]["peak_mem_gb"]["measured"] > 0
    assert report["versions"]["now"]["device"] == "cpu" and report["versions"]["changed"] == []
    study = optuna.load_study(study_name="gate", storage=f"sqlite:///{exported / 'tuner.sqlite3'}")
    check = study.trials[report["recorded_as"]]
    assert check.state == TrialState.COMPLETE and check.user_attrs["check_of"] == report["trial"] == 0
    assert check.params == study.trials[0].params and check.value == tokens["measured"]
    top = best(rank_study(study))
    assert top is not None and top.number == 0  # the check is history, never the study's best
    frame = results_frame(study, checks=True)
    assert list(frame["check_of"].dropna()) == [0] and frame["rank"].isna().iloc[-1]


def test_a_recorded_throughput_out_of_reach_fails_naming_tokens_per_s(exported: Path) -> None:
    prov = json.loads((exported / "out" / "ds_config.provenance.json").read_text())
    # Ten times rather than twice: a run on an idle moment can be twice as fast as the search's on a busy one.
    prov["figures"]["tokens_per_s"] *= 10
    (exported / "fast.provenance.json").write_text(json.dumps(prov))
    done = tuner("check", "out/ds_config.json", "--provenance", "fast.provenance.json", cwd=exported)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "FAIL: tokens_per_s fell" in done.stdout and "--max-slowdown 5%" in done.stdout
    lines = done.stdout.splitlines()
    assert lines[0].startswith("check of trial 0 of study gate") and lines[2].startswith("tokens_per_s")


def test_a_memory_budget_too_small_fails_with_oom(exported: Path) -> None:
    done = tuner("check", "out/ds_config.json", "--device-memory-gb", "0.05", cwd=exported)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "FAIL: the run failed: oom:" in done.stdout


def test_bad_input_exits_2_on_one_line_and_writes_nothing(exported: Path, tmp_path: Path) -> None:
    config = (exported / "out" / "ds_config.json").read_text()
    prov = json.loads((exported / "out" / "ds_config.provenance.json").read_text())
    (tmp_path / "lonely.json").write_text(config)  # no provenance beside it
    prov["space"]["model"]["config"]["model_type"] = "no-such-model"
    (tmp_path / "broken.provenance.json").write_text(json.dumps(prov))
    cases = {
        ("lonely.json",): "--provenance: no provenance file",
        ("lonely.json", "--provenance", "broken.provenance.json", "--record"): "its space cannot be rebuilt",
    }  # every other bad input of tuner check: tests/unit/test_bad_input.py, in process
    before = sorted(p.name for p in tmp_path.iterdir())
    for args, message in cases.items():
        done = tuner("check", *args, cwd=tmp_path)
        assert done.returncode == 2, (args, done.stdout, done.stderr)
        assert done.stderr.startswith("error: ") and message in done.stderr, done.stderr
        assert done.stderr.count("\n") == 1 and done.stdout == ""
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no run folder, no store
