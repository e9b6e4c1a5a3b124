"""The best (or a chosen) trial -> the production ds_config.json, with a provenance file beside it."""

from __future__ import annotations

import hashlib
import json
import platform
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from tuner import __version__
from tuner.cost import TimeToTrain, trained_in
from tuner.dsconfig import retarget
from tuner.errors import SpaceError
from tuner.handoff import (
    for_world_size,
    hf_config,
    hf_parallel,
    hf_training_args,
    measured_global_batch,
    parallel_values,
    script_parallel,
    zero_group,
)
from tuner.knobs import MAIN
from tuner.parallel import data_parallel, deepspeed_world, sizes
from tuner.points import Point
from tuner.ranking import best, objective_names, rank_study
from tuner.store import pareto_front, redact
from tuner.trial.failures import one_line
from tuner.workload.script import fill_args, trial_values

FIGURE_KEYS = (
    "tokens_per_s", "samples_per_s", "step_time_s", "step_time_cv", "step_time_ci", "measured_steps",
    "peak_mem_gb", "peak_reserved_gb", "final_loss", "num_parameters", "trainable_parameters",
    "usd_per_million_tokens", "usd_per_million_samples", "usd_per_hour",
    "threads_per_rank",  # `tuner check` runs with as many
)  # fmt: skip


def check_with_deepspeed(config: dict[str, Any], world_size: int) -> None:
    """Check the batch arithmetic for `world_size` ranks, then parse with DeepSpeed's own config class over a
    stand-in process group of `world_size` ranks, so that DeepSpeed counts its world its own way.

    DeepSpeedConfig (deepspeed/runtime/config.py, DeepSpeedConfig.__init__) takes its world from the process
    group: the group's size divided by the sequence-parallel size (Ulysses: the mpu's, or without one the
    config's `sequence_parallel_size`), else the whole group; `tensor_parallel` does not enter it, so AutoTP's
    tensor-parallel ranks count in `train_batch_size` (they see the same samples). It then asserts
    train_batch_size == micro x accumulation x that world (_batch_assertion). Without an initialised process
    group it would take a world of 1, hence the stand-in: its rank and size are all DeepSpeed asks of it here.
    """
    from unittest import mock

    from deepspeed import comm
    from deepspeed.runtime.config import DeepSpeedConfig

    values = parallel_values(config)
    tp, sp = sizes(values)
    if world_size % (tp * sp):
        raise ValueError(
            f"{world_size} ranks are not a multiple of tensor_parallel_size {tp} x sequence_parallel_size {sp}"
        )
    world = deepspeed_world(values, world_size)
    micro = config["train_micro_batch_size_per_gpu"]
    accum = config["gradient_accumulation_steps"]
    if config["train_batch_size"] != micro * accum * world:
        counted = f"{world} ranks" if world == world_size else f"{world} ranks (DeepSpeed's world: {world_size} / sp)"
        raise ValueError(
            f"train_batch_size {config['train_batch_size']} != micro {micro} x accumulation {accum} x {counted}"
        )
    with (
        mock.patch.object(comm, "get_rank", return_value=0),
        mock.patch.object(comm, "get_world_size", return_value=world_size),
    ):
        parsed = DeepSpeedConfig(json.loads(json.dumps(config)))
    assert parsed.world_size == world, f"DeepSpeed counts {parsed.world_size} ranks, the tuner {world}"


def choose_trial(study: optuna.Study, number: int | None) -> FrozenTrial:
    """The trial to export: `number` if given (it must be COMPLETE), else the one representing the best point."""
    if number is None:
        top = best(rank_study(study))
        if top is None:
            raise SpaceError("--study", f"study {study.study_name!r} has no COMPLETE trial to export")
        return top.trial
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
        **_installed("accelerate"),  # Trainer's DeepSpeed, tensor- and sequence-parallel hand-off (--format hf)
    }


def _device(trial: FrozenTrial, study: optuna.Study) -> dict[str, str]:
    """The device the trial measured on, as its rank 0 named it (`tuner check` prints a change of it); the
    study's device kind where the trial's folder is not on this machine."""
    from tuner.check_run import result_device

    log = trial.user_attrs.get("log_path")
    name = result_device(Path(log).parent) if isinstance(log, str) else None
    kind = study.user_attrs.get("accelerator")
    return {"device": name} if name else {"device": str(kind)} if kind else {}


def _installed(package: str) -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return {package: version(package)}
    except PackageNotFoundError:
        return {}


def _remeasured(study: optuna.Study, trial: FrozenTrial) -> dict[str, float] | None:
    """The mean and count of the point's measurements when guided measured it more than once."""
    ranked = next((r for r in rank_study(study) if r.number == trial.number), None)
    if ranked is None or ranked.mean is None or ranked.measurements < 2:
        return None
    return {"mean_value": ranked.mean, "measurements": ranked.measurements}


