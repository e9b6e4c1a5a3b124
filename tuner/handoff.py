"""The measured config, reshaped for the production job (pure): another world size, or Hugging Face Trainer.

The global batch is the contract: a job of N ranks keeps the tuned micro-batch and recomputes gradient
accumulation so that micro x accumulation x N is still the global batch. For Trainer and Accelerate the
config keeps the concrete tuned values (no "auto"), and the TrainingArguments that must match them are
derived from the same config, because Trainer refuses a DeepSpeed config that disagrees with its arguments.
"""

from __future__ import annotations

import copy
from typing import Any

from tuner.errors import SpaceError
from tuner.knobs import MAIN
from tuner.points import Point


def world_sizes_that_divide(global_batch: int, micro: int, upto: int = 1024) -> list[int]:
    """World sizes that keep `global_batch` with micro-batch `micro` (accumulation a whole number)."""
    if global_batch % micro:
        return []
    return [n for n in range(1, upto + 1) if (global_batch // micro) % n == 0]


def for_world_size(config: dict[str, Any], world_size: int, measured_ranks: int) -> tuple[dict[str, Any], list[str]]:
    """`config` for a job of `world_size` ranks at the same global and micro batch, and notes for the user."""
    if world_size < 1:
        raise SpaceError("--world-size", f"must be at least 1, got {world_size}")
    out = copy.deepcopy(config)
    global_batch, micro = int(config["train_batch_size"]), int(config["train_micro_batch_size_per_gpu"])
    per_step = micro * world_size
    if global_batch % per_step:
        fits = world_sizes_that_divide(global_batch, micro, upto=max(64, world_size))
        raise SpaceError(
            "--world-size",
            f"{world_size} ranks x micro-batch {micro} does not divide the global batch {global_batch}; "
            f"world sizes that do: {', '.join(map(str, fits)) or 'none'}",
        )
    out["gradient_accumulation_steps"] = global_batch // per_step
    notes = []
    stage = int((config.get("zero_optimization") or {}).get("stage", 0))
    if world_size != measured_ranks:
        notes.append(
            f"measured on {measured_ranks} rank(s); written for {world_size}: gradient accumulation "
            f"{config['gradient_accumulation_steps']} -> {out['gradient_accumulation_steps']} keeps the global "
            f"batch {global_batch}"
        )
    if stage and world_size > measured_ranks:
        notes.append(
            f"ZeRO stage {stage} partitions over {world_size} ranks instead of {measured_ranks}, so memory per "
            "device only falls; throughput per device was measured at the smaller scale and may differ"
        )
    elif stage and world_size < measured_ranks:
        notes.append(
            f"ZeRO stage {stage} partitions over fewer ranks than measured ({world_size} < {measured_ranks}): "
            "memory per device rises and this config may not fit; measure it at this size first"
        )
    return out, notes


def _param(config: dict[str, Any], *path: str) -> Any:
    node: Any = config
    for key in path:
        if not isinstance(node, dict) or key not in node:
            return None
        node = node[key]
    return node


def hf_training_args(config: dict[str, Any], config_path: str, point: Point | None = None) -> dict[str, Any]:
    """The TrainingArguments that match `config` (Trainer checks each of these against it).

    The knobs Trainer has an argument for (tuner.knobs `hf_argument`: the micro-batch, checkpointing) take
    the trial's values; without the point, the config's.
    """
    args: dict[str, Any] = {
        "deepspeed": config_path,
        "per_device_train_batch_size": int(config["train_micro_batch_size_per_gpu"]),
        "gradient_accumulation_steps": int(config["gradient_accumulation_steps"]),
        "gradient_checkpointing": "activation_checkpointing" in config,
        "bf16": bool(_param(config, "bf16", "enabled")),
        "fp16": bool(_param(config, "fp16", "enabled")),
    }
    for k in MAIN:
        if point is not None and k.hf_argument:
            args[k.hf_argument] = getattr(point, k.name)
    params = _param(config, "optimizer", "params") or {}
    if "lr" in params:
        args["learning_rate"] = params["lr"]
    betas = params.get("betas")
    if isinstance(betas, (list, tuple)) and len(betas) == 2:
        args["adam_beta1"], args["adam_beta2"] = betas
    if "eps" in params:
        args["adam_epsilon"] = params["eps"]
    if "weight_decay" in params:
        args["weight_decay"] = params["weight_decay"]
    if "gradient_clipping" in config:
        args["max_grad_norm"] = config["gradient_clipping"]
    return args


def hf_config(config: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """`config` as Trainer and Accelerate take it: concrete values; the learning-rate schedule is Trainer's."""
    out = copy.deepcopy(config)
    notes = []
    if out.pop("scheduler", None) is not None:
        notes.append(
            "the DeepSpeed scheduler section is left out: Trainer's lr_scheduler_type and warmup_steps set the "
            "schedule (a schedule does not change throughput or memory)"
        )
    if "activation_checkpointing" in out:
        notes.append("gradient_checkpointing=True makes Trainer enable activation checkpointing in the model")
    return out, notes


def training_args_code(args: dict[str, Any]) -> str:
    """The TrainingArguments call to paste into a training script."""
    lines = [f"    {key}={value!r}," for key, value in args.items()]
    return "TrainingArguments(\n    output_dir='out',\n" + "\n".join(lines) + "\n)"


def lora_config_code(kwargs: dict[str, Any]) -> str:
    """The peft wrapping to paste before Trainer (or deepspeed.initialize): the trials' LoRA adapters."""
    lines = [f"    {key}={value!r}," for key, value in kwargs.items()]
    head = "from peft import LoraConfig, get_peft_model\n\nmodel = get_peft_model(model, LoraConfig(\n"
    return head + "\n".join(lines) + "\n))"
