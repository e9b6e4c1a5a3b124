"""Starting Ray for a search, or joining a cluster: the one part of Ray a search needs before its imports.

`tuner search` can start Ray before it imports Ray Tune, Optuna and the searcher, which then run while Ray's
processes come up (this module imports nothing heavy); it starts Ray lean: on 2 cores, start-up is CPU-bound.
"""

from __future__ import annotations

import inspect
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from tuner.errors import SpaceError
from tuner.trial.failures import one_line


def _check_reachable(address: str) -> None:
    """A HOST:PORT that does not answer is reported at once (Ray itself retries for minutes)."""
    host, _, port = address.rpartition(":")
    if "://" in address or address in ("auto", "local"):
        return  # Ray refuses these at once itself
    if not host or not port.isdigit():
        raise SpaceError("--address", f"auto, HOST:PORT or ray://HOST:PORT is allowed, not {address!r}")
    try:
        socket.create_connection((host, int(port)), timeout=5).close()
    except OSError as exc:
        raise SpaceError("--address", f"no Ray cluster answers at {address}: {one_line(exc)}") from None


# A Ray started for one search runs no default workers before they are asked for: Tune's trial actors carry
# a runtime environment of their own (PL_DISABLE_FORK), so the workers Ray prestarts (one per CPU) are never
# used by a search and cost 0.5 CPU-seconds each while the search starts.
LEAN_SYSTEM_CONFIG = {"prestart_worker_first_driver": False, "enable_worker_prestart": False}


# Every worker of a search's own Ray imports Ray Tune and the trainable as it starts, so a worker started
# early (tuner.trial.trainable.prewarm_trial_worker, right after ray.init) is ready when the first trial's actor
# comes to it.
PREIMPORT_HOOK = "tuner.trial.trainable.preimport_trial_modules"


@contextmanager
def lean_head(enabled: bool = True) -> Iterator[None]:
    """While starting a Ray of the search's own: no autoscaler monitor (a local cluster never scales), no log
    monitor (it streams workers' output to drivers, which `log_to_driver=False` turns off) and no dashboard
    head (`include_dashboard=False` still starts its minimal API server; a search never asks it anything):
    0.6-0.75 CPU-seconds each of a 2-core machine's start-up. `ray.init` has no option for any of them, so the
    head's RayParams get the first two (ray/_private/parameter.py, as `ray start` passes them) and the node
    skips the third (ray/_private/node.py); a Ray without those parts starts as it is."""
    from ray._private import node, parameter

    original_params = parameter.RayParams.__init__
    original_api = getattr(node.Node, "start_api_server", None)
    names = inspect.signature(original_params).parameters
    if not enabled or "no_monitor" not in names or "include_log_monitor" not in names or original_api is None:
        yield
        return

    def lean(self: Any, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("no_monitor", True)
        kwargs.setdefault("include_log_monitor", False)
        original_params(self, *args, **kwargs)

    def no_api_server(self: Any, **_: Any) -> None:
        return None

    parameter.RayParams.__init__ = lean  # type: ignore[method-assign]
    node.Node.start_api_server = no_api_server  # type: ignore[method-assign]
    try:
        yield
    finally:
        parameter.RayParams.__init__ = original_params  # type: ignore[method-assign]
        node.Node.start_api_server = original_api  # type: ignore[method-assign]


def connect_ray(address: str | None, accelerator: str, ranks: int) -> None:
    """Join the cluster at `address`, or start Ray on this machine; a cluster out of reach is bad input."""
    import ray

    if ray.is_initialized():
        return
    init_kwargs: dict[str, Any] = {
        "include_dashboard": False,
        "log_to_driver": False,
        "logging_level": "ERROR",
        "configure_logging": True,
    }
    if address:
        _check_reachable(address)
        init_kwargs["address"] = address
    else:  # a Ray of its own, even where this machine is a node of a running cluster
        init_kwargs["address"] = "local"
        init_kwargs["_system_config"] = LEAN_SYSTEM_CONFIG
        init_kwargs["runtime_env"] = {"worker_process_setup_hook": PREIMPORT_HOOK}
        if accelerator == "cpu":
            init_kwargs["num_cpus"] = max(os.cpu_count() or 1, ranks)  # a trial's ranks must fit somewhere
    try:
        with lean_head(enabled=not address):
            ray.init(**init_kwargs)
    except Exception as exc:  # Ray raises many kinds: refused, timed out, wrong token, version mismatch
        if not address:
            raise
        raise SpaceError("--address", f"cannot join the Ray cluster at {address}: {one_line(exc)}") from None
    if not address and ray.is_initialized():  # the first trial's worker starts now, while the driver imports
        # Tune and makes the study (not initialised: a stand-in ray.init of the tests)
        from tuner.trial.trainable import prewarm_trial_worker

        prewarm_trial_worker()
