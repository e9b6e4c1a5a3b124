"""Start a trial's ranks under torchrun, enforce its timeout, leave nothing behind, say why it failed.

The ranks run in a new session (their own process group), started from an argument list, never a
shell string. Whatever happens, the whole group is killed before `run_trial` returns.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tuner.result import TrialResult, figures_from_worker
from tuner.trial import failures

_EXITCODE = re.compile(r"exitcode\s*:\s*(-?\d+)")
_CATEGORY_PRIORITY = (failures.OOM, failures.INVALID_CONFIG, failures.CRASH)
STALE_LOCK_S = 900.0  # compiling cpu_adam takes about 2 minutes on 2 busy cores; a lock this old is orphaned
PREBUILD_TIMEOUT_S = 1800.0


@dataclass(frozen=True)
class Rendezvous:
    """Where the ranks of a trial over several nodes meet: torchrun's static rendezvous on node 0."""

    nodes: int
    node_rank: int
    master_addr: str
    master_port: int


@dataclass(frozen=True)
class NodeRun:
    """How one node's torchrun ended."""

    returncode: int | None
    timed_out: bool
    duration_s: float
    launch_error: str | None = None


def worker_command(spec_path: Path, ranks: int, rendezvous: Rendezvous | None = None) -> list[str]:
    """torchrun as an argument list, dying with this process; a free local port (--standalone) on one node."""
    if rendezvous is None:
        where = ["--standalone", "--nnodes", "1"]
    else:
        where = [
            "--nnodes", str(rendezvous.nodes), "--node-rank", str(rendezvous.node_rank),
            "--master-addr", rendezvous.master_addr, "--master-port", str(rendezvous.master_port),
        ]  # fmt: skip
    return [
        sys.executable, "-m", "tuner.trial.guard", str(os.getpid()),
        sys.executable, "-m", "torch.distributed.run", *where, "--nproc-per-node", str(ranks),
        "-m", "tuner.trial.worker", str(spec_path),
    ]  # fmt: skip


