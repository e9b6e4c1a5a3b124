"""A LoRA space (model.peft) through the CLI: `tuner plan`, `tuner search` on CPU (the console script, Ray, real
trials at ZeRO 0 and 3), `tuner results`, and the `--format hf` export trained with the adapters by Hugging Face
Trainer (examples/train_hf.py). plan, results and export run in process: their start-up is not what is tested."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import optuna
import pytest
from optuna.trial import TrialState
from typer.testing import CliRunner

from tests.e2e.test_cli import tuner, write_space
from tests.e2e.test_review import launch
from tuner.cli import app

TINY_LLAMA: dict[str, Any] = {
    "model_type": "llama", "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
    "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 512,
}  # fmt: skip
PEFT = {"method": "lora", "r": 16, "alpha": 32, "dropout": 0.0, "target_modules": ["q_proj", "v_proj"]}
SPACE: dict[str, Any] = {
    "study": "lora",
    "model": {"config": TINY_LLAMA, "peft": PEFT, "attn_implementation": "eager"},
    "data": {"sequence_length": 64},
    "training": {"global_batch_size": 8, "precision": "fp32",
                 "base_config": {"optimizer": {"type": "AdamW", "params": {"lr": 0.001}}}},
    "hardware": {"gpus_per_trial": 1},  # one rank: trials start faster (tests/integration runs 2 ranks at ZeRO 0-3)
    "space": {"micro_batch_size": [4], "zero_stage": [0, 3]},
    "search": {"sampler": "grid"},
    "trial": {"warmup_steps": 1, "measure_steps": 2, "max_measure_steps": 2, "timeout_s": 240},
}  # fmt: skip
TRAINABLE = 2 * (16 * (64 + 64) + 16 * (64 + 32))  # q_proj 64 -> 64, v_proj 64 -> 32 (2 kv heads), 2 layers


def cli(*args: str) -> Any:
    done = CliRunner().invoke(app, list(args))
    assert done.exit_code == 0, done.output
    return done


def test_lora_space_plans_searches_exports_and_trains(
    tmp_path: Path, cpu_ops: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    space = write_space(tmp_path, SPACE)
    assert "eager attention; LoRA r=16 on q_proj, v_proj: 0.007M trainable" in cli("plan", str(space)).stdout
    planned = json.loads(cli("plan", str(space), "--json").stdout)
    assert planned["model"]["adapters"]["trainable_parameters"] == TRAINABLE
    for row in planned["points"]:  # Adam's 12 bytes per trainable parameter, not per parameter
        assert row["parts_gb"]["optimizer_states"] * 2**30 <= 12 * TRAINABLE

    done = tuner("search", str(space), cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    study = optuna.load_study(study_name="lora", storage=f"sqlite:///{tmp_path / 'tuner.sqlite3'}")
    trials = study.get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 2, [t.user_attrs.get("failure_reason") for t in trials]
    for t in trials:
        a = t.user_attrs
        assert a["trainable_parameters"] == TRAINABLE and a["num_parameters"] > 10 * TRAINABLE
        assert math.isfinite(a["final_loss"]) and a["predicted_mem_gb"] > 0
    frame = json.loads(cli("results", "--study", "lora", "--format", "json").stdout)
    assert {row["trainable_parameters"] for row in frame} == {TRAINABLE}

    out = tmp_path / "hf" / "ds_config.json"
    export = cli("export", "--study", "lora", "--output", str(out), "--format", "hf")
    assert "get_peft_model(model, LoraConfig(" in export.stdout and "    lora_alpha=32," in export.stdout
    assert "attn_implementation='eager'" in export.stdout
    provenance = out.with_name("ds_config.provenance.json")
    prov = json.loads(provenance.read_text())
    assert prov["peft"] == PEFT and prov["attn_implementation"] == "eager"
    assert prov["lora_config"]["r"] == 16 and prov["figures"]["trainable_parameters"] == TRAINABLE
    args = out.with_name("ds_config.training_args.json")
    train = launch("train_hf.py", "--training-args", str(args), "--model-config", str(provenance),
                   "--sequence-length", "64", "--steps", "2", cwd=tmp_path)  # fmt: skip
    assert train.returncode == 0, train.stdout[-3000:] + train.stderr[-3000:]
    assert f"LoRA: {TRAINABLE} of " in train.stdout and "trained 2 steps with Trainer" in train.stdout
