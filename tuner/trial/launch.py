"""Start a trial's ranks under torchrun, enforce its timeout, leave nothing behind, say why it failed.

The ranks run in a new session (their own process group), started from an argument list, never a
shell string. Whatever happens, the whole group is killed before `run_trial` returns.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tuner.dsconfig import jit_ops
from tuner.knobs import unsupported_on
from tuner.points import Point
from tuner.result import TrialResult, figures_from_worker
from tuner.trial import failures, warm
from tuner.trial.env import worker_env
from tuner.trial.ops import clear_orphaned_locks
from tuner.trial.spec import TrialSpec

_EXITCODE = re.compile(r"exitcode\s*:\s*(-?\d+)")
_CATEGORY_PRIORITY = (failures.OOM, failures.INVALID_CONFIG, failures.CRASH)
KILL_WAIT_S = 30.0  # after SIGKILL, how long to wait for the group's processes to be gone (and their memory freed)


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


def worker_command(
    spec_path: Path, ranks: int, rendezvous: Rendezvous | None = None, module: str = "tuner.trial.worker"
) -> list[str]:
    """torchrun as an argument list, dying with this process; a free local port (--standalone) on one node.

    Each rank runs `module` on the spec: the built-in workload's worker, or the shim that runs a user's script.
    """
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
        "-m", module, str(spec_path),
    ]  # fmt: skip


def group_members(pgid: int) -> list[int]:
    """The live processes of process group `pgid` (zombies excluded: they hold no memory), from /proc."""
    members = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            stat = (proc / "stat").read_text()
        except OSError:
            continue  # it ended while we looked
        fields = stat[stat.rindex(")") + 2 :].split()  # after "pid (comm) ": state ppid pgrp ...
        if int(fields[2]) == pgid and fields[0] not in ("Z", "X"):
            members.append(int(proc.name))
    return members


def wait_gone(pgid: int, timeout_s: float, members: Callable[[int], list[int]] = group_members) -> bool:
    """Wait until no live process of group `pgid` is left, at most `timeout_s`; True when none is left."""
    deadline = time.monotonic() + timeout_s
    while members(pgid):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)
    return True


def kill_group(pgid: int) -> int:
    """SIGTERM the trial's process group, SIGKILL whatever is left, and wait until none of it runs.

    A GPU's memory is freed only when the processes holding it are gone, and the next trial on the same GPUs
    (Tune reuses its actors) must not run out of memory that is not its own. Returns how many processes were
    still alive when the bounded wait gave up.
    """
    for sig, grace in ((signal.SIGTERM, 5.0), (signal.SIGKILL, KILL_WAIT_S)):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            break
        if wait_gone(pgid, grace):
            break
    return len(group_members(pgid))


def _kill_group(proc: subprocess.Popen[bytes]) -> int:
    """kill_group of torchrun's group, then torchrun reaped."""
    left = kill_group(proc.pid)
    if proc.poll() is None:
        proc.wait()
    return left


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
    spec: TrialSpec,
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
    spec_path.write_text(spec.to_json())
    clear_orphaned_locks(jit_ops(spec.ds_config, accelerator))  # a build killed in an earlier trial
    start = time.monotonic()
    env = worker_env(accelerator, ranks, cpus)
    env["TUNER_LAUNCH_EPOCH"] = repr(time.time())
    module, cwd = "tuner.trial.worker", work_dir
    if spec.script is not None:  # the user's script: its config as a file ({ds_config}), run from its folder
        (work_dir / "ds_config.json").write_text(json.dumps(spec.ds_config, indent=2, sort_keys=True))
        (work_dir / "output").mkdir(exist_ok=True)
        env.update(spec.script_env)
        module, cwd = "tuner.trial.script_shim", Path(spec.script).parent
    if warm.enabled(spec, rendezvous is not None):
        forked = warm.fork_ranks(
            spec, spec_path, ranks=ranks, env=env, cwd=cwd, log_path=work_dir / log_name,
            ops=jit_ops(spec.ds_config, accelerator),
        )  # fmt: skip
        if forked is not None:
            return _wait_forked(forked, work_dir / log_name, timeout_s, start)
    with (work_dir / log_name).open("wb") as log:
        try:
            proc = subprocess.Popen(
                worker_command(spec_path, ranks, rendezvous, module),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                cwd=cwd,
                start_new_session=True,
            )
        except OSError as exc:
            return NodeRun(None, False, time.monotonic() - start, failures.one_line(exc))
        timed_out = False
        left = 0
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            timed_out = True
        finally:
            left = _kill_group(proc)  # also reaps ranks that outlived torchrun
        if left:
            log.write(f"tuner: {left} process(es) of this trial still alive {KILL_WAIT_S:g} s after SIGKILL\n".encode())
    return NodeRun(proc.returncode, timed_out, time.monotonic() - start)


def _wait_forked(forked: warm.Forked, log_path: Path, timeout_s: float, start: float) -> NodeRun:
    """Wait for ranks the warm server forked, as for torchrun's: the same timeout, the whole group killed."""
    returncode = forked.wait(timeout_s - (time.monotonic() - start))
    forked.conn.close()
    left = kill_group(forked.pgid)
    if left:
        with log_path.open("ab") as log:
            log.write(f"tuner: {left} process(es) of this trial still alive {KILL_WAIT_S:g} s after SIGKILL\n".encode())
    return NodeRun(returncode, returncode is None, time.monotonic() - start)


def node_logs(trial_dir: Path) -> list[Path]:
    """The trial's torchrun logs: node 0's `trial.log`, then `node<N>.log` of the other nodes."""
    others = sorted(trial_dir.glob("node*.log"), key=lambda p: int(p.stem[4:]) if p.stem[4:].isdigit() else 0)
    return [trial_dir / "trial.log", *others]


def outcome(
    spec: TrialSpec, trial_dir: Path, run: NodeRun, *, ranks: int, timeout_s: float, accelerator: str = "cpu"
) -> TrialResult:
    """The TrialResult from what the ranks left in `trial_dir` (every node's files brought together there)."""
    result = _outcome(spec, trial_dir, run, ranks=ranks, timeout_s=timeout_s)
    missing = unsupported_on(Point.from_params(spec.point).values(), accelerator) if spec.point else []
    if not result.ok and missing:  # DeepSpeed's own error names no knob ("not implemented on CPU backend")
        names = ", ".join(missing)
        reason = f"{names}: DeepSpeed's {accelerator} accelerator has no kernel for it ({result.failure_reason})"
        result = dataclasses.replace(result, failure_category=failures.INVALID_CONFIG, failure_reason=reason)
    return result.with_spec(spec)


def _outcome(spec: TrialSpec, trial_dir: Path, run: NodeRun, *, ranks: int, timeout_s: float) -> TrialResult:
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
        return TrialResult(
            figures, None, None, str(log_path), "", run.duration_s,
            device_name=raw.get("device_name"), step_timing=raw.get("step_timing", "whole"),
            rank_start=raw.get("rank_start"),
        )  # fmt: skip
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
    spec: TrialSpec,
    trial_dir: Path,
    *,
    ranks: int,
    accelerator: str,
    timeout_s: float,
    cpus: int | None = None,
) -> TrialResult:
    """Run a one-node trial to completion, failure or timeout; never raises for the trial's own faults."""
    run = run_node(spec, trial_dir, ranks=ranks, accelerator=accelerator, timeout_s=timeout_s, cpus=cpus)
    return outcome(spec, trial_dir, run, ranks=ranks, timeout_s=timeout_s, accelerator=accelerator)
