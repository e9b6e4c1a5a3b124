"""The Optuna storage and nothing else: open it by URL, find studies and the trials worth exporting."""

from __future__ import annotations

import re
from pathlib import Path

import optuna
from optuna.storages import RDBStorage
from optuna.trial import FrozenTrial, TrialState

from tuner.calibration import Measured
from tuner.errors import SpaceError
from tuner.points import Point


def redact(url: str) -> str:
    """The URL with any password replaced, for messages and provenance files."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return url


_CREDENTIALS = re.compile(r"(\b[a-zA-Z][\w+.-]*://[^:/@\s]*:)[^@\s]+@")


def redact_text(text: str) -> str:
    """`text` with the password of every URL in it masked (a space file may hold its storage URL)."""
    return _CREDENTIALS.sub(r"\1***@", text)


def _sqlite_file(url: str) -> str | None:
    """The file a SQLite URL names ('' for an in-memory database); None for any other URL."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        parsed = make_url(url)
    except ArgumentError:
        return None
    if parsed.get_backend_name() != "sqlite":
        return None
    return "" if parsed.database in (None, "", ":memory:") else str(parsed.database)


# Drivers tried, in order, for a URL that names none; SQLAlchemy's default comes first and is used when present.
_DRIVERS = {"postgresql": ("psycopg", "psycopg2"), "mysql": ("mysqldb", "pymysql"), "mariadb": ("mysqldb", "pymysql")}
_EXTRAS = {"postgresql": "postgres", "mysql": "mysql", "mariadb": "mysql"}


