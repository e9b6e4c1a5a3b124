"""A study as one pandas table: one row per trial, best first (tuner.ranking), with every figure the store holds.

`tuner results` prints or writes it, the HTML report plots from it, and reviewers load the CSV, JSON or
Parquet into their own notebooks. Rows are the trials that ran or were judged (COMPLETE, FAIL, PRUNED, and
RUNNING while a search is live); the records of points TPE proposed twice are left out (`duplicate_of`).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import optuna
from optuna.trial import TrialState

from tuner.cost import HOURLY, SAMPLES_COST, TOKENS_COST
from tuner.errors import SpaceError
from tuner.knobs import BY_NAME, MAIN_NAMES
from tuner.parallel import LENGTH, SP, TP, data_parallel
from tuner.points import COMM_PREFIX
from tuner.ranking import Ranked, best_per_length, objective_names, rank_study
from tuner.store import CHECK_OF, REPEAT_OF, check_trials, pareto_front

if TYPE_CHECKING:
    import pandas as pd

FORMATS = ("table", "csv", "json", "parquet")
COST_FIGURES = (TOKENS_COST, SAMPLES_COST, HOURLY)  # a priced study's (tuner.cost)
POINT_COLUMNS = MAIN_NAMES  # one column per main knob (tuner.knobs); communication knobs as comm_<knob>
FIGURES = (
    "tokens_per_s", "samples_per_s", "step_time_s", "step_time_cv", "measured_steps", "noisy", "stopped_early",
    "tflops_per_device", "mfu", "peak_mem_gb", "peak_reserved_gb", "host_mem_gb", "predicted_mem_gb",
    "predicted_raw_mem_gb", "predicted_host_mem_gb", "device_overhead_gb", "device_total_gb", "first_loss",
    "final_loss", "trial_duration_s", "fixed_overhead_s", "overhead_share", "startup_s", "build_s", "initialize_s",
    "warmup_s", "threads_per_rank", "num_parameters", "trainable_parameters", *COST_FIGURES,
)  # fmt: skip
TEXT = (
    "failure_category", "failure_reason", "prune_reason", "memory_calibration", "log_path", "log_host", "device_name",
    "step_timing", "rank_start",
)  # fmt: skip


def _row(ranked: Ranked, names: list[str], front: set[int], ranks: int | None, best_at: set[int]) -> dict[str, Any]:
    trial = ranked.trial
    a = trial.user_attrs
    row: dict[str, Any] = {"number": trial.number, "state": trial.state.name, "point": a.get("point", "")}
    row["rank"] = ranked.rank
    for key in POINT_COLUMNS:  # a knob the point leaves out is at its neutral value (tp 1, no tiling)
        row[key] = trial.params.get(key, BY_NAME[key].neutral)
    row["data_parallel_size"] = data_parallel(trial.params, ranks) if ranks else None
    row["best_at_length"] = trial.number in best_at if best_at else None
    for key, value in sorted(trial.params.items()):
        if key.startswith(COMM_PREFIX):
            row[key] = json.dumps(value) if isinstance(value, (list, dict)) else value
    values = trial.values if trial.state == TrialState.COMPLETE and trial.values else [None] * len(names)
    for name, value in zip(names, values, strict=False):
        row[f"objective_{name}"] = value
    row["mean_of_measurements"] = ranked.mean if ranked.measurements > 1 else None
    row["measurements"] = ranked.measurements
    row[REPEAT_OF] = a.get(REPEAT_OF)
    row[CHECK_OF] = a.get(CHECK_OF)
    for key in FIGURES:
        value = a.get(key)
        row[key] = float(value) if isinstance(value, (int, float)) else None
    for key in TEXT:
        row[key] = a.get(key)
    row["nodes"] = " ".join(a.get("nodes") or []) or None  # where the ranks ran, node 0 first
    row["on_pareto_front"] = trial.number in front if len(names) > 1 else None
    row["started"] = trial.datetime_start
    row["completed"] = trial.datetime_complete
    return row


def results_frame(study: optuna.Study, checks: bool = False) -> pd.DataFrame:
    """One row per trial in the study's ranking (tuner.ranking): completed points best first by the mean of
    their measurements, each followed by its re-measurements; then running, failed and pruned trials; and with
    `checks`, last and unranked, the `tuner check --record` re-runs of an exported trial (`check_of`)."""
    import pandas as pd

    names = objective_names(study)
    front = {t.number for t in pareto_front(study)} if len(names) > 1 else set()
    ranking = rank_study(study)
    unranked = [Ranked(t, None, None, 0, represents=False) for t in check_trials(study)] if checks else []
    ranks = (study.user_attrs.get("space") or {}).get("hardware", {}).get("gpus_per_trial")
    best_at = {r.number for r in best_per_length(ranking).values()}
    frame = pd.DataFrame([_row(r, names, front, ranks, best_at) for r in ranking + unranked])
    if not frame.empty:
        frame["rank"] = frame["rank"].astype("Int64")
    return frame


def write_results(
    frame: pd.DataFrame, fmt: str, output: Path | None, table: Callable[[pd.DataFrame], str] | None = None
) -> str | None:
    """Write `frame` in `fmt` to `output`, or return it as text for stdout (not parquet, which is binary);
    `table` writes the table format (default: table_text)."""
    if fmt not in FORMATS:
        raise SpaceError("--format", f"must be one of {', '.join(FORMATS)}, got {fmt!r}")
    if fmt == "parquet" and output is None:
        raise SpaceError("--output", "parquet is binary: name a file to write it to")
    if fmt == "parquet":
        assert output is not None
        output.parent.mkdir(parents=True, exist_ok=True)
        frame.to_parquet(output, index=False)
        return None
    if fmt == "csv":
        text = frame.to_csv(index=False)
    elif fmt == "json":
        text = frame.to_json(orient="records", date_format="iso", indent=2) + "\n"
    else:
        text = (table or table_text)(frame)
    if output is None:
        return text
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(text)
    return None


TABLE_COLUMNS = (
    "number", "point", "state", "rank", "tokens_per_s", "step_time_s", "step_time_cv", "peak_mem_gb",
    "predicted_mem_gb", "measurements", "failure_category", "failure_reason", "prune_reason",
)  # fmt: skip


PARALLEL_COLUMNS = {TP: "tp", SP: "sp", "data_parallel_size": "dp"}  # shown where the study searched tp or sp


def searched_parallelism(frame: pd.DataFrame) -> bool:
    """Whether any trial of `frame` ran tensor or sequence parallelism (its tp, sp and dp columns are shown)."""
    return any(column in frame and (frame[column].fillna(1) > 1).any() for column in (TP, SP))


def table_columns(frame: pd.DataFrame) -> list[str]:
    """The columns a reviewer reads first (the text table's and the report's); the tensor-, sequence- and
    data-parallel sizes where the study searched tp or sp; a priced study's cost beside tokens/s."""
    columns = list(TABLE_COLUMNS)
    if TOKENS_COST in frame and frame[TOKENS_COST].notna().any():  # a priced study: its cost beside tokens/s
        columns.insert(columns.index("tokens_per_s") + 1, TOKENS_COST)
    if searched_parallelism(frame):
        columns[3:3] = [c for c in PARALLEL_COLUMNS if c in frame.columns]  # after number, point, state
    if CHECK_OF in frame and frame[CHECK_OF].notna().any():  # `tuner check --record` re-runs, unranked
        columns.insert(columns.index("rank") + 1, CHECK_OF)
    return [c for c in columns if c in frame.columns]


