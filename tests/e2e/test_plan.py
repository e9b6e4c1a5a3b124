"""`tuner plan` on every shipped space, and a real search on a tight memory budget: what the memory model
rules out is recorded as PRUNED and never launched; with --no-prune the same point runs out of memory.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import optuna
import pytest
from optuna.trial import TrialState

from tests.conftest import REPO
from tests.e2e.test_cli import tuner, write_space

SHIPPED = sorted((REPO / "search_spaces").glob("*.yaml"))


@pytest.mark.parametrize("space", SHIPPED, ids=[p.stem for p in SHIPPED])
def test_plan_answers_for_every_shipped_space(space: Path, tmp_path: Path) -> None:
    done = tuner("plan", str(space), "--json", cwd=tmp_path, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    plan = json.loads(done.stdout)
    summary = plan["summary"]
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


def test_plan_rejects_bad_input_with_exit_2(tmp_path: Path) -> None:
    missing = tuner("plan", str(tmp_path / "nope.yaml"), cwd=tmp_path, timeout=120)
    assert missing.returncode == 2 and "no such space file" in missing.stderr
    bad = tuner("plan", str(REPO / "search_spaces" / "quickstart-cpu.yaml"), "--accelerator", "tpu", cwd=tmp_path)
    assert bad.returncode == 2 and "--accelerator" in bad.stderr


# Logits dominate this model's memory (vocab 32k, 256 tokens): micro-batch 1 fits 0.75 GB, micro-batch 8 does not.
TIGHT: dict[str, Any] = {
    "study": "tight",
    "model": {"config": {"model_type": "gpt2", "n_layer": 1, "n_embd": 64, "n_head": 2, "n_positions": 256,
                         "vocab_size": 32768}},
    "data": {"sequence_length": 256},
    "training": {"global_batch_size": 16, "precision": "fp32"},
    "hardware": {"gpus_per_trial": 2, "device_memory_gb": 0.75},
    "space": {"micro_batch_size": [1, 8], "zero_stage": [0]},
    "trial": {"warmup_steps": 1, "measure_steps": 1, "timeout_s": 240},
}  # fmt: skip


def test_tight_budget_prunes_what_cannot_fit_and_no_prune_proves_it(tmp_path: Path, cpu_ops: None) -> None:
    space = write_space(tmp_path, TIGHT)
    plan = json.loads(tuner("plan", str(space), "--json", cwd=tmp_path).stdout)
    verdict = {row["label"]: row["fits"] for row in plan["points"]}
    assert verdict == {"mb1 z0": True, "mb8 z0": False}

    done = tuner("search", str(space), cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "pruned trial" in done.stdout and "mb8 z0" in done.stdout
    url = f"sqlite:///{tmp_path / 'tuner.sqlite3'}"
    study = optuna.load_study(study_name="tight", storage=url)
    by_state = {t.user_attrs["point"]: t for t in study.trials}
    pruned = by_state["mb8 z0"]
    assert pruned.state == TrialState.PRUNED and "log_path" not in pruned.user_attrs  # never launched
    assert pruned.user_attrs["predicted_mem_gb"] > 0.75 and "over the budget" in pruned.user_attrs["prune_reason"]
    ran = by_state["mb1 z0"]
    assert ran.state == TrialState.COMPLETE
    assert ran.user_attrs["peak_mem_gb"] <= 0.75 and ran.user_attrs["predicted_mem_gb"] > 0

    forced = tuner("search", str(space), "--no-prune", cwd=tmp_path)
    assert forced.returncode == 0, forced.stdout + forced.stderr  # the earlier complete trial is still the best
    launched = [t for t in study.get_trials() if t.user_attrs["point"] == "mb8 z0" and t.state == TrialState.FAIL]
    assert len(launched) == 1 and launched[0].user_attrs["failure_category"] == "oom"
