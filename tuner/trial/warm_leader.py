"""The leader of a trial forked by the warm server (tuner.trial.warm_server): torchrun's part, in a fork.

It starts a new session (so the launcher kills the whole trial with one killpg), writes the trial's log as
its stdout, forks one rank per local rank with the environment torchrun --standalone would give it, stops
the others when one fails (SIGTERM, then SIGKILL), writes "exitcode : N" lines for the launcher's
classifier, kills the group if the launcher goes away, and sends the launcher its return code.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import select
import signal
import socket
import struct
import sys
import time
from typing import Any

TERM_GRACE_S = 5.0  # torchrun's agent also gives the other ranks a few seconds after SIGTERM


def resident_file_runs() -> list[tuple[int, int]]:
    """The server's resident pages of mapped files (shared libraries), as (address, length) runs.

    A fork copies the page tables of anonymous memory only, so a forked rank starts without the libraries'
    pages the imports touched: its resident set, and so its peak, would read about 80 MB below a fresh
    rank's. The rank reads one byte of each of these pages at once (touch_runs), which maps them again.
    The present bit of /proc/self/pagemap is readable without privileges (the frame numbers are not).
    """
    page = os.sysconf("SC_PAGE_SIZE")
    runs: list[tuple[int, int]] = []
    with open("/proc/self/maps") as maps, open("/proc/self/pagemap", "rb") as pagemap:
        for line in maps:
            fields = line.split()
            if len(fields) < 6 or not fields[5].startswith("/") or not fields[1].startswith("r"):
                continue
            low, high = (int(x, 16) for x in fields[0].split("-"))
            pagemap.seek(low // page * 8)
            entries = pagemap.read((high - low) // page * 8)
            for i, (entry,) in enumerate(struct.iter_unpack("Q", entries)):
                if entry >> 63:
                    address = low + i * page
                    if runs and runs[-1][0] + runs[-1][1] == address:
                        runs[-1] = (runs[-1][0], runs[-1][1] + page)
                    else:
                        runs.append((address, page))
    return runs


def touch_runs(runs: list[tuple[int, int]]) -> None:
    """Map the pages of `runs` into this process (a read of each; the copy is thrown away)."""
    for address, length in runs:
        ctypes.string_at(address, length)


WARM_SWITCH = "TUNER_WARM_START"
TITLE_ROOM = 4096  # bytes of command line the server reserves (warm.py) for the titles of what it forks


def set_title(title: str) -> None:
    """Rewrite this process's command line (what ps and /proc/PID/cmdline show), as setproctitle does.

    A forked rank would otherwise show the server's command line: it is named like a torchrun rank, with
    its spec's path, so whatever finds a trial's processes by their command line finds these too. The
    argument area's bounds are fields 48-49 of /proc/self/stat; the server's command line carries room.
    """
    with open("/proc/self/stat") as stat:
        text = stat.read()
    fields = text[text.rindex(")") + 2 :].split()  # from field 3 (state) on
    start, end = int(fields[48 - 3]), int(fields[49 - 3])  # arg_start, arg_end
    data = title.encode()[: end - start - 1]
    ctypes.memmove(start, data + b"\0" * (end - start - len(data)), end - start)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _rank_env(env: dict[str, str], rank: int, ranks: int, port: int) -> dict[str, str]:
    """The variables torchrun --standalone sets for a rank on one node (torch/distributed/elastic/agent)."""
    out = dict(env)
    names = ("RANK", "LOCAL_RANK", "GROUP_RANK", "ROLE_RANK")
    out.update({k: str(rank if k != "GROUP_RANK" else 0) for k in names})
    out.update(WORLD_SIZE=str(ranks), LOCAL_WORLD_SIZE=str(ranks), ROLE_WORLD_SIZE=str(ranks), GROUP_WORLD_SIZE="1")
    out.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), ROLE_NAME="default", TORCHELASTIC_RESTART_COUNT="0")
    out.update(TORCHELASTIC_MAX_RESTARTS="0", TORCHELASTIC_RUN_ID="tuner-warm", TUNER_WARM_RANK="1")
    return out


def _run_rank(spec_path: str, env: dict[str, str], runs: list[tuple[int, int]]) -> int:
    """One rank in the forked child: the server's resident set, the environment torchrun would give it, then
    the worker's main."""
    touch_runs(runs)
    set_title(f"{sys.executable} -m tuner.trial.worker {spec_path}")
    os.environ.clear()
    os.environ.update(env)
    import torch

    if torch.cuda._is_in_bad_fork():
        raise RuntimeError("CUDA was initialised in the warm server before it forked this rank")
    torch.set_num_threads(int(env.get("OMP_NUM_THREADS", "1")))  # the server's pool was never started
    from tuner.trial import worker

    return worker.main([spec_path])


def _stop(pids: dict[int, int], log: Any) -> None:
    """SIGTERM the ranks still running, SIGKILL them after the grace, as torchrun's agent does."""
    for sig, grace in ((signal.SIGTERM, TERM_GRACE_S), (signal.SIGKILL, 0.0)):
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + grace
        while pids and time.monotonic() < deadline:
            _reap(pids, log)
            time.sleep(0.05)


def _reap(pids: dict[int, int], log: Any) -> list[int]:
    """Collect ended ranks; returns their exit codes (negative: the signal) and logs the failed ones."""
    codes = []
    for pid in list(pids):
        done, status = os.waitpid(pid, os.WNOHANG)
        if done == 0:
            continue
        code = os.waitstatus_to_exitcode(status)
        if code != 0:
            log.write(f"tuner warm: rank {pids[pid]} failed, exitcode : {code} (pid: {pid})\n")
            log.flush()
        del pids[pid]
        codes.append(code)
    return codes


def lead(conn: socket.socket, request: dict[str, Any], runs: list[tuple[int, int]]) -> int:
    """The trial's leader (torchrun's part): a new session, the ranks forked, their fate sent back."""
    os.setsid()
    set_title(f"tuner.trial.warm_leader {request['spec']}")
    fd = os.open(request["log"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    for out in (1, 2):
        os.dup2(fd, out)
    os.chdir(request["cwd"])
    log = sys.stdout
    ranks, port = int(request["ranks"]), _free_port()
    log.write(f"tuner: {ranks} rank(s) forked from a pre-imported process ({WARM_SWITCH}=0: torchrun)\n")
    log.flush()
    conn.sendall(json.dumps({"pid": os.getpid()}).encode() + b"\n")
    pids: dict[int, int] = {}
    for rank in range(ranks):
        pid = os.fork()
        if pid == 0:
            conn.close()
            code = 1
            try:
                code = _run_rank(request["spec"], _rank_env(request["env"], rank, ranks, port), runs)
            finally:
                os._exit(code)
        pids[pid] = rank
    returncode = 0
    while pids:
        if any(code != 0 for code in _reap(pids, log)):
            returncode = 1
            _stop(pids, log)
            break
        readable, _, _ = select.select([conn], [], [], 0.05)
        if readable and not conn.recv(1):  # the launcher is gone: no rank may outlive it
            _stop(pids, log)
            return 1
    conn.sendall(json.dumps({"returncode": returncode}).encode() + b"\n")
    return returncode
