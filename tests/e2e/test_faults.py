"""Orchestrator and storage faults with real trials: Ctrl-C, SIGKILL of `tuner search`, resuming, trials left by a
search on another host, optuna-dashboard reading the SQLite file during a search. (A password in a PostgreSQL
URL: tests/e2e/test_cluster.py.)

Trial faults (a rank SIGKILLed, a hang past the timeout, over the memory budget, a config DeepSpeed rejects, a
workload that raises) are in tests/integration/test_trials.py, each checking the process table.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
import psutil
import pytest
from optuna.trial import TrialState

from tests.conftest import TINY_GPT2
from tests.e2e.test_cli import free_port, tuner, write_space
from tuner.heartbeat import GRACE_ENV, INTERVAL_ENV, heartbeat_ages
from tuner.orphans import OWNER

FAULTS: dict[str, Any] = {
    "study": "faults",
    "model": {"config": TINY_GPT2},
    "data": {"sequence_length": 64},
    "training": {"global_batch_size": 8, "precision": "fp32"},
    "hardware": {"gpus_per_trial": 1},  # one rank: the faults are the orchestrator's, and trials start faster
    "space": {"micro_batch_size": [1, 2], "zero_stage": [0, 2]},
    "search": {"sampler": "grid"},
    "trial": {"warmup_steps": 1, "measure_steps": 2, "max_measure_steps": 2, "timeout_s": 240},
}


def start(space: Path, cwd: Path) -> subprocess.Popen[str]:
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("TUNER_STORAGE", None)
    return subprocess.Popen(
        [str(Path(sys.executable).parent / "tuner"), "search", str(space)],
        cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def wait_for(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


def trials(url: str) -> list[optuna.trial.FrozenTrial]:
    try:
        return optuna.load_study(study_name="faults", storage=url).get_trials()
    except KeyError:
        return []  # the study is not created yet


def a_trial_is_running(url: str, runs: Path) -> Callable[[], bool]:
    """True once some trial is RUNNING and its ranks have started (its log exists)."""

    def check() -> bool:
        running = [t for t in trials(url) if t.state == TrialState.RUNNING]
        return any((runs / f"trial_{t.number:04d}" / "trial.log").exists() for t in running)

    return check


def rank_processes(runs: Path) -> list[psutil.Process]:
    """Processes of this test's trials: their command lines name a spec under the run folder."""
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        try:
            if any(str(runs) in part for part in proc.info["cmdline"] or []):
                found.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return found


def other_hosts_trial(url: str, beating: bool) -> int:
    """A RUNNING trial of a search on another host, beating once (then killed) or from before heartbeats."""
    study = optuna.load_study(study_name="faults", storage=url)
    trial = study.ask()
    trial.set_user_attr(OWNER, "gpu-node-7:4242:1700000000")
    if beating:
        study._storage.record_heartbeat(trial._trial_id)  # type: ignore[attr-defined]
    return trial.number


