"""Trials a killed search left RUNNING: each trial records which `tuner search` owns it, and a rerun reclaims
the ones whose owner is gone (FAIL `interrupted`), so their points run again and nothing stays RUNNING.
"""

from __future__ import annotations

import socket

import optuna
import psutil
from optuna.trial import TrialState

from tuner.trial.failures import Failure

INTERRUPTED = Failure.INTERRUPTED
OWNER = "owner"  # host:pid:start time of the `tuner search` that asked for the trial


def owner_tag() -> str:
    """This process as the owner of the trials it asks for (a pid alone can be reused after a crash)."""
    me = psutil.Process()
    return f"{socket.gethostname()}:{me.pid}:{me.create_time():.0f}"


def owner_alive(tag: str) -> bool | None:
    """Whether the search that owns a RUNNING trial still runs; None when it ran on another host."""
    try:
        host, pid, started = tag.rsplit(":", 2)
        if host != socket.gethostname():
            return None
        return abs(psutil.Process(int(pid)).create_time() - float(started)) < 2
    except (ValueError, psutil.NoSuchProcess, psutil.AccessDenied):
        return False


def reclaim_orphans(study: optuna.Study) -> tuple[list[int], list[int]]:
    """Trials left RUNNING by a search that was killed end as FAIL `interrupted`, so their points run again.

    Returns the trials reclaimed, and those left RUNNING because their search may still run on another host.
    """
    reclaimed, foreign = [], []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING, TrialState.WAITING)):
        tag = t.user_attrs.get(OWNER)
        alive = owner_alive(tag) if isinstance(tag, str) else False
        if alive is None:
            foreign.append(t.number)
            continue
        if alive:
            continue  # another search on this machine is running it
        storage = study._storage
        storage.set_trial_user_attr(t._trial_id, "failure_category", INTERRUPTED)
        why = f"the tuner search that ran it ({tag or 'unknown'}) ended without recording it"
        storage.set_trial_user_attr(t._trial_id, "failure_reason", why)
        storage.set_trial_state_values(t._trial_id, TrialState.FAIL)
        reclaimed.append(t.number)
    return reclaimed, foreign
