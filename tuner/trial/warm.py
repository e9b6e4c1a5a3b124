"""Warm start: a trial's ranks forked from a pre-imported process instead of started by torchrun.

A fresh rank spends seconds importing torch, DeepSpeed, transformers and the model's code before it does
anything a trial measures (2-4 s of a 1-rank tiny model's 4-9 s of fixed cost here). The launcher keeps
one server per (interpreter, accelerator, visible devices) in its own process (tuner.trial.warm_server),
started at the first trial and reused by the later ones (Tune reuses its actors); the server exits when
the launcher's process does. Chosen over ranks kept alive across trials: a fork costs tens of
milliseconds, and every trial still starts from a process that never ran a trial, so its peak memory, its
budget watch and its failures are its own without resetting anything.

Used for one-node trials of the built-in workload. A user's script (tuner.trial.script_shim) and a trial
over several nodes (tuner.trial.nodes) keep torchrun. TUNER_WARM_START=0 turns it off; whatever goes
wrong with the server itself (it cannot start, it refuses a trial) falls back to torchrun, never fails a
trial.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tuner.trial.spec import TrialSpec
from tuner.trial.warm_leader import TITLE_ROOM, WARM_SWITCH

START_TIMEOUT_S = 300.0  # the imports of a cold start, on a busy machine


@dataclass
class _Server:
    proc: subprocess.Popen[bytes]
    path: Path


_SERVERS: dict[tuple[str, ...], _Server] = {}


def enabled(spec: TrialSpec, multi_node: bool) -> bool:
    """Whether this trial's ranks may be forked: the built-in workload on one node, unless turned off."""
    return spec.script is None and not multi_node and os.environ.get(WARM_SWITCH, "1") != "0"


def _key(env: dict[str, str]) -> tuple[str, ...]:
    """What the server's imports depend on: a different interpreter, accelerator or device set needs another."""
    names = ("DS_ACCELERATOR", "CUDA_VISIBLE_DEVICES", "PYTHONPATH", "TORCH_EXTENSIONS_DIR")
    return (sys.executable, *(env.get(name, "") for name in names))


def _start(env: dict[str, str]) -> _Server | None:
    """A new server; None when it exits before it listens (the launcher then uses torchrun)."""
    folder = Path(tempfile.mkdtemp(prefix="tuner-warm-"))
    path = folder / "server.sock"
    server_env = {**env, "PYTORCH_NVML_BASED_CUDA_CHECK": "1"}  # torch.cuda.is_available() without cuInit
    with (folder / "server.log").open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "tuner.trial.warm_server", str(path), str(os.getpid()), " " * TITLE_ROOM],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=server_env, start_new_session=True,
        )  # fmt: skip
    deadline = time.monotonic() + START_TIMEOUT_S
    while not path.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            proc.wait()
            return None
        time.sleep(0.02)
    return _Server(proc, path)


def _server(env: dict[str, str]) -> _Server | None:
    """This process's server for `env`, started when there is none or the last one ended."""
    key = _key(env)
    server = _SERVERS.get(key)
    if server is not None and server.proc.poll() is None:
        return server
    started = _start(env)
    if started is not None:
        _SERVERS[key] = started
    return started


@dataclass(frozen=True)
class Forked:
    """A trial's leader as the server forked it: its process group, and the connection that reports its end."""

    pgid: int
    conn: socket.socket

    def wait(self, timeout_s: float) -> int | None:
        """The leader's exit code (1 when it died without one); None when `timeout_s` passed first."""
        self.conn.settimeout(max(0.001, timeout_s))
        try:
            reply = _read_line(self.conn)
        except TimeoutError:
            return None
        return int(reply.get("returncode", 1)) if reply else 1


def _read_line(conn: socket.socket) -> dict[str, Any] | None:
    data = b""
    while not data.endswith(b"\n"):
        chunk = conn.recv(1)
        if not chunk:
            return None
        data += chunk
    return dict(json.loads(data))


def profile_of(spec: TrialSpec, ops: set[str]) -> dict[str, Any]:
    """What a trial's ranks import beyond every rank's imports: its sub-server imports just that.

    DeepSpeed's ZeRO (stage 1+) checks the optimizer against a list it completes by importing Muon
    (runtime/zero/utils.py `is_zero_supported_optimizer`), whose kernels torch.compile wraps at import,
    which imports torch._inductor: 4-7 s of such a trial's `deepspeed.initialize` on this 2-core machine.
    ZeRO-3's model build imports torch._dynamo's polyfills (tuner.workload.hf_causal_lm).
    """
    stage = int((spec.ds_config.get("zero_optimization") or {}).get("stage", 0) or 0)
    modules = ["deepspeed.runtime.zero.muon.muon_optimizer"] if stage >= 1 else []
    modules += ["torch._dynamo.polyfills.loader"] if stage == 3 else []
    model_type = spec.model_config.get("model_type")  # the modeling code depends on the architecture alone
    code = {"model_type": model_type} if isinstance(model_type, str) else spec.model_config
    return {"model_config": code, "modules": modules, "ops": sorted(ops)}


def _ask(path: str, request: dict[str, Any]) -> tuple[socket.socket, dict[str, Any] | None]:
    """Send `request` to the server at `path`; the open connection and the first reply (None: no answer)."""
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    conn.settimeout(START_TIMEOUT_S)  # a new profile's imports come before the answer
    try:
        conn.connect(path)
        conn.sendall(json.dumps(request).encode() + b"\n")
        return conn, _read_line(conn)
    except OSError:
        return conn, None


def fork_ranks(
    spec: TrialSpec, spec_path: Path, *, ranks: int, env: dict[str, str], cwd: Path, log_path: Path, ops: set[str]
) -> Forked | None:
    """Ask this node's server to fork the trial's ranks; None when the warm path cannot serve it."""
    server = _server(env)
    if server is None:
        return None
    request = {"spec": str(spec_path), "ranks": ranks, "env": env, "cwd": str(cwd), "log": str(log_path),
               "profile": profile_of(spec, ops)}  # fmt: skip
    conn, reply = _ask(str(server.path), request)
    conn.close()
    if reply is None or "redirect" not in reply:
        return None
    conn, reply = _ask(str(reply["redirect"]), request)
    if reply is None or "pid" not in reply:
        conn.close()
        return None
    return Forked(int(reply["pid"]), conn)
