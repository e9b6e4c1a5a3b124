"""Real DeepSpeed trials on CPU: 2 ranks over gloo, every ZeRO stage, offload, checkpointing, failures."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psutil
import pytest

from tests.conftest import TINY_GPT2
from tuner.dsconfig import build_ds_config
from tuner.points import Point, grad_accum
from tuner.result import TrialResult
from tuner.trial.launch import run_trial

GLOBAL, SEQ, RANKS = 8, 64, 2


def spec_for(point: Point, base: dict[str, Any] | None = None, precision: str = "bf16", **over: Any) -> dict[str, Any]:
    config = build_ds_config(
        base or {}, point, global_batch=GLOBAL, ranks=RANKS, precision=precision, accelerator="cpu"
    )
    spec = {
        "model_config": TINY_GPT2,
        "sequence_length": SEQ,
        "micro_batch_size": point.micro_batch_size,
        "grad_accum": grad_accum(GLOBAL, point.micro_batch_size, RANKS),
        "activation_checkpointing": point.activation_checkpointing,
        "warmup_steps": 1,
        "measure_steps": 2,
        "seed": 0,
        "ds_config": config,
    }
    spec.update(over)
    return spec


def run(spec: dict[str, Any], tmp_path: Path, timeout_s: float = 240) -> TrialResult:
    return run_trial(
        spec, tmp_path / "trial", ranks=RANKS, accelerator="cpu", timeout_s=timeout_s,
        global_batch=GLOBAL, sequence_length=SEQ,
    )  # fmt: skip


def processes_of(trial_dir: Path) -> list[psutil.Process]:
    """Any process still running from this trial (torchrun or a rank), found by its spec path."""
    spec = str(trial_dir / "spec.json")
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        try:
            if spec in " ".join(proc.info["cmdline"] or []):
                found.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return found


@pytest.mark.parametrize(
    "point",
    [
        Point(2, 0),
        Point(1, 1, activation_checkpointing=True),
        Point(2, 2, offload_optimizer="cpu"),
        Point(4, 3, offload_optimizer="cpu", offload_param="cpu", activation_checkpointing=True),
    ],
    ids=lambda p: p.label().replace(" ", "_"),
)
def test_real_trial_measures_every_stage(point: Point, tmp_path: Path, cpu_ops: None) -> None:
    result = run(spec_for(point), tmp_path)
    assert result.ok, (result.failure_category, result.failure_reason, result.log_tail)
    f = result.figures
    assert f["measured_steps"] == 2
    assert f["step_time_s"] > 0
    assert f["tokens_per_s"] == pytest.approx(GLOBAL * SEQ / f["step_time_s"])
    assert f["samples_per_s"] == pytest.approx(GLOBAL / f["step_time_s"])
    assert 0.05 < f["peak_mem_gb"] < 8  # a rank's peak RSS: the interpreter, torch and a tiny model
    assert f["step_time_cv"] >= 0
    # Random weights over 512 tokens: the loss starts near ln(512) = 6.24.
    assert math.isfinite(f["final_loss"]) and 4.0 < f["final_loss"] < 8.0
    assert f["num_parameters"] > 50_000
    assert Path(result.log_path or "").is_file()
    assert not processes_of(tmp_path / "trial")


def test_config_deepspeed_rejects_is_invalid_config(tmp_path: Path, cpu_ops: None) -> None:
    result = run(spec_for(Point(2, 1), precision="fp16", measure_steps=1), tmp_path)  # no fp16 on CPU
    assert result.failure_category == "invalid_config"
    assert "fp16" in (result.failure_reason or "")
    assert "\n" not in (result.failure_reason or "")
    assert result.log_tail


def test_a_model_that_cannot_build_is_a_crash_with_its_reason(tmp_path: Path) -> None:
    spec = spec_for(Point(2, 0), model_config={**TINY_GPT2, "n_embd": 66, "n_head": 4})  # 66 % 4 != 0
    result = run(spec, tmp_path)
    assert result.failure_category == "crash"
    assert "(build)" in (result.failure_reason or "")


def test_a_trial_past_its_timeout_is_killed_with_all_its_ranks(tmp_path: Path) -> None:
    start = time.monotonic()
    result = run(spec_for(Point(2, 0), measure_steps=1000), tmp_path, timeout_s=8)
    assert time.monotonic() - start < 120  # killed at the timeout, not after its 1000 steps
    assert result.failure_category == "timeout"
    assert "timeout_s=8" in (result.failure_reason or "")
    assert not processes_of(tmp_path / "trial")


def test_ranks_do_not_outlive_a_killed_tuner(tmp_path: Path) -> None:
    """SIGKILL the process running the trial (as Ray does to a stopped trial's actor): no rank survives."""
    spec_path = tmp_path / "spec.json"
    spec_path.write_text(json.dumps(spec_for(Point(2, 0), measure_steps=1000)))
    code = (
        "import json, sys; from pathlib import Path; from tuner.trial.launch import run_trial; "
        f"run_trial(json.loads(Path({str(spec_path)!r}).read_text()), Path({str(tmp_path / 'trial')!r}), "
        f"ranks={RANKS}, accelerator='cpu', timeout_s=600, global_batch={GLOBAL}, sequence_length={SEQ})"
    )
    parent = subprocess.Popen([sys.executable, "-c", code])
    try:
        deadline = time.monotonic() + 120
        while len(processes_of(tmp_path / "trial")) < 3 and time.monotonic() < deadline:  # torchrun + 2 ranks
            time.sleep(0.5)
        assert len(processes_of(tmp_path / "trial")) >= 3, "the trial's ranks never started"
    finally:
        parent.kill()
        parent.wait()
    deadline = time.monotonic() + 60
    while processes_of(tmp_path / "trial") and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not processes_of(tmp_path / "trial")
