"""optuna-dashboard's notes: each trial's point and figures or why it did not run, the study's best and its export."""

from __future__ import annotations

import optuna
from optuna.trial import TrialState, create_trial
from optuna_dashboard._note import get_note_from_system_attrs

from tuner.notes import name_metrics, note_study, note_trial, study_note, trial_note


def _trial(state: TrialState, number: int = 3, **attrs: object) -> optuna.trial.FrozenTrial:
    trial = create_trial(state=state, value=1234.5 if state == TrialState.COMPLETE else None, user_attrs=attrs)
    trial.number = number
    return trial


def test_a_trial_note_says_the_point_and_its_figures_or_why_it_did_not_run() -> None:
    done = _trial(TrialState.COMPLETE, point="mb4 z1", tokens_per_s=12345.6, peak_mem_gb=1.234, step_time_s=0.42)
    assert trial_note(done) == "**mb4 z1** · COMPLETE\n\n12,346 tokens/s · peak memory 1.23 GB · step 0.42 s\n"
    script = _trial(TrialState.COMPLETE, point="mb2 z0", samples_per_s=3.5)
    assert "3.50 samples/s" in trial_note(script)
    oom = _trial(TrialState.FAIL, point="mb8 z0", failure_category="oom", failure_reason="peak 9 GB over 8")
    assert trial_note(oom) == "**mb8 z0** · FAIL\n\noom: peak 9 GB over 8\n"
    pruned = _trial(TrialState.PRUNED, point="mb8 z2", prune_reason="predicted 9.1 GB > 8 GB")
    assert trial_note(pruned).endswith("not run: predicted 9.1 GB > 8 GB\n")
    again = _trial(TrialState.COMPLETE, point="mb4 z1", tokens_per_s=10.0, duplicate_of=1)
    assert "the values of trial 1" in trial_note(again)


def test_the_study_note_names_the_best_and_the_command_that_exports_it() -> None:
    best = _trial(TrialState.COMPLETE, number=7, point="mb4 z1", peak_mem_gb=2.5)
    note = study_note("quick", "postgresql://tuner:***@db/t", best, "tokens_per_s", 1500.25)
    assert note.startswith("## Best: trial 7, mb4 z1\n\ntokens_per_s 1,500 (mean of its measurements), peak memory")
    assert "tuner export --study quick --storage 'postgresql://tuner:***@db/t' --output ds_config.json" in note
    assert "No trial completed" in study_note("quick", "sqlite:///x", None, "tokens_per_s", None)


def test_notes_and_metric_names_land_where_optuna_dashboard_reads_them() -> None:
    study = optuna.create_study(direction="maximize")
    study.set_user_attr("objectives", ["tokens_per_s"])
    name_metrics(study, ["tokens_per_s"])
    trial = study.ask()
    trial.set_user_attr("point", "mb2 z0")
    trial.set_user_attr("tokens_per_s", 99.0)
    study.tell(trial, 99.0)
    frozen = study.trials[0]
    note_trial(study, frozen)
    note_study(study, "sqlite:///store.db")
    attrs = study._storage.get_study_system_attrs(study._study_id)
    assert get_note_from_system_attrs(attrs, frozen._trial_id)["body"].startswith("**mb2 z0** · COMPLETE")
    assert "## Best: trial 0, mb2 z0" in get_note_from_system_attrs(attrs, None)["body"]
    assert study.metric_names == ["tokens_per_s"]
