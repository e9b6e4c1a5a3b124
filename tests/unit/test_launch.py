"""Starting and ending a trial's processes: the ops built before trials, their build locks, the kill's wait."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tuner.dsconfig import jit_ops
from tuner.trial import ops
from tuner.trial.launch import _kill_group, group_members, wait_gone

ADAM = {"type": "AdamW", "params": {"lr": 1e-4}}
OFFLOAD = {"stage": 2, "offload_optimizer": {"device": "cpu"}}


@pytest.mark.parametrize(
    ("config", "accelerator", "expected"),
    [
        ({"optimizer": ADAM, "zero_optimization": {"stage": 1}}, "cuda", {"fused_adam"}),
        ({"optimizer": ADAM, "zero_optimization": OFFLOAD}, "cuda", {"cpu_adam"}),
        ({"optimizer": {"type": "Adam", "params": {"torch_adam": True}}}, "cuda", set()),
        ({"optimizer": {"type": "Lamb"}}, "cuda", {"fused_lamb"}),
        ({"optimizer": {"type": "Lion"}, "zero_optimization": OFFLOAD}, "cuda", {"cpu_lion"}),
        ({"optimizer": ADAM, "zero_optimization": {"stage": 3, "zero_quantized_weights": True}}, "cuda",
         {"fused_adam", "quantizer"}),
        ({"optimizer": {"type": "AdamW", "params": {"torch_adam": True}}}, "cpu", {"deepspeed_shm_comm"}),
        ({"optimizer": ADAM, "zero_optimization": OFFLOAD}, "cpu", {"deepspeed_shm_comm", "cpu_adam"}),
    ],
)  # fmt: skip
def test_the_ops_a_trial_loads_follow_the_engines_optimizer_choice(
    config: dict[str, Any], accelerator: str, expected: set[str]
) -> None:
    assert jit_ops(config, accelerator) == expected
    assert all(name in ops.BUILDERS for name in expected)


def test_ops_prebuilt_for_another_accelerator_count_as_not_built(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A DeepSpeed built without a GPU records accelerator_name='cpu'; on CUDA it JIT-compiles everything again."""
    info = tmp_path / "git_version_info_installed.py"
    monkeypatch.setattr(ops, "_deepspeed_dir", lambda: tmp_path)
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path / "extensions"))
    info.write_text("version='0.19.8'\ninstalled_ops={'fused_adam': 1, 'cpu_adam': True, 'quantizer': False}\n"
                    "accelerator_name='cuda'\ntorch_info={'version': '2.13'}\n")  # fmt: skip
    assert ops.prebuilt_ops("cuda") == {"fused_adam", "cpu_adam"}
    assert ops.ops_to_build("cuda", ["fused_adam", "cpu_adam", "quantizer"]) == ["quantizer"]
    info.write_text(info.read_text().replace("accelerator_name='cuda'", "accelerator_name='cpu'"))
    assert ops.prebuilt_ops("cuda") == set()
    assert ops.ops_to_build("cuda", ["fused_adam", "cpu_adam"]) == ["cpu_adam", "fused_adam"]


def _lock(root: Path, name: str) -> Path:
    lock = root / name / "lock"  # a TORCH_EXTENSIONS_DIR holds the ops' folders themselves
    lock.parent.mkdir(parents=True)
    lock.touch()
    return lock


def test_a_lock_no_live_process_holds_is_removed_at_once_and_a_held_one_is_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """torch's build holds its lock file open while it compiles; a build killed mid-way leaves it behind."""
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    orphan, building = _lock(tmp_path, "fused_adam"), _lock(tmp_path, "cpu_adam")
    holder = subprocess.Popen(
        [sys.executable, "-c", f"import os, time; fd = os.open({str(building)!r}, os.O_RDONLY); print(1, flush=True); "
         "time.sleep(60)"],
        stdout=subprocess.PIPE,
    )  # fmt: skip
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == b"1"
        assert ops.clear_orphaned_locks(["fused_adam", "cpu_adam"]) == [orphan]  # no waiting 15 minutes
        assert not orphan.exists() and building.exists()
    finally:
        holder.kill()
        holder.wait()
    assert ops.clear_orphaned_locks(["cpu_adam"]) == [building]  # its builder died: now it is an orphan


def test_the_wait_after_sigkill_lasts_until_no_process_of_the_group_is_left() -> None:
    answers = [[101, 102], [102], []]
    asked: list[int] = []

    def members(pgid: int) -> list[int]:
        asked.append(pgid)
        return answers.pop(0) if answers else []

    assert wait_gone(7, timeout_s=5.0, members=members) and asked == [7, 7, 7]
    assert not wait_gone(7, timeout_s=0.2, members=lambda pgid: [101])  # bounded: gives up, says so


def test_killing_a_trials_group_returns_once_every_process_of_it_is_gone() -> None:
    """A rank that ignores SIGTERM (stuck in a collective) in a child of the group's leader: SIGKILL, then wait."""
    script = (
        "import os, signal, subprocess, sys, time\n"
        "child = subprocess.Popen([sys.executable, '-c', 'import signal, time; "
        "signal.signal(signal.SIGTERM, signal.SIG_IGN); print(2, flush=True); time.sleep(60)'])\n"
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        "time.sleep(60)\n"
    )
    leader = subprocess.Popen([sys.executable, "-c", script], start_new_session=True)
    deadline = time.monotonic() + 20
    while len(group_members(leader.pid)) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(group_members(leader.pid)) == 2
    started = time.monotonic()
    assert _kill_group(leader) == 0  # nothing of the group left alive when it returns
    assert group_members(leader.pid) == [] and leader.returncode == -signal.SIGKILL
    assert time.monotonic() - started < 20
    with pytest.raises(ProcessLookupError):
        os.kill(leader.pid, 0)  # reaped
