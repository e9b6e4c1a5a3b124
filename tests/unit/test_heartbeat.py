"""Heartbeats under ask/tell (no Ray, no DeepSpeed): a search's thread beats its trials in flight into Optuna's
own table, and a rerun on another host reclaims a trial whose beats stopped, never one still beating nor one
from before heartbeats (no row)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import optuna
import pytest
import sqlalchemy
from optuna.trial import Trial, TrialState

from tuner.errors import SpaceError
from tuner.heartbeat import GRACE_ENV, INTERVAL_ENV, Heartbeats, HeartbeatSettings, heartbeat_ages
from tuner.orphans import INTERRUPTED, OWNER, reclaim_orphans
from tuner.store import open_storage

ELSEWHERE = "gpu-node-7:4242:1700000000"  # a search on another host: its process cannot be looked up from here
POSTGRESQL = "postgresql+psycopg2://postgres@127.0.0.1:5432/test"  # the machine's PostgreSQL (see test_store.py)


def search_study(url: str, name: str = "s") -> optuna.Study:
    return optuna.create_study(study_name=name, storage=open_storage(url), load_if_exists=True)


def ask(study: optuna.Study, owner: str = ELSEWHERE) -> Trial:
    trial = study.ask()
    trial.set_user_attr(OWNER, owner)
    return trial


def wait_for(check: Callable[[], bool], timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


@pytest.fixture(params=["sqlite", "postgresql"])
def connect(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Callable[[], optuna.Study]]:
    """Opens one fresh study, each call through a connection of its own (as separate processes would): in a
    SQLite file, or in the local PostgreSQL (whose clock has sub-second resolution)."""
    if request.param == "sqlite":
        yield lambda: search_study(f"sqlite:///{tmp_path / 's.db'}")
        return
    try:
        open_storage(POSTGRESQL)
    except SpaceError as exc:  # pragma: no cover - the machine's PostgreSQL is down
        pytest.skip(f"no local PostgreSQL: {exc}")
    name = f"heartbeat-{uuid.uuid4().hex[:12]}"
    yield lambda: search_study(POSTGRESQL, name)
    optuna.delete_study(study_name=name, storage=POSTGRESQL)


def test_a_rerun_on_another_host_reclaims_the_trial_whose_heartbeat_stopped(
    connect: Callable[[], optuna.Study],
) -> None:
    study = connect()
    live, stopped, legacy = ask(study), ask(study), ask(study)  # legacy: a search from before heartbeats
    in_flight = [live, stopped]
    beats = Heartbeats(study, lambda: list(in_flight), HeartbeatSettings(interval_s=0.2, grace_s=1.0))
    beats.start()
    try:
        ids = [live._trial_id, stopped._trial_id]
        wait_for(lambda: set(heartbeat_ages(study, ids)) == set(ids))  # both beaten at once, not an interval on
        in_flight.remove(stopped)  # its search is gone: no more beats
        rerun = connect()  # what a `tuner search` on this host sees, through its own connection
        wait_for(lambda: heartbeat_ages(rerun, [stopped._trial_id])[stopped._trial_id] > 1.0)
        assert heartbeat_ages(rerun, [live._trial_id])[live._trial_id] <= 1.0
        reclaimed, foreign = reclaim_orphans(rerun, grace_s=1.0)
    finally:
        beats.stop()
    assert reclaimed == [stopped.number] and foreign == [live.number, legacy.number]
    after = {t.number: t for t in rerun.get_trials()}
    assert after[stopped.number].state == TrialState.FAIL
    assert after[stopped.number].user_attrs["failure_category"] == INTERRUPTED
    reason = after[stopped.number].user_attrs["failure_reason"]
    assert ELSEWHERE in reason and "recorded no heartbeat for" in reason and "grace 1 s" in reason
    assert after[live.number].state == after[legacy.number].state == TrialState.RUNNING
    study.tell(live, 1.0)  # the live search ends its trial as usual: nothing took it away


def test_ages_are_on_the_database_clock_and_the_default_grace_is_five_minutes(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 's.db'}"
    study = search_study(url)
    old, fresh = ask(study), ask(study)
    for trial in (old, fresh):
        study._storage.record_heartbeat(trial._trial_id)  # type: ignore[attr-defined]
    engine = sqlalchemy.create_engine(url)
    with engine.begin() as connection:  # a clock moved on by an hour, for `old` only
        connection.execute(
            sqlalchemy.text(
                "UPDATE trial_heartbeats SET heartbeat = datetime(heartbeat, '-1 hour') WHERE trial_id = :i"
            ),
            {"i": old._trial_id},
        )
    engine.dispose()
    ages = heartbeat_ages(study, [old._trial_id, fresh._trial_id])
    assert 3599 <= ages[old._trial_id] <= 3610 and 0 <= ages[fresh._trial_id] < 10
    assert reclaim_orphans(study) == ([old.number], [fresh.number])  # HeartbeatSettings' grace: 300 s


def test_a_trial_is_beaten_when_first_seen_then_every_interval_and_forgotten_when_it_ends(tmp_path: Path) -> None:
    study = search_study(f"sqlite:///{tmp_path / 's.db'}")
    a, b = ask(study), ask(study)
    beaten: list[int] = []
    study._storage.record_heartbeat = beaten.append  # type: ignore[attr-defined]
    in_flight = [a]
    beats = Heartbeats(study, lambda: list(in_flight), HeartbeatSettings(interval_s=30, grace_s=300))
    assert beats.beat(now=0) == 1 and beats.beat(now=10) == 0
    in_flight.append(b)
    assert beats.beat(now=20) == 1 and beaten == [a._trial_id, b._trial_id]
    assert beats.beat(now=30) == 1 and beaten[-1] == a._trial_id  # a's interval is up, b's is not
    in_flight.remove(a)
    assert beats.beat(now=100) == 1 and beaten[-1] == b._trial_id


def test_settings_come_from_the_environment_and_bad_values_are_errors() -> None:
    assert HeartbeatSettings.from_env({}) == HeartbeatSettings(30.0, 300.0)
    assert HeartbeatSettings.from_env({INTERVAL_ENV: "0.5", GRACE_ENV: "3"}) == HeartbeatSettings(0.5, 3.0)
    for env, message in (
        ({INTERVAL_ENV: "soon"}, f"{INTERVAL_ENV}: must be a positive number of seconds, got 'soon'"),
        ({GRACE_ENV: "0"}, f"{GRACE_ENV}: must be a positive number"),
        ({INTERVAL_ENV: "60", GRACE_ENV: "30"}, f"{GRACE_ENV}: must be longer than the interval"),
    ):
        with pytest.raises(SpaceError, match=message):
            HeartbeatSettings.from_env(env)


def test_an_in_memory_study_has_no_heartbeats_and_keeps_the_same_host_rule() -> None:
    study = optuna.create_study()
    trial = ask(study)
    beats = Heartbeats(study, lambda: [trial], HeartbeatSettings())
    beats.start()
    beats.stop()
    assert heartbeat_ages(study, [trial._trial_id]) == {}
    assert reclaim_orphans(study) == ([], [trial.number])
