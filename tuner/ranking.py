"""The one ranking of a study's trials: everything that says which trial is best reads it.

`tuner search` (its progress lines, summary table and `best:` line), `tuner results`, `tuner report`,
`tuner export` and the ranking recorded on the study for optuna-dashboard all come from `rank_trials`, so
no two of them can disagree.

The rule: a point is ranked by the mean of its completed measurements (guided measures the best few points
again: trials with `repeat_of`) by the first objective, in its direction; the point's first completed trial
represents it (it is the trial `export` writes) and its re-measurements follow it; equal means go to the
point measured first. Below the completed trials come the running, failed, pruned and waiting ones, each
in trial order. The records of points TPE proposed twice (`duplicate_of`) measured nothing and are left out.
Where the study searched several sequence lengths, each length's best is the first of its length in this
same order (`best_per_length`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import optuna
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState

from tuner.parallel import LENGTH
from tuner.store import measured_trials, original_number
from tuner.trial.failures import one_line

STATE_ORDER = (TrialState.COMPLETE, TrialState.RUNNING, TrialState.FAIL, TrialState.PRUNED, TrialState.WAITING)
RANKING_SHOWN = 10  # points listed in the study's `ranking` attribute (optuna-dashboard cuts values at 1,024 chars)


@dataclass(frozen=True)
class Ranked:
    """One trial in the ranking, with what its point scored."""

    trial: FrozenTrial
    rank: int | None  # its point's place among the completed points (1 = best); None unless COMPLETE
    mean: float | None  # its point's first objective, averaged over the point's completed measurements
    measurements: int  # the point's completed measurements (0 unless COMPLETE)
    represents: bool  # the trial that stands for its point: its first completed measurement

    @property
    def number(self) -> int:
        return self.trial.number

    def describe(self, objective: str) -> str:
        """`trial 7 mb4 z1 tokens_per_s=1,234 (mean of 2 measurements)`, for the CLI and the dashboard."""
        mean = "-" if self.mean is None else f"{self.mean:,.4g}"
        times = f" (mean of {self.measurements} measurements)" if self.measurements > 1 else ""
        return f"trial {self.number} {self.trial.user_attrs.get('point', '')} {objective}={mean}{times}"


def objective_names(study: optuna.Study) -> list[str]:
    """The study's objectives by name, in order (as `tuner search` recorded them)."""
    names = study.user_attrs.get("objectives") or [study.user_attrs.get("objective") or "value"]
    return [str(n) for n in names][: len(study.directions)] or ["value"]


def higher_is_better(value: float, direction: StudyDirection) -> float:
    """`value` turned so that higher is better whatever the direction (for sorting and comparing)."""
    return value if direction == StudyDirection.MAXIMIZE else -value


def point_mean(measurements: Iterable[FrozenTrial]) -> tuple[float, int] | None:
    """The mean first objective over the completed trials among one point's measurements, and their count."""
    values = [float(t.values[0]) for t in measurements if t.state == TrialState.COMPLETE and t.values]
    return (sum(values) / len(values), len(values)) if values else None


def rank_trials(trials: Sequence[FrozenTrial], direction: StudyDirection) -> list[Ranked]:
    """All `trials` in ranking order (pure: the trials and the first objective's direction are all it reads)."""
    points: dict[int, list[FrozenTrial]] = {}
    for t in sorted(trials, key=lambda t: t.number):
        if t.state == TrialState.COMPLETE and t.values:
            points.setdefault(original_number(t), []).append(t)
    scored = [(group, point_mean(group)) for group in points.values()]
    ranked: list[Ranked] = []
    order = sorted(
        ((group, score) for group, score in scored if score is not None),
        key=lambda gs: (-higher_is_better(gs[1][0], direction), gs[0][0].number),
    )
    for rank, (group, (mean, count)) in enumerate(order, start=1):
        ranked += [Ranked(t, rank, mean, count, represents=i == 0) for i, t in enumerate(group)]
    listed = {r.number for r in ranked}
    rest = [t for t in trials if t.number not in listed]
    rest.sort(key=lambda t: (STATE_ORDER.index(t.state) if t.state in STATE_ORDER else len(STATE_ORDER), t.number))
    return ranked + [Ranked(t, None, None, 0, represents=False) for t in rest]


def rank_study(study: optuna.Study) -> list[Ranked]:
    """The study's trials in ranking order (the `duplicate_of` records left out)."""
    return rank_trials(measured_trials(study), study.directions[0])


def best(ranking: Sequence[Ranked]) -> Ranked | None:
    """The trial representing the best point, or None when no trial completed."""
    return ranking[0] if ranking and ranking[0].rank == 1 else None


def length_of(trial: FrozenTrial) -> int | None:
    """The trial's own sequence length where the study searched data.sequence_length, else None."""
    value = trial.params.get(LENGTH)
    return int(value) if value is not None else None


def best_per_length(ranking: Sequence[Ranked]) -> dict[int, Ranked]:
    """Where the study searched several sequence lengths, the trial representing the best point at each
    (shortest first): a length is a workload of its own (tuner.orders.workload_key), so the study's one best
    is at the length that runs fastest and says nothing of the others. Empty for a study of one length."""
    lengths = {length for r in ranking if (length := length_of(r.trial)) is not None}
    if len(lengths) < 2:
        return {}
    out: dict[int, Ranked] = {}
    for r in ranking:
        length = length_of(r.trial)
        if r.represents and r.rank is not None and length is not None and length not in out:
            out[length] = r
    return dict(sorted(out.items()))


def record_ranking(study: optuna.Study, ranking: Sequence[Ranked] | None = None) -> Ranked | None:
    """Keep the ranking on the study, where optuna-dashboard shows it ("Study User Attributes"); returns the best.

    It lives on the study, not on each trial: Optuna refuses to change a finished trial's attributes, so a
    trial's rank written when it ended could not follow the trials that end after it.
    """
    ranking = rank_study(study) if ranking is None else ranking
    objective = objective_names(study)[0]
    top = best(ranking)
    study.set_user_attr("best_trial", None if top is None else top.number)
    study.set_user_attr("best_point", None if top is None else top.trial.user_attrs.get("point"))
    study.set_user_attr("best_mean_value", None if top is None else top.mean)
    study.set_user_attr(
        "ranking", [f"{r.rank}. {r.describe(objective)}" for r in ranking if r.represents][:RANKING_SHOWN]
    )
    per_length = best_per_length(ranking)
    if per_length:
        study.set_user_attr("best_per_length", {str(n): r.describe(objective) for n, r in per_length.items()})
    return top


def recording(study: optuna.Study, on_event: Callable[[str, dict[str, Any]], None]) -> Callable[..., None]:
    """`on_event` that records the ranking each time a trial ends and hands the best on with the event."""

    def handle(kind: str, data: dict[str, Any]) -> None:
        if kind == "end":
            try:
                top = record_ranking(study)
            except Exception as exc:  # a storage hiccup must not stop the search; the next trial records it
                on_event("warning", {"message": f"could not record the ranking on the study: {one_line(exc)}"})
                top = None
            data = {**data, "best": top}
        on_event(kind, data)

    return handle
