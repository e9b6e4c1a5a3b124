"""A search's own Ray, started for real: no autoscaler monitor, log monitor or dashboard head, and one idle worker
started for the first trial (Ray's own prestarted workers are off)."""

from __future__ import annotations

import time

import psutil
import ray

from tuner.ray_start import connect_ray
from tuner.trial.trainable import end_prewarm


def _ray_processes() -> list[str]:
    names = []
    for proc in psutil.Process().children(recursive=True):
        try:
            names.append(" ".join(proc.cmdline()))
        except psutil.Error:
            continue  # ended meanwhile
    return names


def test_a_local_ray_starts_lean_and_runs_tasks() -> None:
    assert not ray.is_initialized()
    connect_ray(None, "cpu", 1)
    try:
        deadline = time.monotonic() + 60
        while not [n for n in _ray_processes() if n.startswith("ray::IDLE")] and time.monotonic() < deadline:
            time.sleep(0.2)  # the prewarmed worker starting
        time.sleep(1.5)  # what Ray prestarts for a new driver, or a second worker, would be started by now
        names = _ray_processes()
        assert any("gcs_server" in name for name in names) and any("raylet" in name for name in names)
        left_out = ("autoscaler/_private/monitor.py", "log_monitor.py", "dashboard/dashboard.py")
        assert not [n for n in names if any(part in n for part in left_out)]
        # One worker, idle: the prewarm task never runs (no node has its resource), so it cannot take the worker
        assert len([n for n in names if n.startswith("ray::") and "Agent" not in n]) == 1
        assert [n for n in names if n.startswith("ray::IDLE")]
        end_prewarm()
        assert ray.get(ray.remote(lambda: 42).remote()) == 42  # workers still start when asked for
    finally:
        ray.shutdown()
