"""The store on the machine's PostgreSQL (127.0.0.1:5432, database `test`): opened by URL, a study written and
read back through a second connection. Under CI (.ci/run sets CI) an unreachable PostgreSQL fails the test."""

from __future__ import annotations

import os
import uuid

import optuna
import pytest
from optuna.trial import TrialState

from tuner.errors import SpaceError
from tuner.store import load_study, open_storage

URL = "postgresql://postgres@127.0.0.1:5432/test"  # the plain form: psycopg 3, which the postgres extra installs


@pytest.mark.parametrize("driver", ["", "+psycopg", "+psycopg2"])
def test_postgresql_keeps_a_study_and_its_trials(driver: str) -> None:
    url = URL.replace("postgresql", f"postgresql{driver}", 1)
    try:
        storage = open_storage(url)
    except SpaceError as exc:
        if os.environ.get("CI"):
            pytest.fail(f"CI must run this test, but PostgreSQL is not reachable: {exc}")
        pytest.skip(f"PostgreSQL on 127.0.0.1:5432 (database test) is not reachable: {exc}")
    name = f"store-test-{uuid.uuid4().hex[:12]}"
    study = optuna.create_study(study_name=name, storage=storage, direction="maximize")
    try:
        done = study.ask()
        done.set_user_attr("tokens_per_s", 1234.5)
        study.tell(done, 1234.5)
        failed = study.ask()
        failed.set_user_attr("failure_category", "oom")
        study.tell(failed, state=TrialState.FAIL)

        again = load_study(open_storage(url), name)  # a second connection reads what the first wrote
        trials = again.get_trials()
        assert [(t.number, t.state) for t in trials] == [(0, TrialState.COMPLETE), (1, TrialState.FAIL)]
        assert trials[0].value == 1234.5 and trials[0].user_attrs == {"tokens_per_s": 1234.5}
        assert trials[1].user_attrs == {"failure_category": "oom"}
        assert again.best_trial.number == 0
        with pytest.raises(SpaceError, match=rf"no study named '{name}-absent'.*{name}"):
            load_study(storage, f"{name}-absent")
    finally:
        optuna.delete_study(study_name=name, storage=storage)


def test_mysql_by_its_plain_url_when_one_runs() -> None:
    """MariaDB on 127.0.0.1:3306 (user root, no password) where the machine runs one: `mysql://` takes PyMySQL,
    which the mysql extra installs, since SQLAlchemy's default driver (mysqlclient) is a C build."""
    import sqlalchemy

    server = sqlalchemy.create_engine("mysql+pymysql://root@127.0.0.1:3306")
    try:
        with server.connect() as connection:
            connection.execute(sqlalchemy.text("CREATE DATABASE IF NOT EXISTS tuner_test"))
    except sqlalchemy.exc.OperationalError as exc:
        pytest.skip(f"no MySQL/MariaDB on 127.0.0.1:3306: {str(exc).splitlines()[0]}")
    finally:
        server.dispose()
    storage = open_storage("mysql://root@127.0.0.1:3306/tuner_test")
    name = f"store-test-{uuid.uuid4().hex[:12]}"
    study = optuna.create_study(study_name=name, storage=storage, direction="maximize")
    try:
        study.tell(study.ask(), 42.0)
        assert load_study(open_storage("mysql://root@127.0.0.1:3306/tuner_test"), name).best_value == 42.0
    finally:
        optuna.delete_study(study_name=name, storage=storage)
