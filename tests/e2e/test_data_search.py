"""A search on the user's own text through the console script: a JSONL file and a tokenizer built here, 2 points."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import optuna
import pytest
import yaml
from optuna.trial import TrialState

from tests.conftest import TINY_GPT2, WORDS, write_tokenizer
from tests.e2e.test_cli import tuner


def test_a_search_trains_every_point_on_the_same_batch_of_local_text(tmp_path: Path, cpu_ops: None) -> None:
    write_tokenizer(tmp_path / "tokenizer")
    pick = random.Random(0)
    docs = [" ".join(pick.choices(WORDS, k=pick.randint(5, 30))) for _ in range(60)]  # about 1100 tokens
    (tmp_path / "corpus").mkdir()
    (tmp_path / "corpus" / "docs.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    space = {
        "study": "e2e-data",
        "model": {"config": TINY_GPT2},
        "data": {"sequence_length": 64, "source": "corpus/docs.jsonl", "tokenizer": "tokenizer"},  # beside the file
        "training": {"global_batch_size": 8, "precision": "fp32"},
        "hardware": {"gpus_per_trial": 2},
        "space": {"micro_batch_size": [2, 4], "zero_stage": [0]},
        "search": {"sampler": "grid"},
        "trial": {"warmup_steps": 1, "measure_steps": 2, "max_measure_steps": 2, "timeout_s": 240},
    }
    (tmp_path / "space.yaml").write_text(yaml.safe_dump(space))

    done = tuner("search", "space.yaml", cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    study = optuna.load_study(study_name="e2e-data", storage=f"sqlite:///{tmp_path / 'tuner.sqlite3'}")
    trials = study.get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 2, [t.user_attrs.get("failure_reason") for t in trials]
    source = str(tmp_path / "corpus" / "docs.jsonl")
    recorded = study.user_attrs["space"]["data"]
    assert recorded["source"] == source and recorded["tokenizer"] == str(tmp_path / "tokenizer")
    assert recorded["field"] == "text" and recorded["packing"] is True
    losses = [t.user_attrs["final_loss"] for t in trials]
    for trial in trials:
        assert trial.user_attrs["data_source"] == source and math.isfinite(trial.user_attrs["final_loss"])
    # micro-batch 2 x 2 accumulation steps and 4 x 1 train on the same global batch: the same loss, up to rounding
    assert losses[0] == pytest.approx(losses[1], rel=1e-3), losses
