"""DeepSpeed's JIT-compiled ops: which ones a trial loads, built once before any trial, and their build locks.

DeepSpeed compiles an op (`OpBuilder.load()`, deepspeed/ops/op_builder/builder.py) the first time a process
needs it, unless it was prebuilt at install time for the same accelerator (`installed_ops` and
`accelerator_name` in deepspeed/git_version_info_installed.py). Compiling inside a trial would eat its
timeout and its fixed-cost figure, so `tuner search` builds every op its trials will load first, in this
installation's op folder (tuner.trial.extensions), where the ranks load them.

torch's JIT build holds a lock file (torch/utils/file_baton.py: created with O_EXCL, its descriptor kept
open until the build ends) while it compiles; a process killed mid-build leaves the file behind, and every
later build of that op waits for it forever. A lock no live process holds open is such an orphan and is
removed; where another user's processes cannot be inspected, only a lock older than any real build is.
"""

from __future__ import annotations

import ast
import importlib.util
import os
import subprocess
import sys
import time
from collections.abc import Iterable
from pathlib import Path

from tuner.trial import failures
from tuner.trial.env import worker_env
from tuner.trial.extensions import extensions_dir, op_folders

STALE_LOCK_S = 900.0  # compiling cpu_adam takes about 2 minutes on 2 busy cores; a lock this old is orphaned
PREBUILD_TIMEOUT_S = 1800.0
BUILDERS = {  # op name (the builder's NAME) -> builder class in deepspeed.ops.op_builder (per accelerator)
    "fused_adam": "FusedAdamBuilder",
    "cpu_adam": "CPUAdamBuilder",
    "fused_lamb": "FusedLambBuilder",
    "fused_lion": "FusedLionBuilder",
    "cpu_lion": "CPULionBuilder",
    "cpu_adagrad": "CPUAdagradBuilder",
    "quantizer": "QuantizerBuilder",
    "deepspeed_shm_comm": "ShareMemCommBuilder",
}


def _deepspeed_dir() -> Path | None:
    found = importlib.util.find_spec("deepspeed")
    return None if found is None or found.origin is None else Path(found.origin).parent


def prebuilt_ops(accelerator: str) -> set[str]:
    """Ops this DeepSpeed installation compiled at install time for `accelerator` (read, not imported: seconds)."""
    folder = _deepspeed_dir()
    path = folder / "git_version_info_installed.py" if folder else None
    if path is None or not path.is_file():
        return set()
    values: dict[str, object] = {}
    for node in ast.parse(path.read_text(errors="replace")).body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            try:
                values[node.targets[0].id] = ast.literal_eval(node.value)
            except ValueError:
                continue
    installed = values.get("installed_ops")
    if values.get("accelerator_name") != accelerator or not isinstance(installed, dict):
        return set()  # built for another accelerator: DeepSpeed JIT-compiles them again
    return {name for name, built in installed.items() if built}


def _op_cached(name: str, accelerator: str) -> bool:
    """Whether this installation's op folder (tuner.trial.extensions) holds op `name` built from this DeepSpeed
    installation's sources: a file check of milliseconds, where asking DeepSpeed's builder imports it (seconds)."""
    folder = _deepspeed_dir()
    if folder is None:
        return False
    build = extensions_dir(accelerator) / name
    ninja = build / "build.ninja"
    return (build / f"{name}.so").is_file() and ninja.is_file() and str(folder) in ninja.read_text(errors="replace")


def _open_files() -> set[str] | None:
    """Every file a live process on this machine holds open, or None when some process cannot be inspected."""
    held: set[str] = set()
    complete = True
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            for fd in (proc / "fd").iterdir():
                try:
                    held.add(os.readlink(fd))
                except OSError:
                    continue
        except PermissionError:
            complete = False
        except OSError:
            continue  # the process ended while we looked
    return held if complete else None


def clear_orphaned_locks(names: Iterable[str], now: float | None = None) -> list[Path]:
    """Remove the build locks of ops `names` that no live process holds; returns the ones removed."""
    locks = [folder / "lock" for name in names for folder in op_folders(name)]
    locks = [lock for lock in locks if lock.exists()]
    if not locks:
        return []
    held = _open_files()
    now = time.time() if now is None else now
    removed = []
    for lock in locks:
        try:
            if held is not None:
                orphaned = os.path.realpath(lock) not in held
            else:
                orphaned = now - lock.stat().st_mtime > STALE_LOCK_S
            if orphaned:
                lock.unlink()
                removed.append(lock)
        except FileNotFoundError:
            continue  # its build just finished
    return removed


def ops_to_build(accelerator: str, ops: Iterable[str]) -> list[str]:
    """The ops of `ops` that neither the installation prebuilt nor torch's cache holds for these sources."""
    prebuilt = prebuilt_ops(accelerator)
    return sorted(name for name in set(ops) if name not in prebuilt and not _op_cached(name, accelerator))


def prebuild_ops(accelerator: str, ops: Iterable[str], log_path: Path) -> str | None:
    """Compile DeepSpeed's JIT ops `ops` once, before any trial, so compilation never eats a trial's timeout.

    Returns None on success, or a one-line reason (the trials that need the op will then fail and say so).
    """
    wanted = sorted(set(ops))
    clear_orphaned_locks(wanted)
    names = ops_to_build(accelerator, wanted)
    if not names:
        return None  # prebuilt, or built before from this DeepSpeed installation: skip the import (seconds)
    unknown = [name for name in names if name not in BUILDERS]
    if unknown:
        return f"no builder known for DeepSpeed op(s) {', '.join(unknown)}"
    code = [f"from deepspeed.ops.op_builder import {BUILDERS[name]}; {BUILDERS[name]}().load()" for name in names]
    log_path.parent.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-c", "\n".join(code)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=worker_env(accelerator, 1),
        )
        while proc.poll() is None:  # a build waiting on a dead process's lock is freed at once
            clear_orphaned_locks(names)
            if time.monotonic() - started > PREBUILD_TIMEOUT_S:
                proc.kill()
                proc.wait()
                return f"building DeepSpeed ops took over {PREBUILD_TIMEOUT_S:.0f} s; see {log_path}"
            time.sleep(1.0)
    if proc.returncode != 0:
        return f"building DeepSpeed ops failed ({failures.describe_exit(proc.returncode)}); see {log_path}"
    return None