def workload_settings(params: dict[str, Any]) -> dict[str, Any]:
    """The knobs the production job must set in its own code (tuner.knobs `workload_note`), and what to do."""
    point = Point.from_params(params)
    out: dict[str, Any] = {}
    notes = []
    for k in MAIN:
        if k.workload_note:
            value = getattr(point, k.name)
            out[k.name] = value
            if value != k.neutral:
                notes.append(k.workload_note)
    out["note"] = "; ".join(notes) or "Nothing to set in the model's own code."
    return out


def workload_notes(params: dict[str, Any], fmt: str) -> list[str]:
    """What the production job must do in its own code for the point's knobs (tuner.knobs `workload_note`); for
    Trainer (`fmt` hf) not those a TrainingArguments field turns on (checkpointing: hf_config says so)."""
    point = Point.from_params(params)
    return [
        f"the trials ran {k.name}: {k.workload_note}"
        for k in MAIN
        if k.workload_note and getattr(point, k.name) != k.neutral and not (fmt == "hf" and k.hf_argument)
    ]


def model_options(model: dict[str, Any]) -> dict[str, Any]:
    """The model section's options the production job must repeat: the attention implementation and LoRA.

    `lora_config` holds peft.LoraConfig's arguments: wrap the model with get_peft_model(model,
    LoraConfig(**lora_config)) before training (examples/train.py and examples/train_hf.py do).
    """
    from tuner.workload.adapters import lora_kwargs

    out: dict[str, Any] = {"attn_implementation": model.get("attn_implementation")}
    peft = model.get("peft")
    out["peft"] = peft
    out["lora_config"] = lora_kwargs(peft) if peft else None
    return out


def sequence_length(space: dict[str, Any], params: dict[str, Any]) -> int | None:
    """The trial's tokens per sample: its own where the space searched data.sequence_length, else the space's."""
    fixed = space.get("data", {}).get("sequence_length")
    own = params.get("sequence_length")
    return int(own) if own else fixed if isinstance(fixed, int) else None


def parallel_layout(values: dict[str, Any], ranks: int | None) -> dict[str, Any]:
    """How `ranks` ranks split for a point: tensor- and sequence-parallel sizes, the data-parallel ranks, the
    ranks ZeRO partitions over, and the world DeepSpeed counts its train_batch_size over (tuner.parallel)."""
    tp, sp = sizes(values)
    layout: dict[str, Any] = {"tensor_parallel_size": tp, "sequence_parallel_size": sp}
    if ranks:
        layout.update(
            data_parallel_size=data_parallel(values, ranks),
            zero_partition_ranks=zero_group(values, ranks),
            deepspeed_world=deepspeed_world(values, ranks),
        )
    return layout


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
        "values": dict(zip(objective_names(study), trial.values, strict=False)),
        "on_pareto_front": trial.number in {t.number for t in pareto_front(study)},
        "figures": {k: trial.user_attrs[k] for k in FIGURE_KEYS if k in trial.user_attrs},
        "measured_with": {
            "ranks": ranks,
            "accelerator": study.user_attrs.get("accelerator"),
            "sequence_length": sequence_length(space, trial.params),
            "step_timing": trial.user_attrs.get("step_timing", "whole"),  # whole or composed steps
            **parallel_layout(trial.params, ranks),
        },
        "model_config": (space.get("model") or {}).get("config"),
        **model_options(space.get("model") or {}),
        **workload_settings(trial.params),
        "space_file": study.user_attrs.get("space_file"),
        "space_yaml": study.user_attrs.get("space_yaml"),
        "space": space or None,  # the resolved space the study kept: what `tuner check` rebuilds the trial from
        "versions": {**_versions(), **_device(trial, study)},
    }


EXPORT_FORMATS = ("deepspeed", "hf")
ACCELERATORS = ("cuda", "cpu")


@dataclass(frozen=True)
class Exported:
    """What an export wrote, for the CLI to report."""

    trial: FrozenTrial
    config_path: Path
    provenance_path: Path
    world_size: int
    notes: list[str] = field(default_factory=list)
    training_args: dict[str, Any] | None = None  # --format hf
    training_args_path: Path | None = None
    command: list[str] | None = None  # a script study: the user's script with the winner's arguments
    lora_config: dict[str, Any] | None = None  # peft.LoraConfig's arguments when the trials trained adapters
    time_to_train: TimeToTrain | None = None  # --tokens


def script_command(
    study: optuna.Study, trial: FrozenTrial, config: dict[str, Any], output: Path, world: int
) -> tuple[dict[str, Any], list[str]] | None:
    """For a study of the user's own script: its record (path, template, hash; whether the file changed since it
    was measured) and the command that trains it with the exported config, or None for the built-in workload."""
    record = study.user_attrs.get("script")
    if not isinstance(record, dict):
        return None
    space = study.user_attrs.get("space", {})
    values = trial_values(
        trial.params, ds_config=output, output_dir="output", grad_accum=int(config["gradient_accumulation_steps"]),
        world_size=world, seed=int(space.get("search", {}).get("seed", 0)),
    )  # fmt: skip
    command = ["deepspeed", "--num_gpus", str(world), record["path"], *fill_args(record["args"], values)]
    path = Path(record["path"])
    current = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None
    return {**record, "changed_since_measured": current != record.get("sha256"), "command": command}, command


