"""Trials a killed search left RUNNING: each trial records which `tuner search` owns it, and a rerun reclaims
the ones whose owner is gone (FAIL `interrupted`), so their points run again and nothing stays RUNNING.

On this host the owner's process says whether it is gone. A search on another host is judged by its
trials' heartbeats (tuner.heartbeat): silent for longer than the grace period, it is gone. Trials without
any heartbeat (a study from before them) owned elsewhere are left as they are.
"""

from __future__ import annotations

import socket

import optuna
import psutil
from optuna.exceptions import UpdateFinishedTrialError
from optuna.trial import TrialState

from tuner.heartbeat import HeartbeatSettings, heartbeat_ages
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


def reclaim_orphans(study: optuna.Study, grace_s: float = HeartbeatSettings.grace_s) -> tuple[list[int], list[int]]:
    """Trials left RUNNING by a search that was killed end as FAIL `interrupted`, so their points run again.

    Returns the trials reclaimed, and those left RUNNING because their search may still run on another host
    (its heartbeat is younger than `grace_s`, or its trials have none).
    """
    reclaimed, foreign = [], []
    unfinished = study.get_trials(deepcopy=False, states=(TrialState.RUNNING, TrialState.WAITING))
    ages = heartbeat_ages(study, [t._trial_id for t in unfinished])
    for t in unfinished:
        tag = t.user_attrs.get(OWNER)
        alive = owner_alive(tag) if isinstance(tag, str) else False
        age = ages.get(t._trial_id)
        if alive is None and (age is None or age <= grace_s):
            foreign.append(t.number)
            continue
        if alive:
            continue  # another search on this machine is running it
        if alive is None:
            why = f"the tuner search that ran it ({tag}) recorded no heartbeat for {age:.0f} s (grace {grace_s:g} s)"
        else:
            why = f"the tuner search that ran it ({tag or 'unknown'}) ended without recording it"
        if _fail(study, t._trial_id, why):
            reclaimed.append(t.number)
    return reclaimed, foreign


def _fail(study: optuna.Study, trial_id: int, why: str) -> bool:
    """Record the trial FAIL `interrupted` with `why`; False when something else ended it meanwhile."""
    storage = study._storage
    try:
        storage.set_trial_user_attr(trial_id, "failure_category", INTERRUPTED)
        storage.set_trial_user_attr(trial_id, "failure_reason", why)
        return storage.set_trial_state_values(trial_id, TrialState.FAIL)
    except UpdateFinishedTrialError:
        return False
