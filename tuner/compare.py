"""`tuner results --compare`: the best of several studies side by side, one row per study.

Each study is a search of its own (its own space: GPU type, ranks, nodes, price) in the same storage; its row
is its best trial as the study's one ranking names it (tuner.ranking), with that trial's own figures. Tokens/s
per device is what carries across rank counts, the cost per token (tuner.cost) across GPU types and prices, so
the rows are ordered by cost where every study is priced, else by tokens/s per device.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import optuna

from tuner.cost import HOURLY, TOKENS_COST
from tuner.errors import SpaceError
from tuner.ranking import best, objective_names, rank_study

if TYPE_CHECKING:
    import pandas as pd

COLUMNS = (
    "study", "trial", "point", "device_name", "ranks", "nodes", "tokens_per_s", "tokens_per_s_per_device",
    "peak_mem_gb", TOKENS_COST, HOURLY, "objective", "objective_value",
)  # fmt: skip


FIGURES = ("tokens_per_s", "tokens_per_s_per_device", "peak_mem_gb", TOKENS_COST, HOURLY, "objective_value")


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def compare_row(study: optuna.Study) -> dict[str, Any]:
    """The study's best trial and where it ran; a study with no COMPLETE trial keeps its row, figures empty."""
    hardware = (study.user_attrs.get("space") or {}).get("hardware") or {}
    ranks = hardware.get("gpus_per_trial")
    row: dict[str, Any] = dict.fromkeys(COLUMNS)
    row.update(study=study.study_name, ranks=ranks, nodes=hardware.get("nodes_per_trial"))
    row.update(objective=objective_names(study)[0], device_name=study.user_attrs.get("accelerator"))
    top = best(rank_study(study))
    if top is None:
        return row
    a = top.trial.user_attrs
    row.update(trial=top.number, point=a.get("point"), objective_value=top.mean)
    row["device_name"] = a.get("device_name") or row["device_name"]  # the GPU's name; the study's kind before it
    for key in ("tokens_per_s", "peak_mem_gb", TOKENS_COST, HOURLY):
        row[key] = _number(a.get(key))
    if row["tokens_per_s"] is not None and isinstance(ranks, int) and ranks > 0:
        row["tokens_per_s_per_device"] = row["tokens_per_s"] / ranks
    return row


def compare_frame(studies: Sequence[optuna.Study]) -> pd.DataFrame:
    """One row per study: by USD per million tokens (lowest first) when every study is priced, else by tokens/s
    per device (highest first); studies without a completed trial last, in the order given."""
    import pandas as pd

    rows = [compare_row(s) for s in studies]
    priced = all(r[TOKENS_COST] is not None for r in rows)
    if priced:
        rows.sort(key=lambda r: r[TOKENS_COST])
    else:
        rows.sort(key=lambda r: (r["tokens_per_s_per_device"] is None, -(r["tokens_per_s_per_device"] or 0.0)))
    frame = pd.DataFrame(rows, columns=list(COLUMNS))
    for column in ("trial", "ranks", "nodes"):
        frame[column] = frame[column].astype("Int64")
    for column in FIGURES:
        frame[column] = frame[column].astype("float64")  # None as NaN: `-` in the table, null in JSON
    frame.attrs["ordered_by"] = f"{TOKENS_COST} (lowest first)" if priced else "tokens_per_s_per_device (highest first)"
    return frame


def compare_text(frame: pd.DataFrame) -> str:
    """The comparison as plain aligned text, with the order it follows."""
    shown = frame.copy()
    for column in ("trial", "ranks", "nodes"):
        shown[column] = shown[column].astype("string").fillna("-")
    table = shown.to_string(
        index=False, na_rep="-", float_format=lambda v: f"{v:,.0f}" if abs(v) >= 1e3 else f"{v:.4g}"
    )
    return f"{table}\nordered by {frame.attrs.get('ordered_by', 'the order given')}\n"


def study_names(names: Sequence[str]) -> list[str]:
    """The studies to compare: at least two, none twice."""
    if len(names) < 2:
        raise SpaceError("--compare", "name at least two studies to compare, e.g. --compare h100-8 a100-16")
    for index, name in enumerate(names):
        if name in names[:index]:
            raise SpaceError("--compare", f"study {name!r} is named twice")
    return list(names)
