"""`tuner plan` on every shipped space and on bad input. (A real search on a tight budget, where what the memory
model rules out is PRUNED and --no-prune proves it runs out of memory: tests/e2e/test_review.py.)
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

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


LONG_CONTEXT = REPO / "search_spaces" / "llama-8b-32k-8gpu.yaml"


def test_the_long_context_space_plans_tp_and_sp_points(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Llama 3.1 8B at 32k on 8x80 GB: AutoTP and Ulysses never together, and which of them fit."""
    monkeypatch.chdir(tmp_path)
    done = CliRunner().invoke(app, ["plan", str(LONG_CONTEXT), "--json"])
    assert done.exit_code == 0, done.output
    plan = json.loads(done.stdout)
    assert plan["model"]["num_parameters"] == 8_030_261_248
    fits = {row["label"]: row["fits"] for row in plan["points"]}
    assert not any("tp" in label and "sp" in label for label in fits)
    assert fits["mb1 z3 ckpt sp8"] and fits["mb1 z2 ckpt tp2 tlog"]
    assert not fits["mb1 z3"] and not fits["mb2 z3 ckpt"]  # 32k without checkpointing; 64k tokens of logits
    summary = plan["summary"]
    assert (summary["invalid"], summary["to_run"]) == (864, 350)


def test_max_context_answers_each_family(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    done = CliRunner().invoke(app, ["plan", str(LONG_CONTEXT), "--max-context"])
    assert done.exit_code == 0, done.output
    assert "longest sequence_length predicted to fit at micro-batch 1" in done.stdout
    assert "336 families of 672 valid point(s)" in done.stdout
    answer = json.loads(CliRunner().invoke(app, ["plan", str(LONG_CONTEXT), "--max-context", "--json"]).stdout)
    rows = {row["label"]: row for row in answer["max_context"]}
    assert len(rows) == 336
    assert rows["z3 ckpt sp8"]["longest"] == 131072 and rows["z3 ckpt sp8"]["limited_by"].startswith("max_position")
    assert rows["z1"]["longest"] < 8192 < rows["z3 ckpt tlog"]["longest"]
    for row in rows.values():
        assert row["longest"] is None or row["longest"] <= row["longest_within_margin"] <= 131072
    assert not list(tmp_path.iterdir()), "plan writes nothing"


def test_plan_rows_per_length_when_lengths_are_listed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    space = {
        "model": {"config": {"model_type": "llama", "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
                             "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 256,
                             "max_position_embeddings": 1024}},
        "data": {"sequence_length": [128, 256, 512]},
        "training": {"global_batch_size": 8, "precision": "bf16"},
        "hardware": {"gpus_per_trial": 2, "accelerator": "cpu", "device_memory_gb": 2},
        "space": {"micro_batch_size": [1], "zero_stage": [2], "sequence_parallel_size": [1, 2]},
    }  # fmt: skip
    (tmp_path / "space.yaml").write_text(json.dumps(space))
    monkeypatch.chdir(tmp_path)
    done = CliRunner().invoke(app, ["plan", "space.yaml", "--json"])
    assert done.exit_code == 0, done.output
    rows = json.loads(done.stdout)["points"]
    assert [row["label"] for row in rows] == [f"mb1 z2{sp} s{s}" for sp in ("", " sp2") for s in (128, 256, 512)]
    activations = [row["parts_gb"]["activations"] for row in rows]
    assert activations[0] < activations[1] < activations[2] and activations[3] < activations[0] * 0.6
    text = CliRunner().invoke(app, ["plan", "space.yaml"]).stdout
    assert "sequence 128, 256, 512 (a row per length)" in text
    ctx = CliRunner().invoke(app, ["plan", "space.yaml", "--max-context"])
    assert ctx.exit_code == 0 and "max_position_embeddings 1024" in ctx.stdout, ctx.output


@pytest.mark.parametrize(
    ("edit", "key"),
    [
        ({"hardware": {"gpus_per_trial": 2}}, "hardware.device_memory_gb"),  # CPU: no budget to fit
        ({"model": None, "workload": {"script": "train.py"}}, "--max-context"),  # a script: no model to predict
    ],
)
def test_max_context_refuses_what_it_cannot_answer(
    edit: dict[str, Any], key: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import yaml

    raw = yaml.safe_load((REPO / "search_spaces" / "quickstart-cpu.yaml").read_text())
    raw.update(edit)
    raw = {k: v for k, v in raw.items() if v is not None}
    (tmp_path / "space.yaml").write_text(yaml.safe_dump(raw))
    (tmp_path / "train.py").write_text("import deepspeed\n")
    monkeypatch.chdir(tmp_path)
    done = CliRunner().invoke(app, ["plan", "space.yaml", "--max-context"])
    assert done.exit_code == 2, done.output
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {key}: "), done.stderr


def test_plan_what_if_on_another_device_and_ranks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The 8B 32k space on 16 A100 40GB instead of 8x80 GB: the budget, ranks and nodes replaced, fits recomputed."""
    monkeypatch.chdir(tmp_path)
    done = CliRunner().invoke(app, ["plan", str(LONG_CONTEXT), "--device", "a100-40gb", "--ranks", "16", "--json"])
    assert done.exit_code == 0, done.output
    plan = json.loads(done.stdout)
    assert plan["hardware"] == {
        "overridden": True, "device": "a100-40gb", "accelerator": "cuda", "device_memory_gb": 40.0,
        "host_memory_gb": 1024.0, "peak_tflops": 312.0, "ranks": 16, "nodes": 2, "ranks_per_node": 8,
        "assumption": "assumed: nodes of 8 devices, the ranks split evenly",
    }  # fmt: skip
    assert (plan["setup"]["ranks"], plan["setup"]["ranks_per_node"], plan["budget"]["device_gb"]) == (16, 8, 40.0)
    fits = {row["label"]: row["fits"] for row in plan["points"]}
    assert fits["mb1 z3 ckpt sp8"] and not fits["mb1 z1 ckpt tlog"]  # on 8x80 GB both fit
    assert len(plan["points"]) + plan["summary"]["invalid"] == 1536


def test_plan_header_names_the_hardware_it_assumed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    quickstart = str(REPO / "search_spaces" / "quickstart-cpu.yaml")
    own = CliRunner().invoke(app, ["plan", quickstart])
    assert own.exit_code == 0, own.output
    assert own.stdout.startswith("hardware from the space: cpu devices")
    rented = CliRunner().invoke(app, ["plan", quickstart, "--device", "h200"])
    assert rented.exit_code == 0, rented.output
    first = rented.stdout.splitlines()[0]
    assert first.startswith("hardware what-if (--device/--ranks): h200 (141 GB as sold, 140.4 GB of 2^30 bytes")
    assert "budget 140.401 GB less 1.00 GB of CUDA context" in rented.stdout
    longest = CliRunner().invoke(app, ["plan", quickstart, "--max-context", "--device", "l4", "--ranks", "4"])
    assert longest.exit_code == 0, longest.output
    assert longest.stdout.startswith("hardware what-if (--device/--ranks): l4 (24 GB as sold, 22.5 GB")
    assert "4 rank(s) on 1 node(s) of 4" in longest.stdout and "in 22.4941 GB less 1.00 GB" in longest.stdout
