"""Point + the user's base config -> the DeepSpeed config a trial runs (pure).

The tuned keys override the base config; everything else the user wrote (optimizer, scheduler,
gradient clipping, ...) is kept, so the exported config is the one the production job needs.
"""

from __future__ import annotations

import copy
from typing import Any, Literal

from tuner.points import Point, grad_accum

DEFAULT_OPTIMIZER: dict[str, Any] = {
    "type": "AdamW",
    "params": {"lr": 1e-4, "betas": [0.9, 0.999], "eps": 1e-8, "weight_decay": 0.0},
}
_ADAM_TYPES = {"adam", "adamw"}


def _precision_sections(precision: str) -> dict[str, Any]:
    if precision == "bf16":
        return {"bf16": {"enabled": True}, "fp16": {"enabled": False}}
    if precision == "fp16":
        return {"fp16": {"enabled": True, "loss_scale": 0, "initial_scale_power": 16}, "bf16": {"enabled": False}}
    return {"fp16": {"enabled": False}, "bf16": {"enabled": False}}


def _merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Recursive dict merge: override wins, nested sections are merged rather than replaced."""
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def build_ds_config(
    base: dict[str, Any],
    point: Point,
    *,
    global_batch: int,
    ranks: int,
    precision: str,
    accelerator: Literal["cuda", "cpu"],
) -> dict[str, Any]:
    """The complete DeepSpeed config for `point` with `ranks` data-parallel ranks."""
    accum = grad_accum(global_batch, point.micro_batch_size, ranks)
    if accum is None:
        raise ValueError(f"{point.label()} cannot keep global batch {global_batch} on {ranks} ranks")
    zero: dict[str, Any] = {"stage": point.zero_stage}
    pin = accelerator == "cuda"  # pinned host memory speeds up GPU<->CPU copies; it means nothing on CPU
    if point.offload_optimizer != "none":
        zero["offload_optimizer"] = {"device": point.offload_optimizer, "pin_memory": pin}
    if point.offload_param != "none":
        zero["offload_param"] = {"device": point.offload_param, "pin_memory": pin}
    tuned: dict[str, Any] = {
        "train_batch_size": global_batch,
        "train_micro_batch_size_per_gpu": point.micro_batch_size,
        "gradient_accumulation_steps": accum,
        "zero_optimization": zero,
        **_precision_sections(precision),
    }
    if point.activation_checkpointing:
        # DeepSpeed's section configures deepspeed.checkpointing; the model must still turn recomputation
        # on (transformers: model.gradient_checkpointing_enable()), which the worker does for trials.
        tuned["activation_checkpointing"] = {"partition_activations": False, "contiguous_memory_optimization": False}
    config = copy.deepcopy(base)
    config.setdefault("optimizer", copy.deepcopy(DEFAULT_OPTIMIZER))
    config.setdefault("steps_per_print", 1_000_000)  # a trial's own timing is the report; keep logs quiet
    zero_base = config.get("zero_optimization", {})
    if isinstance(zero_base, dict):  # offload settings the point does not use must not leak from the base
        zero_base = {k: v for k, v in zero_base.items() if k not in ("offload_optimizer", "offload_param", "stage")}
        config["zero_optimization"] = zero_base
    config = _merge(config, tuned)
    if "activation_checkpointing" not in tuned:
        config.pop("activation_checkpointing", None)
    optimizer = config["optimizer"]
    if (
        accelerator == "cpu"
        and point.offload_optimizer == "none"
        and str(optimizer.get("type", "")).lower() in _ADAM_TYPES
    ):
        # FusedAdam is a GPU kernel; on CPU torch's own AdamW is the equivalent that runs.
        optimizer.setdefault("params", {})["torch_adam"] = True
    return config
