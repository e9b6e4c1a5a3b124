"""`tuner plan` on every shipped space and on bad input. (A real search on a tight budget, where what the memory
model rules out is PRUNED and --no-prune proves it runs out of memory: tests/e2e/test_review.py.)
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tests.conftest import REPO
from tests.e2e.test_cli import tuner
from tuner.cli import app

SHIPPED = sorted((REPO / "search_spaces").glob("*.yaml"))


@pytest.mark.parametrize("space", SHIPPED, ids=[p.stem for p in SHIPPED])
def test_plan_answers_for_every_shipped_space(space: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    done = CliRunner().invoke(app, ["plan", str(space), "--json"])  # in-process: 7 spaces, no 6 s start-up each
    assert done.exit_code == 0, done.output
    plan = json.loads(done.stdout)
    summary = plan["summary"]
    if "script" in plan:  # a script that describes no model: its memory is learned from its trials
        assert "learned from its trials" in plan["note"] and len(plan["points"]) == summary["points"] > 0
        assert not list(tmp_path.iterdir()), "plan writes nothing"
        return
    assert summary["points"] == summary["invalid"] + summary["not_fitting"] + summary["to_run"]
    assert len(plan["points"]) == summary["points"] - summary["invalid"] > 0
    for row in plan["points"]:
        parts = row["parts_gb"]
        assert row["raw_predicted_gb"] >= sum(v for k, v in parts.items() if k != "runtime")
        assert row["model_flops_per_token"] > 0
        assert (row["fits"] is False) == bool(row["reason"] and "over" in row["reason"])
    assert plan["model"]["num_parameters"] > 0
    assert not list(tmp_path.iterdir()), "plan writes nothing"


def test_plan_of_70b_on_8_gpus_rules_out_what_cannot_fit(tmp_path: Path) -> None:
    done = tuner("plan", str(REPO / "search_spaces" / "llama-70b-8gpu.yaml"), cwd=tmp_path, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "70,553.7M parameters" in done.stdout
    assert "predicted not to fit" in done.stdout and "over the budget of 80 GB" in done.stdout


def test_plan_rejects_bad_input_with_exit_2(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    missing = CliRunner().invoke(app, ["plan", str(tmp_path / "nope.yaml")])
    assert missing.exit_code == 2 and "no such space file" in missing.stderr
    bad = CliRunner().invoke(app, ["plan", str(REPO / "search_spaces" / "quickstart-cpu.yaml"), "--accelerator", "tpu"])
    assert bad.exit_code == 2 and "--accelerator" in bad.stderr