def with_installed_driver(url: str, key: str = "storage") -> str:
    """`url` with a database driver that is installed: `postgresql://` means psycopg 3 to SQLAlchemy 2.x, which
    a machine with only psycopg2 lacks (and `mysql://` means mysqlclient, a C build), so a URL naming no driver
    takes whichever of the known ones imports. One that names its driver keeps it; a missing one is one line
    naming the extra to install."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError, NoSuchModuleError

    try:
        parsed = make_url(url)
    except ArgumentError:
        return url  # open_storage reports it
    backend = parsed.get_backend_name()
    if backend not in _DRIVERS:
        return url
    named = "+" in parsed.drivername
    candidates = (parsed.get_driver_name(),) if named else _DRIVERS[backend]
    for driver in candidates:
        candidate = parsed.set(drivername=f"{backend}+{driver}")
        try:
            candidate.get_dialect().import_dbapi()
        except (ImportError, NoSuchModuleError):
            continue
        return url if named or driver == candidates[0] else candidate.render_as_string(hide_password=False)
    extra = f'pip install "tuner[{_EXTRAS[backend]}]"'
    if named and candidates[0] not in _DRIVERS[backend]:  # a driver the extras do not ship: the user's own
        extra = f"pip install {candidates[0]}, or leave the driver out ({backend}://...) after {extra}"
    raise SpaceError(
        key, f"no {backend} driver is installed for {redact(url)} (tried {', '.join(candidates)}): {extra}"
    )


def preload_storage_modules() -> None:
    """Import what opening an RDBStorage imports (Alembic with Mako and Pygments: 0.3-0.5 s, 280 modules), on
    the thread `tuner search` runs its checks on while Ray starts, so the study is created without them."""
    import alembic.command
    import alembic.config
    import alembic.migration
    import alembic.script  # noqa: F401


def open_storage(url: str, key: str = "storage", existing: bool = False) -> RDBStorage:
    """Connect (creating Optuna's tables if needed); an unusable URL is the user's error, on one line.

    `existing`: a store to read from, so a SQLite file that is not there is an error rather than a new,
    empty file (a command run in the wrong folder would otherwise leave one behind).
    """
    path = _sqlite_file(url) if existing else None
    if path == "":
        raise SpaceError(key, f"an in-memory SQLite store ({url}) holds no study: name the search's file")
    if path is not None and not Path(path).is_file():
        raise SpaceError(key, f"no SQLite store at {path}: tuner search writes it; or name another with --storage")
    url = with_installed_driver(url, key)
    engine_kwargs: dict[str, object] = {"pool_pre_ping": True}
    if url.startswith("sqlite"):
        # Wait for a lock instead of failing at once when optuna-dashboard reads the same file.
        engine_kwargs = {"connect_args": {"timeout": 60}}
    try:
        return RDBStorage(url, engine_kwargs=engine_kwargs)
    except Exception as exc:
        detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise SpaceError(key, f"cannot open storage {redact(url)}: {detail}") from None


def load_study(storage: RDBStorage, name: str, key: str = "--study") -> optuna.Study:
    """An existing study; a missing name lists the ones that exist."""
    names = [s.study_name for s in optuna.get_all_study_summaries(storage, include_best_trial=False)]
    if name not in names:
        known = ", ".join(sorted(names)) or "none"
        raise SpaceError(key, f"no study named {name!r} in this storage; studies: {known}")
    return optuna.load_study(study_name=name, storage=storage)


CHECK_OF = "check_of"  # `tuner check --record`: a re-run of an exported trial, after the search


def measured_trials(study: optuna.Study, states: tuple[TrialState, ...] | None = None) -> list[FrozenTrial]:
    """Trials the search ran, leaving out the records of points TPE proposed twice (`duplicate_of`) and the
    checks of an exported config (`check_of`): measured later, perhaps on other versions, they must neither
    rank, nor calibrate the memory model, nor count as a point measured."""
    return [
        t
        for t in study.get_trials(deepcopy=False, states=states)
        if "duplicate_of" not in t.user_attrs and CHECK_OF not in t.user_attrs
    ]


def check_trials(study: optuna.Study) -> list[FrozenTrial]:
    """The checks `tuner check --record` kept in the study, in trial order."""
    return [t for t in study.get_trials(deepcopy=False) if CHECK_OF in t.user_attrs]


REPEAT_OF = "repeat_of"  # a re-measurement of the point of an earlier trial (guided, near the best)


def original_number(trial: FrozenTrial) -> int:
    """The number of the trial that first measured this trial's point."""
    return int(trial.user_attrs.get(REPEAT_OF, trial.number))


def pareto_front(study: optuna.Study) -> list[FrozenTrial]:
    """The measured trials no other trial beats on every objective (Optuna's best_trials), by number."""
    if not check_trials(study):
        return sorted((t for t in study.best_trials if "duplicate_of" not in t.user_attrs), key=lambda t: t.number)
    # Optuna's own front over the search's trials alone (a check must not push the trial it checks off it).
    from optuna.study._constrained_optimization import _is_constrained_optimization
    from optuna.study._multi_objective import _get_pareto_front_trials_by_trials

    trials = measured_trials(study)
    front = _get_pareto_front_trials_by_trials(trials, study.directions, _is_constrained_optimization(trials))
    return sorted(front, key=lambda t: t.number)


def enforced_peak_gb(attrs: dict[str, object]) -> float | None:
    """The peak the memory budget enforces: the allocator's reserved peak on a GPU (the cap limits reserved
    memory), the resident peak on CPU (recorded in both fields there)."""
    for key in ("peak_reserved_gb", "peak_mem_gb"):
        value = attrs.get(key)
        if isinstance(value, (int, float)):
            return float(value)
    return None


def measured_memory(study: optuna.Study) -> list[Measured]:
    """Completed trials' points and memory figures: what calibrates the memory model."""
    out = []
    for t in measured_trials(study, (TrialState.COMPLETE,)):
        peak = enforced_peak_gb(t.user_attrs)
        if t.params and peak is not None:
            overhead = t.user_attrs.get("device_overhead_gb")
            extra = float(overhead) if isinstance(overhead, (int, float)) else 0.0
            out.append(Measured(Point.from_params(t.params), peak, extra))
    return out