def per_length_lines(frame: pd.DataFrame) -> list[str]:
    """`sequence_length N: trial T POINT` for the best at each length, where the study searched several."""
    if "best_at_length" not in frame or not frame["best_at_length"].fillna(False).astype(bool).any():
        return []
    best = frame[frame["best_at_length"].fillna(False).astype(bool)].sort_values(LENGTH)
    return [f"sequence_length {int(r[LENGTH])}: trial {r['number']} {r['point']}" for _, r in best.iterrows()]


def table_text(frame: pd.DataFrame) -> str:
    """The columns a reviewer reads first, as plain aligned text (the full set is in csv/json/parquet); the
    tensor-, sequence- and data-parallel sizes where the study searched tp or sp, and the best at each
    sequence length where it searched several."""
    if frame.empty:
        return "no trials\n"
    shown = frame[table_columns(frame)].copy()
    if "rank" in shown:
        shown["rank"] = shown["rank"].astype("string").fillna("-")  # pandas prints a missing integer as <NA>
    for column in (*PARALLEL_COLUMNS, CHECK_OF):
        if column in shown:
            shown[column] = shown[column].astype("Int64").astype("string").fillna("-")
    for column in ("failure_reason", "prune_reason"):
        shown[column] = shown[column].map(lambda v: v if not isinstance(v, str) or len(v) <= 60 else v[:57] + "...")
    shown = shown.rename(columns=PARALLEL_COLUMNS)
    text = str(shown.to_string(index=False, na_rep="-", float_format=lambda v: f"{v:,.4g}")) + "\n"
    lines = per_length_lines(frame)
    if lines:
        text += "best at each sequence length:\n" + "".join(f"  {line}\n" for line in lines)
    return text
