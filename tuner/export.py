"""The best (or a chosen) trial -> the production ds_config.json, with a provenance file beside it."""

from __future__ import annotations

import json
import platform
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from tuner import __version__
from tuner.errors import SpaceError
from tuner.store import best_trial, original_number, pareto_front, redact, repeat_means
from tuner.trial.failures import one_line

FIGURE_KEYS = (
    "tokens_per_s", "samples_per_s", "step_time_s", "step_time_cv", "measured_steps",
    "peak_mem_gb", "peak_reserved_gb", "final_loss", "num_parameters",
)  # fmt: skip


def check_with_deepspeed(config: dict[str, Any], world_size: int) -> None:
    """Check the batch arithmetic for `world_size` ranks, then parse with DeepSpeed's own config class.

    DeepSpeed's parser takes the world size from an initialised process group (1 without one), so it
    checks a copy whose train_batch_size is per rank; every other section is checked as written.
    """
    from deepspeed.runtime.config import DeepSpeedConfig

    micro = config["train_micro_batch_size_per_gpu"]
    accum = config["gradient_accumulation_steps"]
    if config["train_batch_size"] != micro * accum * world_size:
        raise ValueError(
            f"train_batch_size {config['train_batch_size']} != micro {micro} x accumulation {accum}"
            f" x {world_size} ranks"
        )
    per_rank = json.loads(json.dumps(config))
    per_rank["train_batch_size"] = micro * accum
    DeepSpeedConfig(per_rank)


def choose_trial(study: optuna.Study, number: int | None) -> FrozenTrial:
    """The trial to export: `number` if given (it must be COMPLETE), else the best."""
    if number is None:
        trial = best_trial(study)
        if trial is None:
            raise SpaceError("--study", f"study {study.study_name!r} has no COMPLETE trial to export")
        return trial
    for trial in study.get_trials(deepcopy=False):
        if trial.number == number:
            if trial.state != TrialState.COMPLETE:
                raise SpaceError("--trial", f"trial {number} is {trial.state.name}, only COMPLETE trials export")
            return trial
    raise SpaceError("--trial", f"study {study.study_name!r} has no trial {number}")


def _versions() -> dict[str, str]:
    import deepspeed
    import torch
    import transformers

    return {
        "tuner": __version__,
        "torch": torch.__version__,
        "deepspeed": deepspeed.__version__,
        "transformers": transformers.__version__,
        "optuna": optuna.__version__,
        "python": platform.python_version(),
    }


def _objective_names(study: optuna.Study) -> list[str]:
    names = study.user_attrs.get("objectives") or [study.user_attrs.get("objective")]
    return [str(name) for name in names]


def _remeasured(study: optuna.Study, trial: FrozenTrial) -> dict[str, float] | None:
    """The mean and count of the point's measurements when guided measured it more than once."""
    mean = repeat_means(study).get(original_number(trial))
    return None if mean is None else {"mean_value": mean[0], "measurements": mean[1]}


def provenance(study: optuna.Study, trial: FrozenTrial, storage_url: str) -> dict[str, Any]:
    """Where the exported config came from: enough to trace it back and to judge it."""
    space = study.user_attrs.get("space", {})
    ranks = space.get("hardware", {}).get("gpus_per_trial")
    return {
        "exported_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "study": study.study_name,
        "storage": redact(storage_url),
        "trial": trial.number,
        "point": trial.params,
        "objective": study.user_attrs.get("objective"),
        "value": trial.values[0],
        "remeasured": _remeasured(study, trial),
        "values": dict(zip(_objective_names(study), trial.values, strict=False)),
        "on_pareto_front": trial.number in {t.number for t in pareto_front(study)},
        "figures": {k: trial.user_attrs[k] for k in FIGURE_KEYS if k in trial.user_attrs},
        "measured_with": {
            "ranks": ranks,
            "accelerator": study.user_attrs.get("accelerator"),
            "sequence_length": space.get("data", {}).get("sequence_length"),
        },
        "model_config": space.get("model", {}).get("config"),
        "activation_checkpointing": bool(trial.params.get("activation_checkpointing", False)),
        "note": (
            "Enable activation checkpointing in the model (transformers: model.gradient_checkpointing_enable())"
            if trial.params.get("activation_checkpointing")
            else "Activation checkpointing off."
        ),
        "space_file": study.user_attrs.get("space_file"),
        "space_yaml": study.user_attrs.get("space_yaml"),
        "versions": _versions(),
    }


def export(study: optuna.Study, storage_url: str, output: Path, number: int | None = None) -> tuple[FrozenTrial, Path]:
    """Write the trial's ds_config to `output` and `<output>.provenance.json`; nothing on failure."""
    trial = choose_trial(study, number)
    config = trial.user_attrs.get("ds_config")
    if not isinstance(config, dict):
        raise SpaceError("--trial", f"trial {trial.number} has no ds_config attribute")
    ranks = int(study.user_attrs.get("space", {}).get("hardware", {}).get("gpus_per_trial", 1))
    try:
        check_with_deepspeed(config, ranks)
    except Exception as exc:
        raise SpaceError("--trial", f"DeepSpeed rejects trial {trial.number}'s config: {one_line(exc)}") from None
    output.parent.mkdir(parents=True, exist_ok=True)
    prov_path = output.with_name(output.name.removesuffix(".json") + ".provenance.json")
    output.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    prov_path.write_text(json.dumps(provenance(study, trial, storage_url), indent=2, sort_keys=True) + "\n")
    return trial, prov_path