def _sibling(output: Path, suffix: str) -> Path:
    return output.with_name(output.name.removesuffix(".json") + suffix)


def export(
    study: optuna.Study,
    storage_url: str,
    output: Path,
    number: int | None = None,
    world_size: int | None = None,
    fmt: str = "deepspeed",
    accelerator: str | None = None,
    tokens: float | None = None,
) -> Exported:
    """Write the trial's config (for `world_size` ranks, as `fmt`, for `accelerator`: default the study's) and
    the provenance beside it, with the days to train `tokens` on those ranks when asked; nothing on failure."""
    if tokens is not None and not 0 < tokens < float("inf"):
        raise SpaceError("--tokens", f"must be a positive number of tokens to train, e.g. 2e12, got {tokens:g}")
    if fmt not in EXPORT_FORMATS:
        raise SpaceError("--format", f"must be one of {', '.join(EXPORT_FORMATS)}, got {fmt!r}")
    if accelerator not in (None, *ACCELERATORS):
        raise SpaceError("--accelerator", f"must be one of {', '.join(ACCELERATORS)}, got {accelerator!r}")
    trial = choose_trial(study, number)
    measured = trial.user_attrs.get("ds_config")
    if not isinstance(measured, dict):
        raise SpaceError("--trial", f"trial {trial.number} has no ds_config attribute")
    space = study.user_attrs.get("space", {})
    ranks = int(space.get("hardware", {}).get("gpus_per_trial", 1))
    world = world_size if world_size is not None else ranks
    config, notes = for_world_size(measured, world, ranks)
    measured_on = str(study.user_attrs.get("accelerator") or "cpu")
    target = accelerator or measured_on
    config, changed = retarget(config, target, space.get("training", {}).get("base_config") or {})
    if target != measured_on:
        notes.append(f"measured on {measured_on}, written for {target}: " + ("; ".join(changed) or "no key changes"))
    try:
        check_with_deepspeed(config, world)
    except Exception as exc:
        raise SpaceError("--trial", f"DeepSpeed rejects trial {trial.number}'s config: {one_line(exc)}") from None
    args = args_path = None
    prov = provenance(study, trial, storage_url)
    days = None if tokens is None else trained_in(trial.user_attrs, trial.number, tokens, ranks, world)
    prov["time_to_train"] = None if days is None else days.as_dict()
    if prov["lora_config"]:
        notes.append(
            "the trials trained LoRA adapters on a frozen base (peft): wrap the model as printed below (lora_config "
            "in the provenance file) before training, and hand DeepSpeed only the trainable parameters"
        )
    if prov["attn_implementation"]:
        notes.append(f"build the model with attn_implementation={prov['attn_implementation']!r}, as the trials did")
    notes += workload_notes(trial.params, fmt)
    length, attention = prov["measured_with"]["sequence_length"], prov["attn_implementation"]
    if fmt == "hf":
        config, hf_notes = hf_config(config, world)
        parallelism, parallel_notes = hf_parallel(trial.params, world, length, attention)
        notes += hf_notes + parallel_notes
        prov["hf_parallelism_config"] = parallelism
        point = Point.from_params(trial.params)
        args, args_path = hf_training_args(config, str(output), point), _sibling(output, ".training_args.json")
    else:
        micro = int(config["train_micro_batch_size_per_gpu"])
        notes += script_parallel(trial.params, world, micro, length, attention)
    output.parent.mkdir(parents=True, exist_ok=True)
    prov_path = _sibling(output, ".provenance.json")
    prov.update({"format": fmt, "world_size": world, "measured_ranks": ranks, "accelerator": target, "notes": notes})
    prov["parallelism"] = {**parallel_layout(trial.params, world), "global_batch_size": measured_global_batch(config)}
    if args is not None:
        prov["training_args"] = args
    script = script_command(study, trial, config, output, world)
    if script is not None:
        prov["script"] = script[0]
        if script[0]["changed_since_measured"]:
            notes.append(f"{script[0]['path']} changed (or is gone) since it was measured: measure it again")
    output.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    if args is not None and args_path is not None:
        args_path.write_text(json.dumps(args, indent=2) + "\n")
    prov_path.write_text(json.dumps(prov, indent=2, sort_keys=True) + "\n")
    return Exported(
        trial, output, prov_path, world, notes, args, args_path, script[1] if script else None,
        lora_config=prov["lora_config"], time_to_train=days,
    )  # fmt: skip
