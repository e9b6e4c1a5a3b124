"""Heartbeats of the trials a search has in flight, so that a search killed on one host leaves trials that a
rerun on any host can reclaim (tuner.orphans), instead of trials RUNNING forever.

Optuna has heartbeats, but wires them into `Study.optimize` only, and this search drives ask/tell:
- `RDBStorage(heartbeat_interval=...)` starts nothing by itself: the thread that records beats is started by
  optimize's `_run_trial` (optuna/study/_optimize.py, `get_heartbeat_thread`), and every `study.ask()` outside
  optimize warns that heartbeats are meant for it (optuna/study/study.py, `ask`).
- `optuna.storages.fail_stale_trials(study)` does work under ask/tell, but only on a storage opened with an
  interval, and it fails a trial without a reason that could ever be added: a finished trial's attributes
  are read-only (`check_trial_is_updatable` in `RDBStorage._set_trial_attr_without_commit`).
- What serves ask/tell is the part underneath: `RDBStorage.record_heartbeat(trial_id)` writes the trial's row of
  Optuna's `trial_heartbeats` table, stamped with the database's own `now()`.
So `Heartbeats` records a beat for every trial in flight from a thread of the search process, and
`heartbeat_ages` reads the rows back on the same database clock (the query `RDBStorage._get_stale_trial_ids`
makes, with the ages), so no host's clock enters. The rows are Optuna's own: `fail_stale_trials` on a
storage opened with an interval sees the same beats.
"""

from __future__ import annotations

import math
import os
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import optuna
import sqlalchemy
from optuna.storages import RDBStorage
from optuna.trial import Trial

from tuner.errors import SpaceError
from tuner.trial.failures import one_line

INTERVAL_ENV = "TUNER_HEARTBEAT_INTERVAL_S"
GRACE_ENV = "TUNER_HEARTBEAT_GRACE_S"

# Optuna's table (optuna/storages/_rdb/models.py, TrialHeartbeatModel): one row per trial, its last beat.
_BEATS = sqlalchemy.table(
    "trial_heartbeats",
    sqlalchemy.column("trial_id", sqlalchemy.Integer),
    sqlalchemy.column("heartbeat", sqlalchemy.DateTime),
)


@dataclass(frozen=True)
class HeartbeatSettings:
    """How often a search records that its trials are alive, and how long a silence means it is gone.

    interval_s (30 s): one small write per trial in flight per interval (eight trials at once: one write
    every 4 s), nothing beside what optuna-dashboard reads from the same database.
    grace_s (300 s, ten intervals): longer than a live search's beats can be held up (SQLite waits up to 60 s
    for a lock, a managed PostgreSQL fails over in a minute or two), so a trial is never taken from a search
    that still runs, and short beside the hours a search on a cluster takes. A rerun sooner than that after a
    kill leaves the trial RUNNING and says so; a later rerun reclaims it.
    They are set here and nowhere else; TUNER_HEARTBEAT_INTERVAL_S and TUNER_HEARTBEAT_GRACE_S (seconds)
    override them. A rerun judges other searches' trials by its own grace: give every host the same values.
    """

    interval_s: float = 30.0
    grace_s: float = 300.0

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> HeartbeatSettings:
        values = {}
        for name, key in (("interval_s", INTERVAL_ENV), ("grace_s", GRACE_ENV)):
            if key in env:
                try:
                    values[name] = float(env[key])
                except ValueError:
                    values[name] = -1.0
                if not values[name] > 0:
                    raise SpaceError(key, f"must be a positive number of seconds, got {env[key]!r}")
        settings = cls(**values)
        if settings.grace_s <= settings.interval_s:
            raise SpaceError(GRACE_ENV, f"must be longer than the interval ({settings.interval_s:g} s)")
        return settings


def _rdb(study: optuna.Study) -> RDBStorage | None:
    """The study's SQL storage under Optuna's cache, or None (an in-memory study has no heartbeats)."""
    storage = getattr(study._storage, "_backend", study._storage)
    return storage if isinstance(storage, RDBStorage) else None


def heartbeat_ages(study: optuna.Study, trial_ids: Iterable[int]) -> dict[int, float]:
    """Seconds since each trial's last heartbeat, by the database's clock; trials never beating are absent."""
    storage, ids = _rdb(study), list(trial_ids)
    if storage is None or not ids:
        return {}
    with storage.engine.connect() as connection:
        now = connection.execute(sqlalchemy.select(sqlalchemy.func.now())).scalar_one()
        rows = connection.execute(
            sqlalchemy.select(_BEATS.c.trial_id, _BEATS.c.heartbeat).where(_BEATS.c.trial_id.in_(ids))
        ).all()
    now = now.replace(tzinfo=None)  # as Optuna does: PostgreSQL's now() is zoned, the column is not
    return {int(trial_id): (now - beat).total_seconds() for trial_id, beat in rows}


class Heartbeats:
    """A daemon thread that records a heartbeat for each trial `in_flight()` returns: at once for a trial it has
    not seen (within a tick of a second), then every interval. Warnings go to `on_event` ("warning").

    `in_flight` is called from the thread: it must return a copy (a list), not a live view.
    """

    def __init__(
        self,
        study: optuna.Study,
        in_flight: Callable[[], Iterable[Trial]],
        settings: HeartbeatSettings,
        on_event: Callable[[str, dict[str, Any]], None] = lambda *_: None,
    ) -> None:
        self.study, self.in_flight, self.settings, self.on_event = study, in_flight, settings, on_event
        self.tick_s = min(1.0, settings.interval_s)
        self._last: dict[int, float] = {}  # trial id -> when its last beat was recorded (monotonic)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="tuner-heartbeats", daemon=True)

    def start(self) -> None:
        if _rdb(self.study) is not None:
            self._thread.start()

    def stop(self) -> None:
        """End the thread; a beat held up by a database lock is not waited for long (the thread is a daemon)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)

    def beat(self, now: float | None = None) -> int:
        """Record the beats due: trials in flight not seen before or last beaten an interval ago; how many."""
        now = time.monotonic() if now is None else now
        ids = [trial._trial_id for trial in self.in_flight()]
        self._last = {i: t for i, t in self._last.items() if i in ids}  # finished trials are forgotten
        due = [i for i in ids if now - self._last.get(i, -math.inf) >= self.settings.interval_s]
        for trial_id in due:
            self.study._storage.record_heartbeat(trial_id)  # type: ignore[attr-defined]
            self._last[trial_id] = now
        return len(due)

    def _run(self) -> None:
        failing = False
        while not self._stop.is_set():
            try:
                self.beat()
                failing = False
            except Exception as exc:  # the database away for a moment: say so once, keep trying
                if not failing:
                    self.on_event("warning", {"message": f"could not record a heartbeat: {one_line(exc)}"})
                failing = True
            self._stop.wait(self.tick_s)
