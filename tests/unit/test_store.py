"""The storage edge: opening by URL, hiding passwords. (The trial to export: tests/unit/test_ranking.py.)"""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest

from tuner.errors import SpaceError
from tuner.store import load_study, open_storage, redact


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
