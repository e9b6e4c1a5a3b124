"""Real DeepSpeed trials on CPU: 2 ranks over gloo, every ZeRO stage, offload, checkpointing, failures.

Every test that runs ranks asks for `cpu_ops` first: a rank killed while it JIT-compiles an op would leave
torch's build lock behind.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import psutil
import pytest

from tests.conftest import TINY_GPT2
from tuner.points import Point
from tuner.result import TrialResult
from tuner.search import ds_configs_for, trial_spec
from tuner.space import parse_space
from tuner.trial.launch import run_trial

GLOBAL, SEQ, RANKS = 8, 64, 2


def spec_for(
    point: Point, *, precision: str = "bf16", hardware: dict[str, Any] | None = None, **over: Any
) -> dict[str, Any]:
    """The spec `tuner search` would send for `point`, with `over` replacing top-level keys."""
    space = parse_space(
        {
            "model": {"config": TINY_GPT2},
            "data": {"sequence_length": SEQ},
            "training": {"global_batch_size": GLOBAL, "precision": precision},
            "hardware": {"gpus_per_trial": RANKS, **(hardware or {})},
            "space": {"micro_batch_size": [point.micro_batch_size]},
            "trial": {"warmup_steps": 1, "measure_steps": 2, "max_cv": 0.5},
        },
        default_study="integration",
    )
    spec = trial_spec(space, point, ds_configs_for(space, (point,), "cpu")[point])
    return spec.replace(**over)


def run(spec: dict[str, Any], tmp_path: Path, timeout_s: float = 240) -> TrialResult:
    return run_trial(spec, tmp_path / "trial", ranks=RANKS, accelerator="cpu", timeout_s=timeout_s)


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


def is_rank(cmdline: list[str]) -> bool:
    """A rank, not its launcher: torchrun, or the leader of ranks forked by the warm server (tuner.trial.warm)."""
    return not any("torch.distributed.run" in part or "warm_leader" in part for part in cmdline)


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
    assert 2 <= f["measured_steps"] <= 15  # 2, or up to the cap of 15 while the median's interval was wide
    assert f["step_time_s"] > 0
    assert f["tokens_per_s"] == pytest.approx(GLOBAL * SEQ / f["step_time_s"])
    assert f["samples_per_s"] == pytest.approx(GLOBAL / f["step_time_s"])
    assert 0.05 < f["peak_mem_gb"] < 8  # a rank's peak RSS: the interpreter, torch and a tiny model
    assert f["step_time_cv"] >= 0
    # Random weights over 512 tokens: the loss starts near ln(512) = 6.24.
    assert math.isfinite(f["final_loss"]) and 4.0 < f["final_loss"] < 8.0
    assert f["num_parameters"] > 50_000
    assert f["tokens_per_s_per_device"] == pytest.approx(f["tokens_per_s"] / RANKS)
    assert f["tflops_per_device"] == pytest.approx(f["tokens_per_s_per_device"] * f["model_flops_per_token"] / 1e12)
    recomputes = f["hardware_tflops_per_device"] > f["tflops_per_device"] * 1.0001
    assert recomputes == point.activation_checkpointing
    assert "mfu" not in f  # no peak is known for a CPU unless the user gives one
    assert f["host_mem_gb"] >= f["peak_mem_gb"] > 0
    assert 0 < f["measure_s"] < result.duration_s
    assert f["fixed_overhead_s"] + f["measure_s"] == pytest.approx(result.duration_s)
    assert 0 < f["overhead_share"] < 1
    assert min(f["startup_s"], f["build_s"], f["initialize_s"], f["warmup_s"]) > 0
    assert Path(result.log_path or "").is_file()
    assert not processes_of(tmp_path / "trial")


LORA = {"method": "lora", "r": 4, "alpha": 8, "dropout": 0.0, "target_modules": ["c_attn"]}


@pytest.mark.parametrize(
    "point",
    [Point(2, 0), Point(2, 2), Point(2, 3, activation_checkpointing=True)],
    ids=lambda p: p.label().replace(" ", "_"),
)
def test_lora_trial_trains_only_the_adapters(point: Point, tmp_path: Path, cpu_ops: None) -> None:
    """model.peft at ZeRO 0, 2 and 3 (the base partitioned by zero.Init, the adapters by deepspeed.initialize)."""
    from tuner.workload.hf_causal_lm import build_model, model_facts

    options = {"peft": LORA}
    result = run(spec_for(point, precision="fp32", model_options=options), tmp_path)
    assert result.ok, (result.failure_category, result.failure_reason, result.log_tail)
    f = result.figures
    model = build_model(TINY_GPT2, seed=0, options=options)
    trainable, total = model.get_nb_trainable_parameters()  # peft's own count
    assert f["trainable_parameters"] == trainable == 2 * 4 * (64 + 3 * 64)  # 2 layers of r x (in + out)
    assert f["num_parameters"] == total
    assert math.isfinite(f["final_loss"]) and 4.0 < f["final_loss"] < 8.0
    facts = model_facts(model)  # no weight gradients for the frozen base: 4N + 2N_trainable + 12Lhs
    assert f["model_flops_per_token"] == 4 * facts["matmul_parameters"] + 2 * trainable + 12 * 2 * 64 * SEQ
    assert not processes_of(tmp_path / "trial")


def test_config_deepspeed_rejects_is_invalid_config(tmp_path: Path, cpu_ops: None) -> None:
    spec = spec_for(Point(2, 1), precision="fp32", measure_steps=1)
    spec.ds_config["train_batch_size"] = GLOBAL + 1  # not micro x accumulation x ranks: DeepSpeed refuses it
    result = run(spec, tmp_path)
    assert result.failure_category == "invalid_config"
    assert "train_batch_size" in (result.failure_reason or "")
    assert "\n" not in (result.failure_reason or "")
    assert result.log_tail.startswith("Traceback")  # the failing rank's own traceback leads the tail
    assert "--- trial log ---" in result.log_tail
    assert not processes_of(tmp_path / "trial")


def test_a_model_that_cannot_build_is_a_crash_with_its_reason(tmp_path: Path, cpu_ops: None) -> None:
    spec = spec_for(Point(2, 0), model_config={**TINY_GPT2, "n_embd": 66, "n_head": 4})  # 66 % 4 != 0
    result = run(spec, tmp_path)
    assert result.failure_category == "crash"
    assert "(build)" in (result.failure_reason or "")
    assert not processes_of(tmp_path / "trial")


def test_a_trial_past_its_timeout_is_killed_with_all_its_ranks(tmp_path: Path, cpu_ops: None) -> None:
    start = time.monotonic()
    result = run(spec_for(Point(2, 0), measure_steps=1000), tmp_path, timeout_s=8)
    assert time.monotonic() - start < 120  # killed at the timeout, not after its 1000 steps
    assert result.failure_category == "timeout"
    assert "timeout_s=8" in (result.failure_reason or "")
    assert not processes_of(tmp_path / "trial")


def test_ranks_do_not_outlive_a_killed_tuner(tmp_path: Path, cpu_ops: None) -> None:
    """SIGKILL the process running the trial (as Ray does to a stopped trial's actor): no rank survives."""
    spec_path = tmp_path / "spec.json"
    spec_path.write_text(spec_for(Point(2, 0), measure_steps=1000).to_json())
    code = (
        "from pathlib import Path; from tuner.trial.launch import run_trial; from tuner.trial.spec import TrialSpec; "
        f"run_trial(TrialSpec.from_json(Path({str(spec_path)!r}).read_text()), Path({str(tmp_path / 'trial')!r}), "
        f"ranks={RANKS}, accelerator='cpu', timeout_s=600)"
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


def test_a_noisy_trial_measures_up_to_its_cap_and_a_given_peak_gives_mfu(tmp_path: Path, cpu_ops: None) -> None:
    spec = spec_for(Point(4, 0), hardware={"peak_tflops": 0.5}, max_cv=1e-9, max_measure_steps=4)
    result = run(spec, tmp_path)
    assert result.ok, result.failure_reason
    f = result.figures
    assert f["measured_steps"] == 4 and f["noisy"] == 1.0  # a spread of 1e-9 is never reached
    assert f["mfu"] == pytest.approx(f["tflops_per_device"] / 0.5)
    assert f["peak_tflops"] == 0.5


@pytest.mark.parametrize(
    "knobs",
    [
        {"overlap_comm": False, "contiguous_gradients": False, "reduce_bucket_size": 1_000_000},
        {"stage3_prefetch_bucket_size": 1_000_000, "stage3_param_persistence_threshold": 0},
    ],
    ids=["stage2", "stage3"],
)
def test_communication_knobs_reach_deepspeed(knobs: dict[str, Any], tmp_path: Path, cpu_ops: None) -> None:
    from tuner.export import check_with_deepspeed

    point = Point(2, 3 if "stage3_prefetch_bucket_size" in knobs else 2)
    for knob, value in knobs.items():
        point = point.with_knob(knob, value)
    spec = spec_for(point)  # the point's knobs written by their declarations (tuner.knobs)
    assert spec.ds_config["zero_optimization"].items() >= knobs.items()
    result = run(spec, tmp_path)
    assert result.ok, f"{result.failure_category}: {result.failure_reason}"
    # DeepSpeed's ZeRO section forbids unknown keys, so acceptance means it read these names.
    misspelled = json.loads(json.dumps(spec.ds_config))
    misspelled["zero_optimization"]["overlap_com"] = False
    with pytest.raises(Exception, match="overlap_com"):
        check_with_deepspeed(misspelled, RANKS)


def test_a_clearly_slower_trial_stops_after_two_steps_and_still_reports(tmp_path: Path, cpu_ops: None) -> None:
    spec = spec_for(Point(4, 0), measure_steps=5, stop_over_step_s=1e-6)  # every step is over 1 microsecond
    result = run(spec, tmp_path)
    assert result.ok, result.failure_reason
    f = result.figures
    assert f["stopped_early"] == 1.0 and f["measured_steps"] == 2 and f["noisy"] == 0.0
    assert f["tokens_per_s"] > 0 and f["peak_mem_gb"] > 0


def test_a_cpu_rank_over_its_memory_budget_is_oom(tmp_path: Path, cpu_ops: None) -> None:
    result = run(spec_for(Point(2, 0), hardware={"device_memory_gb": 0.2}), tmp_path)
    assert result.failure_category == "oom"
    assert "device_memory_gb=0.2" in (result.failure_reason or "")
    assert not processes_of(tmp_path / "trial")


def test_a_rank_killed_mid_trial_is_a_crash(tmp_path: Path, cpu_ops: None) -> None:
    """SIGKILL one rank (as the kernel's OOM killer would): the trial fails as crash, nothing is left."""
    outcome: list[TrialResult] = []
    runner = threading.Thread(target=lambda: outcome.append(run(spec_for(Point(2, 0), measure_steps=1000), tmp_path)))
    runner.start()
    deadline = time.monotonic() + 120
    ranks: list[psutil.Process] = []
    try:
        while len(ranks) < RANKS and time.monotonic() < deadline:
            ranks = [p for p in processes_of(tmp_path / "trial") if is_rank(p.cmdline())]
            time.sleep(0.5)
        assert len(ranks) == RANKS, "the ranks never started"
        time.sleep(3)
    finally:  # kill one rank; after a failed start, everything the trial started
        for proc in ranks[-1:] if len(ranks) == RANKS else processes_of(tmp_path / "trial"):
            proc.kill()
    runner.join(timeout=120)
    assert outcome and outcome[0].failure_category == "crash", outcome
    assert "SIGKILL" in (outcome[0].failure_reason or "")
    assert not processes_of(tmp_path / "trial")


@pytest.mark.parametrize(
    ("knob", "value", "category"),
    [
        ("zero_quantized_weights", True, "invalid_config"),  # DeepSpeed's quantizer is a CUDA kernel
        ("zero_quantized_gradients", True, "invalid_config"),
        ("zero_hpz_partition_size", 2, None),  # ran on CPU: a secondary partition over both ranks
    ],
)
def test_zero_plus_plus_on_cpu_runs_hpz_and_names_the_knob_deepspeed_has_no_cpu_kernel_for(
    knob: str, value: Any, category: str | None, tmp_path: Path, cpu_ops: None
) -> None:
    """ZeRO++ on 2 CPU ranks (gloo): hpZ completes; qwZ and qgZ end invalid_config with a reason naming the
    knob (DeepSpeed itself says only "This op had not been implemented on CPU backend")."""
    point = Point(2, 3).with_knob(knob, value)
    spec = spec_for(point, precision="fp32")
    assert spec.ds_config["zero_optimization"][knob] == value
    result = run(spec, tmp_path)
    assert result.failure_category == category, (result.failure_reason, result.log_tail[-2000:])
    if category:
        assert result.failure_reason is not None and f"{knob}=true" in result.failure_reason
        assert "no kernel" in result.failure_reason
    else:
        assert result.figures["tokens_per_s"] > 0
    assert not processes_of(tmp_path / "trial")
