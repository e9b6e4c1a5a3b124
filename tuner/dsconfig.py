"""Point + the user's base config -> the DeepSpeed config a trial runs (pure).

The tuned keys override the base config; everything else the user wrote (optimizer, scheduler,
gradient clipping, ...) is kept, so the exported config is the one the production job needs.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from typing import Any, Literal

from tuner.knobs import BY_NAME, MAIN, OFFLOAD_SECTIONS, OPTIMIZER_OFFLOAD
from tuner.parallel import data_parallel, deepspeed_world
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
    """The complete DeepSpeed config for `point` on `ranks` ranks: every knob it sets written by its declaration
    (tuner.knobs), over the base config.

    `global_batch` samples per optimizer step over the data-parallel ranks (tuner.parallel); DeepSpeed's own
    `train_batch_size` counts its batch over all ranks under AutoTP and over ranks / sp under Ulysses, so it is
    micro x accumulation x that world (the global batch times tp under AutoTP).
    """
    values = point.values()
    accum = grad_accum(global_batch, point.micro_batch_size, data_parallel(values, ranks))
    if accum is None:
        raise ValueError(f"{point.label()} cannot keep global batch {global_batch} on {ranks} ranks")
    deepspeed_batch = point.micro_batch_size * accum * deepspeed_world(values, ranks)
    config = copy.deepcopy(base)
    config.setdefault("optimizer", copy.deepcopy(DEFAULT_OPTIMIZER))
    config.setdefault("steps_per_print", 1_000_000)  # a trial's own timing is the report; keep logs quiet
    zero_base = config.get("zero_optimization", {})
    if isinstance(zero_base, dict):  # what the main knobs set (stage, offload) must not leak from the base
        owned = {path[1] for k in MAIN for path in k.paths if path[0] == "zero_optimization"}
        config["zero_optimization"] = {k: v for k, v in zero_base.items() if k not in owned}
    tuned = {
        "train_batch_size": deepspeed_batch,
        "gradient_accumulation_steps": accum,
        **_precision_sections(precision),
    }
    unset = [(k.name, k.neutral) for k in MAIN if k.optional and k.name not in values]  # a base's tp goes too
    config = apply_knobs(_merge(config, tuned), [*point.items(), *unset], accelerator)
    return retarget(config, accelerator, base)[0]


def apply_knobs(config: dict[str, Any], knobs: Iterable[tuple[str, Any]], accelerator: str) -> dict[str, Any]:
    """A copy of `config` with each knob's value written by its declaration."""
    out = copy.deepcopy(config)
    for name, value in knobs:
        BY_NAME[name].write(out, value, accelerator)
    return out


def retarget(config: dict[str, Any], accelerator: str, base: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """`config` with the keys that depend on the device kind set for `accelerator`, and what changed.

    FusedAdam is a GPU kernel: on CPU, Adam without optimizer offload runs torch's own (`torch_adam`), which a
    GPU job should not inherit. Pinned host memory speeds up GPU<->CPU copies of offloaded states and means
    nothing on CPU. A `torch_adam` the user's `base` config sets is theirs and kept.
    """
    out = copy.deepcopy(config)
    notes = []
    zero = out.get("zero_optimization") or {}
    offloaded = False
    for key in OFFLOAD_SECTIONS:
        section = zero.get(key)
        if isinstance(section, dict) and str(section.get("device", "none")) in ("cpu", "nvme"):
            offloaded = offloaded or key == OPTIMIZER_OFFLOAD
            pin = accelerator == "cuda"
            if section.get("pin_memory") != pin:
                section["pin_memory"] = pin
                notes.append(f"zero_optimization.{key}.pin_memory set to {str(pin).lower()} for {accelerator}")
    optimizer = out.get("optimizer")
    if isinstance(optimizer, dict) and str(optimizer.get("type", "")).lower() in _ADAM_TYPES:
        params = optimizer.setdefault("params", {})
        theirs = ((base.get("optimizer") or {}).get("params") or {}).get("torch_adam")
        want = theirs if theirs is not None else (True if accelerator == "cpu" and not offloaded else None)
        if params.get("torch_adam") != want:
            if want is None:
                params.pop("torch_adam", None)
                notes.append("optimizer.params.torch_adam removed: DeepSpeed's FusedAdam runs on the GPU")
            else:
                params["torch_adam"] = want
                notes.append(f"optimizer.params.torch_adam set to {str(want).lower()}: FusedAdam is a GPU kernel")
    if accelerator == "cpu" and (out.get("fp16") or {}).get("enabled"):
        notes.append("fp16 does not train on DeepSpeed's CPU accelerator: use bf16 or fp32 there")
    return out, notes


def jit_ops(config: dict[str, Any], accelerator: str) -> set[str]:
    """DeepSpeed's compiled ops a trial of `config` loads on `accelerator`, as the engine picks its optimizer.

    deepspeed/runtime/engine.py: Adam and AdamW run torch's own with `torch_adam`, CPU-Adam when the
    optimizer is offloaded (cpu or nvme), else FusedAdam; Lamb and Lion their fused kernels (Lion on CPU
    when offloaded); Adagrad CPU-Adagrad when offloaded. ZeRO++'s quantized weights or gradients load the
    quantizer (partition_parameters.py, coalesced_collectives.py). The CPU accelerator's collectives use
    its shared-memory op.
    """
    ops = {"deepspeed_shm_comm"} if accelerator == "cpu" else set()
    optimizer = config.get("optimizer") or {}
    name = str(optimizer.get("type", "")).lower()
    params = optimizer.get("params") or {}
    zero = config.get("zero_optimization") or {}
    offload = str((zero.get(OPTIMIZER_OFFLOAD) or {}).get("device", "none")).lower() in ("cpu", "nvme")
    if name in _ADAM_TYPES and not params.get("torch_adam"):
        ops.add("cpu_adam" if offload else "fused_adam")
    elif name == "lamb":
        ops.add("fused_lamb")
    elif name == "lion":
        ops.add("cpu_lion" if offload else "fused_lion")
    elif name == "adagrad" and offload:
        ops.add("cpu_adagrad")
    if zero.get("zero_quantized_weights") or zero.get("zero_quantized_gradients"):
        ops.add("quantizer")
    return ops
