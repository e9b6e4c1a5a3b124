"""A node's pre-imported process that forks each trial's ranks, so a trial does not pay the imports again.

Started by the launcher (tuner.trial.warm) as `python -m tuner.trial.warm_server SOCKET OWNER_PID` with the
ranks' environment. It imports what every rank imports (torch, DeepSpeed, transformers, the worker) once,
never initialises CUDA and never runs a tensor operation, so no OpenMP pool or CUDA context has to survive
a fork (torch marks a child forked after CUDA's lazy init as a "bad fork": torch/cuda/__init__.py
`_is_in_bad_fork`, checked in each rank).

What a rank imports beyond that depends on its trial: the model's code, DeepSpeed's compiled ops, and what
`deepspeed.initialize` imports on first use (a trial's profile, tuner.trial.warm.profile_of). Each profile
gets its own sub-server, forked from this one and importing just that, so a forked rank holds what a fresh
rank of its trial would hold and no more: its resident set, and so its peak, reads as a fresh rank's.
The servers never run trial code: every trial is a fresh fork of a clean process, so a crash or an OOM
cannot poison the next.
"""

from __future__ import annotations

import contextlib
import gc
import importlib
import json
import os
import select
import shutil
import socket
import sys
import time
from collections.abc import Callable
from typing import Any

from tuner.trial.warm_leader import lead, resident_file_runs, touch_runs

START_TIMEOUT_S = 300.0


def _send(conn: socket.socket, payload: dict[str, Any]) -> None:
    conn.sendall(json.dumps(payload).encode() + b"\n")


def _preload(profile: dict[str, Any]) -> None:
    """A profile's imports and ops: what its trials' ranks would otherwise import or load themselves."""
    from deepspeed.accelerator import get_accelerator

    from tuner.trial.ops import BUILDERS, ops_to_build
    from tuner.workload import hf_causal_lm

    if profile.get("model_config"):
        hf_causal_lm.import_model_code(profile["model_config"])
    for name in profile.get("modules", []):
        with contextlib.suppress(ImportError):
            importlib.import_module(name)
    accel = get_accelerator()
    ops = list(profile.get("ops", []))
    for name in set(ops) - set(ops_to_build(accel.device_name(), ops)):
        builder = accel.create_op_builder(BUILDERS[name]) if name in BUILDERS else None
        if builder is not None:  # compiled already: loading is a dlopen (cached by OpBuilder._loaded_ops)
            builder.load()


def _refuse_cuda() -> None:
    """End this server when an import initialised CUDA: its forks could not use the GPU (a "bad fork"), and
    the launcher then starts the trials with torchrun."""
    import torch

    if torch.cuda.is_initialized():
        raise SystemExit("tuner warm: CUDA was initialised by the imports; ranks cannot be forked")


def _fork_quietly() -> int:
    """fork() with the streams flushed and the objects so far out of the collector's reach.

    gc.freeze: a child's gc.collect (ZeRO-3's defragment runs one, 1.2 s here) then neither walks the
    imports' objects nor copies their pages; they live as long as the child anyway.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    gc.freeze()
    return os.fork()


def _listen(path: str) -> socket.socket:
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path + ".tmp")
    listener.listen(8)
    os.replace(path + ".tmp", path)  # the launcher connects once the imports are done
    return listener


def _loop(listener: socket.socket, owner: int, handle: Callable[[socket.socket, socket.socket], None]) -> None:
    """Serve requests until the owner (the parent this process started under) is gone; reap children."""
    while os.getppid() == owner:
        readable, _, _ = select.select([listener], [], [], 0.5)
        if readable:
            conn, _ = listener.accept()
            with conn:
                handle(conn, listener)
        with contextlib.suppress(ChildProcessError):
            while os.waitpid(-1, os.WNOHANG)[0] != 0:
                pass


def _serve_trial(conn: socket.socket, listener: socket.socket, runs: list[tuple[int, int]]) -> None:
    """A sub-server's request: fork the trial's leader, which answers the launcher from then on."""
    request = json.loads(conn.makefile("rb").readline())
    if _fork_quietly() == 0:
        code = 1
        try:
            listener.close()
            code = lead(conn, request, runs)
        finally:
            os._exit(code)


def _start_profile(profile: dict[str, Any], path: str, listener: socket.socket) -> tuple[int, str | None]:
    """Fork the sub-server of `profile`; its pid, and its socket once it listens (None: it failed)."""
    parent, inherited = os.getpid(), resident_file_runs()
    pid = _fork_quietly()
    if pid == 0:
        code = 1
        try:
            listener.close()
            touch_runs(inherited)  # this server's libraries' pages, as a fresh rank holds them
            _preload(profile)
            _refuse_cuda()
            runs = resident_file_runs()
            _loop(_listen(path), parent, lambda conn, own: _serve_trial(conn, own, runs))
            code = 0
        finally:
            with contextlib.suppress(OSError):
                os.unlink(path)
            os._exit(code)
    deadline = time.monotonic() + START_TIMEOUT_S
    while not os.path.exists(path):
        if os.waitpid(pid, os.WNOHANG)[0] != 0 or time.monotonic() > deadline:
            return pid, None
        time.sleep(0.01)
    return pid, path


def serve(path: str, owner: int) -> None:
    """Import what every rank imports, then route each trial to its profile's sub-server until the owner is gone."""
    import deepspeed  # noqa: F401
    import torch
    import torch.distributed  # noqa: F401
    import transformers  # noqa: F401
    from deepspeed.accelerator import get_accelerator

    import tuner.trial.worker  # noqa: F401
    from tuner.workload import data, hf_causal_lm  # noqa: F401

    get_accelerator()
    _refuse_cuda()
    profiles: dict[str, tuple[int, str]] = {}

    def route(conn: socket.socket, listener: socket.socket) -> None:
        request = json.loads(conn.makefile("rb").readline())
        key = json.dumps(request["profile"], sort_keys=True)
        known = profiles.get(key)
        if known is None or not os.path.exists(known[1]):
            pid, sub = _start_profile(request["profile"], f"{path}.{len(profiles)}", listener)
            if sub is None:
                _send(conn, {"error": "the profile's imports failed; see the server's log"})
                return
            known = profiles[key] = (pid, sub)
        _send(conn, {"redirect": known[1]})

    _loop(_listen(path), owner, route)
    shutil.rmtree(os.path.dirname(path), ignore_errors=True)


if __name__ == "__main__":
    serve(sys.argv[1], int(sys.argv[2]))
