"""Tensor and sequence parallelism end to end: `tuner search` (the real CLI, Ray Tune, SQLite) over tp x sp x
ZeRO x checkpointing on a tiny Llama with 2 CPU ranks, then the exported tp-2 config trained by the `deepspeed`
launcher with examples/train.py. The grid runs its first 3 points (tp 1, sp 2, tp 2 at ZeRO 1): the fewest
that show both kinds of parallelism measured; tests/integration/test_parallel_trials.py checks their losses.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import optuna
import pytest
from optuna.trial import TrialState

from tests.e2e.test_cli import train_exported, tuner, write_space
from tests.integration.test_parallel_trials import LLAMA

SPACE: dict[str, Any] = {
    "study": "parallel",
    "model": {"config": LLAMA},
    "data": {"sequence_length": 64},
    "training": {"global_batch_size": 4, "precision": "fp32"},
    "hardware": {"gpus_per_trial": 2},
    "space": {
        "micro_batch_size": [1],
        "zero_stage": [1, 2],
        "activation_checkpointing": [False, True],
        "tensor_parallel_size": [1, 2],
        "sequence_parallel_size": [1, 2],
    },
    "search": {"sampler": "grid", "max_trials": 3},
    "trial": {"warmup_steps": 1, "measure_steps": 2, "max_cv": 5.0, "timeout_s": 240},
}


def test_search_over_tp_and_sp_then_export_the_tp2_trial_and_train_it(tmp_path: Path, cpu_ops: None) -> None:
    done = tuner("search", str(write_space(tmp_path, SPACE)), cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "12 valid point(s); 4 dropped" in done.stdout
    assert "tensor_parallel_size 2 with sequence_parallel_size 2: DeepSpeed 0.19's AutoTP" in done.stdout

    study = optuna.load_study(study_name="parallel", storage=f"sqlite:///{tmp_path / 'tuner.sqlite3'}")
    trials = {(t.params.get("tensor_parallel_size", 1), t.params.get("sequence_parallel_size", 1)): t
              for t in study.get_trials()}  # fmt: skip
    assert set(trials) == {(1, 1), (1, 2), (2, 1)}
    for trial in trials.values():
        assert trial.state == TrialState.COMPLETE, trial.user_attrs.get("failure_reason")
        assert trial.user_attrs["tokens_per_s"] > 0 and trial.user_attrs["first_loss"] > 0
    first = trials[1, 1].user_attrs["first_loss"]  # same seed, same samples: the same first step
    assert trials[1, 2].user_attrs["first_loss"] == pytest.approx(first, rel=1e-5)
    assert trials[2, 1].user_attrs["first_loss"] == pytest.approx(first, rel=1e-5)
    assert trials[2, 1].user_attrs["ds_config"]["tensor_parallel"] == {"autotp_size": 2}
    assert trials[1, 2].user_attrs["ds_config"]["sequence_parallel_size"] == 2

    tp2 = trials[2, 1]
    out = tmp_path / "export" / "ds_config.json"
    exported = tuner("export", "--study", "parallel", "--trial", str(tp2.number), "--output", str(out), cwd=tmp_path)
    assert exported.returncode == 0, exported.stderr
    config = json.loads(out.read_text())
    assert config["tensor_parallel"] == {"autotp_size": 2}
    # AutoTP counts DeepSpeed's batch over all ranks, both of them seeing the same samples (one data-parallel rank)
    assert config["train_micro_batch_size_per_gpu"] * config["gradient_accumulation_steps"] == 4
    train_exported(out, tmp_path, sequence_length=64, steps=2)
