"""What optuna-dashboard shows a reviewer first: the objectives by name, a note on each trial and on the study.

Notes are Markdown that optuna-dashboard keeps in the study's system attributes (`optuna_dashboard.save_note`),
which stay writable after a trial ends. Writing one is best effort: a note that cannot be written never stops
a search (the figures are in the trial's attributes either way).
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence

import optuna
from optuna.trial import FrozenTrial, TrialState

from tuner.cost import priced

log = logging.getLogger(__name__)


def _figure(trial: FrozenTrial, key: str, fmt: str) -> str | None:
    value = trial.user_attrs.get(key)
    return fmt.format(value) if isinstance(value, (int, float)) else None


def trial_note(trial: FrozenTrial) -> str:
    """The point, how it ended and its headline figures (or why it did not run), in two lines."""
    attrs = trial.user_attrs
    head = f"**{attrs.get('point') or 'trial ' + str(trial.number)}** · {trial.state.name}"
    if trial.state == TrialState.COMPLETE:
        figures = [
            _figure(trial, "tokens_per_s", "{:,.0f} tokens/s") or _figure(trial, "samples_per_s", "{:,.2f} samples/s"),
            _figure(trial, "peak_mem_gb", "peak memory {:.2f} GB"),
            _figure(trial, "step_time_s", "step {:.3g} s"),
            _figure(trial, "usd_per_million_tokens", "${:,.4g} per million tokens"),  # priced (tuner.cost)
        ]
        if isinstance(attrs.get("duplicate_of"), int):
            figures.append(f"the values of trial {attrs['duplicate_of']} (the same point, not run again)")
        body = " · ".join(f for f in figures if f)
    elif trial.state == TrialState.PRUNED:
        body = f"not run: {attrs.get('prune_reason') or 'pruned'}"
    else:
        category = attrs.get("failure_category", "failed")
        body = f"{category}: {attrs.get('failure_reason') or 'no reason recorded'}"
    return f"{head}\n\n{body}\n"


def study_note(study_name: str, storage: str, best: FrozenTrial | None, objective: str, mean: float | None) -> str:
    """The best configuration and the command that exports it (`storage` already without its password)."""
    if best is None:
        return f"## {study_name}\n\nNo trial completed yet.\n"
    value = "-" if mean is None else f"{mean:,.4g}"
    peak = _figure(best, "peak_mem_gb", ", peak memory {:.2f} GB") or ""
    return (
        f"## Best: trial {best.number}, {best.user_attrs.get('point', '')}\n\n"
        f"{objective} {value} (mean of its measurements){peak}{priced(best.user_attrs)}.\n\n"
        "Export its full-training DeepSpeed config:\n\n"
        f"```\ntuner export --study {study_name} --storage '{storage}' --output ds_config.json\n```\n"
    )


def name_metrics(study: optuna.Study, objectives: Sequence[str]) -> None:
    """The dashboard's value columns and axes named after the objectives instead of "Value"."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # stable since 3.2 in practice
        study.set_metric_names(list(objectives))


def _save(target: optuna.Study | optuna.Trial, body: str) -> None:
    from optuna_dashboard import save_note

    try:
        save_note(target, body)
    except Exception as exc:  # the store hiccuped: the figures are recorded anyway
        log.warning("could not write the optuna-dashboard note: %s", exc)


def note_trial(study: optuna.Study, trial: FrozenTrial) -> None:
    """Write `trial`'s note (after it ended)."""
    _save(optuna.Trial(study, trial._trial_id), trial_note(trial))


def note_study(study: optuna.Study, storage: str) -> None:
    """Write the study's note from its ranking (tuner.ranking)."""
    from tuner.ranking import best, objective_names, rank_study
    from tuner.store import redact

    top = best(rank_study(study))
    body = study_note(
        study.study_name, redact(storage), top.trial if top else None, objective_names(study)[0],
        top.mean if top else None,
    )  # fmt: skip
    _save(study, body)
