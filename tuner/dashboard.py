"""`tuner dashboard`: optuna-dashboard on the study's storage, bound to 127.0.0.1 unless told otherwise.

optuna-dashboard has no authentication, so binding to another interface is the user's explicit choice
(--host) and is warned about. The storage is opened the way `tuner search` opens it (SQLite with a lock
timeout), so the dashboard can read while a search writes.
"""

from __future__ import annotations

import socket
from collections.abc import Callable

from tuner.errors import SpaceError
from tuner.store import open_storage, redact

DEFAULT_HOST = "127.0.0.1"
LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")


def check_port(host: str, port: int) -> None:
    """A port already taken (or a host this machine cannot bind) is the user's error, before anything starts."""
    if not 0 < port < 65536:
        raise SpaceError("--port", f"must be between 1 and 65535, got {port}")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise SpaceError("--port", f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None


def address(host: str, port: int) -> str:
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}/dashboard/"


def serve(url: str, host: str, port: int, say: Callable[[str], None]) -> None:
    """Check the storage and the port, tell the user where to look, then serve until interrupted."""
    import optuna
    from optuna_dashboard import run_server

    check_port(host, port)  # before the store is opened: a SQLite one is created when missing
    storage = open_storage(url, "--storage")
    studies = [s.study_name for s in optuna.get_all_study_summaries(storage, include_best_trial=False)]
    say(f"optuna-dashboard on {redact(url)} ({len(studies)} stud{'y' if len(studies) == 1 else 'ies'})")
    if host not in LOCAL_HOSTS:
        say(f"warning: listening on {host}: optuna-dashboard has no login, anyone who can reach this port sees it")
    say(f"open {address(host, port)}  (Ctrl-C to stop)")
    run_server(storage, host=host, port=port)