def worker_env(accelerator: str, ranks: int, cpus: int | None = None) -> dict[str, str]:
    """The environment of one node's ranks: the accelerator forced, the node's CPUs shared out between ranks.

    `cpus` is what the trial holds on this node (Ray's bundle); by default the whole machine.
    """
    env = dict(os.environ)
    env["PYTHONUNBUFFERED"] = "1"
    env["TOKENIZERS_PARALLELISM"] = "false"
    if accelerator == "cpu":
        env["DS_ACCELERATOR"] = "cpu"
        env["OMP_NUM_THREADS"] = str(max(1, (cpus or os.cpu_count() or 1) // ranks))
    return env


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM the trial's process group, then SIGKILL whatever is left of it."""
    for sig, grace in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 0.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and _group_alive(proc.pid):
            time.sleep(0.1)
    if proc.poll() is None:
        proc.wait()


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def tail_of(path: Path, lines: int = 40) -> str:
    """The last lines of a log, or nothing when it cannot be read."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def _rank_failure(trial_dir: Path) -> tuple[str, str, str] | None:
    """The root cause among the ranks' error files: an OOM outranks the crashes it causes in peers."""
    errors = []
    for path in sorted(trial_dir.glob("error_rank*.json")):
        try:
            errors.append(json.loads(path.read_text()))
        except (OSError, json.JSONDecodeError):
            continue
    if not errors:
        return None
    errors.sort(key=lambda e: _CATEGORY_PRIORITY.index(e["category"]) if e["category"] in _CATEGORY_PRIORITY else 9)
    first = errors[0]
    reason = f"rank {first['rank']} ({first['phase']}): {first['reason']}"
    return first["category"], reason, first.get("traceback", "")


def _killed_silently(trial_dir: Path, ranks: int, log_text: str) -> bool:
    """True when torchrun saw a rank die of SIGKILL and some rank wrote no error file (the killed one)."""
    killed = any(int(code) == -signal.SIGKILL for code in _EXITCODE.findall(log_text))
    return killed and len(list(trial_dir.glob("error_rank*.json"))) < ranks


def _exit_failure(returncode: int, log_text: str) -> tuple[str, str]:
    """A rank died without writing why: report how torchrun saw it exit."""
    codes = [int(c) for c in _EXITCODE.findall(log_text)]
    worst = next((c for c in codes if c < 0), codes[0] if codes else returncode)
    how = failures.describe_exit(worst)
    if worst == -signal.SIGKILL:
        return failures.CRASH, f"a rank was {how} (the kernel's out-of-memory killer, or a kill from outside)"
    if failures.is_oom(log_text[-20000:]):
        return failures.OOM, f"a rank ran out of memory ({how})"
    return failures.CRASH, f"a rank died: {how}"


def run_node(
    spec: dict[str, Any],
    work_dir: Path,
    *,
    ranks: int,
    accelerator: str,
    timeout_s: float,
    rendezvous: Rendezvous | None = None,
    cpus: int | None = None,
    log_name: str = "trial.log",
) -> NodeRun:
    """Run this node's ranks of a trial until they end or `timeout_s`; nothing of them is left running."""
    work_dir.mkdir(parents=True, exist_ok=True)
    spec_path = work_dir / "spec.json"
    spec_path.write_text(json.dumps(spec, indent=2, sort_keys=True))
    start = time.monotonic()
    env = worker_env(accelerator, ranks, cpus)
    env["TUNER_LAUNCH_EPOCH"] = repr(time.time())
    with (work_dir / log_name).open("wb") as log:
        try:
            proc = subprocess.Popen(
                worker_command(spec_path, ranks, rendezvous),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                cwd=work_dir,
                start_new_session=True,
            )
        except OSError as exc:
            return NodeRun(None, False, time.monotonic() - start, failures.one_line(exc))
        timed_out = False
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            timed_out = True
        finally:
            _kill_group(proc)  # also reaps ranks that outlived torchrun
    return NodeRun(proc.returncode, timed_out, time.monotonic() - start)


def node_logs(trial_dir: Path) -> list[Path]:
    """The trial's torchrun logs: node 0's `trial.log`, then `node<N>.log` of the other nodes."""
    others = sorted(trial_dir.glob("node*.log"), key=lambda p: int(p.stem[4:]) if p.stem[4:].isdigit() else 0)
    return [trial_dir / "trial.log", *others]


def outcome(spec: dict[str, Any], trial_dir: Path, run: NodeRun, *, ranks: int, timeout_s: float) -> TrialResult:
    """The TrialResult from what the ranks left in `trial_dir` (every node's files brought together there)."""
    log_path = trial_dir / "trial.log"
    if run.launch_error is not None:
        return TrialResult.failed(failures.LAUNCH_ERROR, run.launch_error, str(log_path))
    tail = "\n".join(
        f"--- {p.name} ---\n{tail_of(p)}" if p.name != "trial.log" else tail_of(p) for p in node_logs(trial_dir)
    )
    if run.timed_out:
        return TrialResult.failed(
            failures.TIMEOUT,
            f"no result after trial.timeout_s={timeout_s:g}s; all ranks killed",
            str(log_path),
            tail,
            run.duration_s,
        )
    result_path = trial_dir / "result.json"
    if run.returncode == 0 and result_path.is_file():
        raw = json.loads(result_path.read_text())
        figures = figures_from_worker(raw, spec, run.duration_s)
        return TrialResult(figures, None, None, str(log_path), "", run.duration_s)
    found = _rank_failure(trial_dir)
    log_text = "\n".join(p.read_text(errors="replace") for p in node_logs(trial_dir) if p.is_file())
    if found is not None and found[0] != failures.OOM and _killed_silently(trial_dir, ranks, log_text):
        found = None  # a rank was SIGKILLed without a word: the peers' collective errors are its consequence
    if found is not None:  # the failing rank's own traceback first, then the interleaved log of all ranks
        category, reason, traceback = found
        tail = f"{traceback.strip()}\n--- trial log ---\n{tail}" if traceback.strip() else tail
    elif run.returncode == 0:
        category, reason = failures.CRASH, "the ranks exited without writing a result"
    else:
        category, reason = _exit_failure(run.returncode or 1, log_text)
    return TrialResult.failed(category, reason, str(log_path), tail, run.duration_s)


def run_trial(
    spec: dict[str, Any],
    trial_dir: Path,
    *,
    ranks: int,
    accelerator: str,
    timeout_s: float,
    cpus: int | None = None,
) -> TrialResult:
    """Run a one-node trial to completion, failure or timeout; never raises for the trial's own faults."""
    run = run_node(spec, trial_dir, ranks=ranks, accelerator=accelerator, timeout_s=timeout_s, cpus=cpus)
    return outcome(spec, trial_dir, run, ranks=ranks, timeout_s=timeout_s)


def _extensions_root() -> Path:
    return Path(os.environ.get("TORCH_EXTENSIONS_DIR") or Path.home() / ".cache" / "torch_extensions")


def _clear_stale_locks(name: str, now: float, stale_after_s: float = STALE_LOCK_S) -> list[Path]:
    """Remove build locks of op `name` older than any real build; returns the ones removed.

    torch's JIT build holds a lock file while it compiles; a process killed mid-build (a stopped search,
    a killed rank) leaves it behind, and every later build then waits for it forever.
    """
    removed = []
    for lock in _extensions_root().glob(f"*/{name}/lock"):
        try:
            if now - lock.stat().st_mtime > stale_after_s:
                lock.unlink()
                removed.append(lock)
        except FileNotFoundError:
            continue  # its build just finished
    return removed


def _op_cached(name: str) -> bool:
    """Whether torch's JIT cache holds op `name` built from this DeepSpeed installation's sources."""
    found = importlib.util.find_spec("deepspeed")
    if found is None or found.origin is None:
        return False
    sources = str(Path(found.origin).parent)
    for folder in _extensions_root().glob(f"*/{name}"):
        ninja = folder / "build.ninja"
        if (folder / f"{name}.so").is_file() and ninja.is_file() and sources in ninja.read_text(errors="replace"):
            return True
    return False


def prebuild_ops(accelerator: str, need_cpu_adam: bool, log_path: Path) -> str | None:
    """Compile DeepSpeed's JIT ops once, before any trial, so compilation never eats a trial's timeout.

    Returns None on success, or a one-line reason (the trials that need the op will then fail and say so).
    """
    code, names = [], []
    if accelerator == "cpu" and not _op_cached("deepspeed_shm_comm"):
        names.append("deepspeed_shm_comm")
        code.append("from deepspeed.ops.op_builder.cpu import ShareMemCommBuilder; ShareMemCommBuilder().load()")
    if need_cpu_adam and not _op_cached("cpu_adam"):
        names.append("cpu_adam")
        code.append("from deepspeed.ops.op_builder import CPUAdamBuilder; CPUAdamBuilder().load()")
    if not code:
        return None  # built before, from this DeepSpeed installation: skip the import (seconds)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-c", "\n".join(code)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=worker_env(accelerator, 1),
        )
        while proc.poll() is None:  # a build waiting on a dead process's lock is freed once that lock is stale
            for name in names:
                _clear_stale_locks(name, time.time())
            if time.monotonic() - started > PREBUILD_TIMEOUT_S:
                proc.kill()
                proc.wait()
                return f"building DeepSpeed ops took over {PREBUILD_TIMEOUT_S:.0f} s; see {log_path}"
            time.sleep(1.0)
    if proc.returncode != 0:
        return f"building DeepSpeed ops failed ({failures.describe_exit(proc.returncode)}); see {log_path}"
    return None
