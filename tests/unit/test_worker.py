"""The worker's pure stopping rules: steady state, and early stopping of a clearly slower trial."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from tuner.trial.worker import clearly_slower, steady_state_done


def test_early_stop_needs_two_steps_all_over_the_limit() -> None:
    assert not clearly_slower([5.0], 1.0)  # one step can be an outlier
    assert clearly_slower([5.0, 4.0], 1.0)
    assert not clearly_slower([5.0, 0.9], 1.0)  # one step under the limit: it could still be fast
    assert not clearly_slower([5.0, 4.0, 3.0], None)  # no limit: the first trial, or early stopping off
    assert not clearly_slower([1.0, 1.0], 1.0)  # at the limit is not over it


def test_steady_state_waits_for_the_target_then_the_spread_or_the_cap() -> None:
    assert not steady_state_done([1.0, 1.0], target=3, cap=6, max_cv=0.05)
    assert steady_state_done([1.0, 1.0, 1.0], target=3, cap=6, max_cv=0.05)
    assert not steady_state_done([1.0, 2.0, 1.0], target=3, cap=6, max_cv=0.05)
    assert steady_state_done([1.0, 2.0] * 3, target=3, cap=6, max_cv=0.05)


def test_only_a_build_lock_older_than_any_real_build_is_cleared(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tuner.trial.launch import STALE_LOCK_S, _clear_stale_locks

    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    orphan = tmp_path / "py311_cpu" / "cpu_adam" / "lock"
    building = tmp_path / "py311_cpu" / "deepspeed_shm_comm" / "lock"
    for lock in (orphan, building):
        lock.parent.mkdir(parents=True)
        lock.touch()
    now = time.time()
    os.utime(orphan, (now - STALE_LOCK_S - 60, now - STALE_LOCK_S - 60))  # left by a process killed mid-build
    assert _clear_stale_locks("cpu_adam", now) == [orphan] and not orphan.exists()
    assert _clear_stale_locks("deepspeed_shm_comm", now) == [] and building.exists()  # a build in progress