def test_ctrl_c_and_sigkill_lose_nothing_and_the_same_command_continues(
    tmp_path: Path, cpu_ops: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    space = write_space(tmp_path, FAULTS)
    url = f"sqlite:///{tmp_path / 'tuner.sqlite3'}"
    runs = tmp_path / "tuner_runs" / "faults"

    # Ctrl-C while a trial runs: it is stopped and recorded, a summary is printed, exit code 130.
    proc = start(space, tmp_path)
    wait_for(a_trial_is_running(url, runs), 300, "a running trial")
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=180)
    assert proc.returncode == 130, out[-2000:] + err[-2000:]
    assert "interrupted: running trials were stopped and recorded" in err and "study faults:" in out
    wait_for(lambda: not rank_processes(runs), 60, "the stopped trial's ranks to exit")
    after_int = trials(url)
    assert not [t for t in after_int if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    stopped = [t for t in after_int if t.user_attrs.get("failure_category") == "interrupted"]
    assert len(stopped) == 1

    # SIGKILL of the whole search while a later trial runs: nothing can be recorded at that moment.
    proc = start(space, tmp_path)
    wait_for(lambda: sum(t.state == TrialState.COMPLETE for t in trials(url)) >= 1, 300, "a complete trial")
    study = optuna.load_study(study_name="faults", storage=url)

    def running_and_beating() -> bool:
        """A trial is RUNNING with its ranks started and its beat recorded (checked together: a warm trial
        takes 2-3 s, so the trial seen running a moment ago may have ended before its beat was looked for)."""
        running = [t._trial_id for t in trials(url) if t.state == TrialState.RUNNING]
        return a_trial_is_running(url, runs)() and set(heartbeat_ages(study, running)) == set(running)

    wait_for(running_and_beating, 300, "a running trial with the search's heartbeat")
    proc.kill()
    proc.communicate(timeout=60)
    # Trials of a search on another host: one whose heartbeat stopped, one from before heartbeats (none).
    silent, unknown = other_hosts_trial(url, beating=True), other_hosts_trial(url, beating=False)
    wait_for(lambda: not rank_processes(runs), 90, "the killed search's ranks to exit")
    orphaned = [t.number for t in trials(url) if t.state == TrialState.RUNNING and t.number not in (silent, unknown)]
    assert orphaned, "the killed search left its running trial RUNNING in the store"
    complete_before = {t.user_attrs["point"] for t in trials(url) if t.state == TrialState.COMPLETE}
    monkeypatch.setenv(INTERVAL_ENV, "1")
    monkeypatch.setenv(GRACE_ENV, "2")  # the rerun judges: silent for 2 s, that search is gone
    silent_id = next(t._trial_id for t in trials(url) if t.number == silent)
    wait_for(lambda: heartbeat_ages(study, [silent_id])[silent_id] > 2, 10, "the silent trial's grace to pass")

    # The same command again, with optuna-dashboard reading the same SQLite file all along.
    port = free_port()
    dashboard = subprocess.Popen(
        [str(Path(sys.executable).parent / "tuner"), "dashboard", "--storage", url, "--port", str(port)],
        cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    reads: list[int] = []
    errors: list[str] = []
    stop = threading.Event()

    def poll() -> None:
        while not stop.is_set():
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies", timeout=10) as resp:
                    reads.append(len(json.load(resp)["study_summaries"]))
            except OSError as exc:
                if reads:  # before the first answer the server is still starting
                    errors.append(str(exc))
            time.sleep(0.2)

    reader = threading.Thread(target=poll, daemon=True)
    reader.start()
    try:
        done = tuner("search", str(space), cwd=tmp_path)
    finally:
        stop.set()
        reader.join(timeout=30)
        dashboard.send_signal(signal.SIGINT)
        dashboard.wait(timeout=30)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "recorded FAIL interrupted, their points run again" in done.stdout
    assert f"trial(s) {unknown} are RUNNING for a search on another host; left as they are" in done.stderr
    assert "database is locked" not in done.stdout + done.stderr
    assert len(reads) > 10 and not errors, errors[:3]

    final = trials(url)
    assert [t.number for t in final if t.state in (TrialState.RUNNING, TrialState.WAITING)] == [unknown]
    interrupted = sorted(t.number for t in final if t.user_attrs.get("failure_category") == "interrupted")
    assert interrupted == sorted([stopped[0].number, *orphaned, silent])
    assert "recorded no heartbeat for" in final[silent].user_attrs["failure_reason"]
    measured = [t for t in final if t.user_attrs.get("failure_category") != "interrupted" and t.number != unknown]
    counts = Counter(t.user_attrs["point"] for t in measured)
    assert len(counts) == 4 and set(counts.values()) == {1}, counts  # every point exactly once
    assert all(t.state in (TrialState.COMPLETE, TrialState.FAIL) for t in measured)
    assert complete_before <= {t.user_attrs["point"] for t in measured if t.state == TrialState.COMPLETE}
    assert not rank_processes(runs)
