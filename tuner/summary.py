"""What `tuner search` prints when it ends: every trial, the Pareto front, the failures and the `best:` line.

All of it is laid out from one ranking (tuner.ranking), so the table's first row is the trial the `best:`
line names and `tuner export` writes, even when guided measured a point twice and one draw beat the means.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import optuna
from optuna.trial import TrialState
from rich.table import Table

from tuner.ranking import Ranked, best, best_per_length
from tuner.store import REPEAT_OF, pareto_front, redact


def _fmt(value: Any, digits: int = 1) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def summary_table(study: optuna.Study, ranking: Sequence[Ranked]) -> Table:
    """Every trial in ranking order: a point's rank on the trial that represents it, its re-measurements
    under it, and the mean when a point was measured more than once."""
    complete = sum(r.rank is not None for r in ranking)
    title = f"study {study.study_name}: {complete} complete, {len(ranking) - complete} not"
    table = Table(title=title, title_justify="left")
    repeated = any(r.measurements > 1 for r in ranking)
    numeric = ("rank", "#", "tokens/s", "TFLOP/s/dev", "step s", "cv", "peak GB", "mean (n)")
    names = ("rank", "#", "point", "state", "tokens/s", "TFLOP/s/dev", "step s", "cv", "peak GB")
    for name in (*names, *(("mean (n)",) if repeated else ()), "failure"):
        table.add_column(name, justify="right" if name in numeric else "left")
    for r in ranking:
        t, a = r.trial, r.trial.user_attrs
        mean = f"{r.mean:,.4g} ({r.measurements})" if r.represents and r.measurements > 1 else ""
        note = a.get("failure_category", "") or ("stopped early" if a.get("stopped_early") else "")
        if REPEAT_OF in a:
            note = ", ".join(filter(None, [f"repeat of #{a[REPEAT_OF]}", note]))
        table.add_row(
            str(r.rank) if r.represents else "", str(t.number), a.get("point", ""), t.state.name,
            _fmt(a.get("tokens_per_s"), 0), _fmt(a.get("tflops_per_device"), 3), _fmt(a.get("step_time_s"), 3),
            _fmt(a.get("step_time_cv"), 3) + ("!" if a.get("noisy") else ""), _fmt(a.get("peak_mem_gb"), 2),
            *((mean,) if repeated else ()), note,
        )  # fmt: skip
    return table


def front_table(study: optuna.Study, objectives: Sequence[str], ranking: Sequence[Ranked]) -> Table:
    """The Pareto front (no other trial beats these on every objective) in ranking order; pick one with
    export --trial."""
    position = {r.number: i for i, r in enumerate(ranking)}
    front = sorted(pareto_front(study), key=lambda t: position.get(t.number, len(position)))
    table = Table()
    for name in ("#", "point", *objectives):
        table.add_column(name, justify="left" if name == "point" else "right")
    for t in front:
        table.add_row(str(t.number), t.user_attrs.get("point", ""), *(f"{v:,.4g}" for v in t.values))
    return table


def failure_lines(ranking: Sequence[Ranked]) -> list[str]:
    """One line per failed trial: its reason and where its log is."""
    lines = []
    for r in ranking:
        if r.trial.state == TrialState.FAIL:
            a = r.trial.user_attrs
            log = f" (log: {a['log_path']})" if a.get("log_path") else ""
            lines.append(f"  trial {r.number} {a.get('failure_category')}: {a.get('failure_reason')}{log}")
    return lines


def best_line(ranking: Sequence[Ranked], objectives: Sequence[str], study: str, storage: str) -> str | None:
    """`best: trial N ...` and how to export it (and the best at each sequence length where the study searched
    several), or None when no trial completed."""
    top = best(ranking)
    if top is None:
        return None
    first = " (by the first objective)" if len(objectives) > 1 else ""
    lines = [
        f"best: {top.describe(objectives[0])}{first}",
        f"export it: tuner export --study {study} --storage {redact(storage)} --output ds_config.json",
    ]
    per_length = best_per_length(ranking)
    if per_length:
        lines.append("best at each sequence length (export one with --trial N):")
        lines += [f"  sequence_length {n}: {r.describe(objectives[0])}" for n, r in per_length.items()]
    return "\n".join(lines)
