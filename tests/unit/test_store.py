"""The storage edge: opening by URL, hiding passwords. (The trial to export: tests/unit/test_ranking.py.)"""

from __future__ import annotations

import sys
from pathlib import Path

import optuna
import pytest

from tuner.errors import SpaceError
from tuner.store import load_study, open_storage, redact, with_installed_driver


def test_redact_hides_the_password_only() -> None:
    shown = redact("postgresql+psycopg2://alice:s3cret@db.example:5432/tune")
    assert "s3cret" not in shown and "alice" in shown and "db.example:5432/tune" in shown
    assert redact("sqlite:///tuner.sqlite3") == "sqlite:///tuner.sqlite3"


def test_unreachable_storage_is_a_one_line_error_without_the_password() -> None:
    with pytest.raises(SpaceError) as info:
        open_storage("postgresql+psycopg2://bob:hunter2@127.0.0.1:1/none", "--storage")
    text = str(info.value)
    assert text.startswith("--storage: cannot open storage") and "\n" not in text
    assert "hunter2" not in text


def test_sqlite_opens_and_an_unknown_study_lists_the_known_ones(tmp_path: Path) -> None:
    """PostgreSQL: tests/integration/test_store_postgresql.py."""
    storage = open_storage(f"sqlite:///{tmp_path / 'a.db'}")
    optuna.create_study(study_name="s", storage=storage)
    assert load_study(storage, "s").study_name == "s"
    with pytest.raises(SpaceError, match=r"no study named 't'.*studies: s"):
        load_study(storage, "t")


@pytest.mark.parametrize(
    ("url", "missing", "used"),
    [
        ("postgresql://u:pw@db/t", (), "postgresql://u:pw@db/t"),  # SQLAlchemy 2's default, psycopg 3
        ("postgresql://u:pw@db/t", ("psycopg",), "postgresql+psycopg2://u:pw@db/t"),  # only psycopg2 installed
        ("postgresql+psycopg2://u:pw@db/t", ("psycopg",), "postgresql+psycopg2://u:pw@db/t"),  # named: kept
        ("mysql://root@db/t", ("MySQLdb",), "mysql+pymysql://root@db/t"),  # mysqlclient is a C build
        ("mariadb://root@db/t", ("MySQLdb",), "mariadb+pymysql://root@db/t"),
        ("sqlite:///a.db", ("psycopg", "psycopg2"), "sqlite:///a.db"),
    ],
)
def test_a_url_without_a_driver_takes_one_that_is_installed(
    url: str, missing: tuple[str, ...], used: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    for module in missing:
        monkeypatch.setitem(sys.modules, module, None)  # `import module` raises ImportError
    assert with_installed_driver(url) == used


@pytest.mark.parametrize(
    ("url", "advice"),
    [
        ("postgresql://bob:hunter2@db/t", 'tried psycopg, psycopg2): pip install "tuner[postgres]"'),
        ("postgresql+psycopg2://bob:hunter2@db/t", 'tried psycopg2): pip install "tuner[postgres]"'),
        ("postgresql+pg8000://bob:hunter2@db/t", "tried pg8000): pip install pg8000, or leave the driver out"),
        ("mysql://bob:hunter2@db/t", 'tried mysqldb, pymysql): pip install "tuner[mysql]"'),
    ],
)
def test_a_missing_driver_is_one_line_naming_the_extra(url: str, advice: str, monkeypatch: pytest.MonkeyPatch) -> None:
    for module in ("psycopg", "psycopg2", "pg8000", "MySQLdb", "pymysql"):
        monkeypatch.setitem(sys.modules, module, None)
    with pytest.raises(SpaceError) as info:
        open_storage(url, "--storage")
    text = str(info.value)
    assert text.startswith("--storage: no ") and advice in text and "\n" not in text and "hunter2" not in text
