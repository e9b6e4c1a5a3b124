"""What `tuner plan` and `tuner search` check of the user's DeepSpeed base config before anything is written.

The base config reaches every trial merged with the tuned keys (tuner.dsconfig); a value DeepSpeed rejects
would fail each trial `invalid_config`, one by one, after the study exists. DeepSpeed's own parser runs
here on the first valid point's complete config, with the engine's rules for optimizer and scheduler names
(deepspeed/runtime/engine.py), and reports the first problem on one line naming the key. The base keys
the tuned ones replace are warned about, one line each.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
from collections.abc import Sequence
from typing import Any

from tuner.dsconfig import build_ds_config
from tuner.errors import SpaceError
from tuner.knobs import MAIN
from tuner.points import Point
from tuner.space import Space

BASE = "training.base_config"


def _lookup(config: dict[str, Any], path: tuple[str, ...]) -> tuple[bool, Any]:
    """Whether the nested keys `path` are in `config`, and the value there."""
    node: Any = config
    for key in path:
        if not isinstance(node, dict) or key not in node:
            return False, None
        node = node[key]
    return True, node


def _listed(space: Space, knob: str) -> str:
    """`space.<knob> (its values)`, as the warning names it."""
    return f"space.{knob} ({', '.join(str(v) for v in space.space.values_of(knob))})"


def base_config_overrides(space: Space) -> list[str]:
    """One line per key of the base config that the tuned keys replace, naming what replaces it (pure)."""
    ranks = space.hardware.gpus_per_trial
    precision = f"training.precision ({space.training.precision})"
    knobs: dict[tuple[str, ...], str] = {path: _listed(space, k.name) for k in MAIN for path in k.paths}
    batch: dict[tuple[str, ...], str] = {
        path: what for path, what in knobs.items() if len(path) == 1
    }  # the main knobs' (batch keys first)
    replaced_by: dict[tuple[str, ...], str] = {
        ("train_batch_size",): f"training.global_batch_size ({space.training.global_batch_size})",
        **batch,
        ("gradient_accumulation_steps",): "the accumulation each point implies: training.global_batch_size / "
        f"(micro-batch x hardware.gpus_per_trial {ranks})",
        **{path: what for path, what in knobs.items() if path not in batch},
        ("fp16", "enabled"): precision,
        ("bf16", "enabled"): precision,
    }
    lines = []
    for path, what in replaced_by.items():
        found, value = _lookup(space.base_config_dict, path)
        if found:
            lines.append(f"{BASE}.{'.'.join(path)}={json.dumps(value)} is replaced by {what}")
    return lines


def _key_path(base: dict[str, Any], names: list[str]) -> str | None:
    """The dotted path in `base` that ends with the nested keys `names` (a DeepSpeed section's field), if one."""
    if not names:
        return None
    todo: list[tuple[str, Any]] = [("", base)]
    while todo:
        prefix, node = todo.pop(0)
        if not isinstance(node, dict):
            continue
        found, inner = True, node
        for name in names:
            if isinstance(inner, dict) and name in inner:
                inner = inner[name]
            else:
                found = False
                break
        if found:
            return prefix + ".".join(names)
        todo.extend((f"{prefix}{key}.", value) for key, value in node.items())
    return None


def _named(base: dict[str, Any], text: str) -> str:
    """training.base_config, or its key that DeepSpeed's message names as a word."""
    todo: list[tuple[str, Any]] = [("", base)]
    while todo:
        prefix, node = todo.pop(0)
        for key, value in node.items():
            if re.search(rf"\b{re.escape(str(key))}\b", text):
                return f"{BASE}.{prefix}{key}"
            if isinstance(value, dict):
                todo.append((f"{prefix}{key}.", value))
    return BASE


def _import_deepspeed_quietly() -> None:
    """Import DeepSpeed without its 'Setting accelerator to CPU' line on stdout (it would break
    `tuner plan --json`): the accelerator its import would detect is named up front."""
    if "DS_ACCELERATOR" in os.environ or "deepspeed" in sys.modules:
        return
    import torch

    os.environ["DS_ACCELERATOR"] = "cuda" if torch.cuda.device_count() > 0 and torch.cuda.is_available() else "cpu"
    try:
        import deepspeed  # noqa: F401
    finally:
        del os.environ["DS_ACCELERATOR"]


def check_base_config(space: Space, points: Sequence[Point], accelerator: str) -> None:
    """Raise SpaceError for the first problem DeepSpeed finds in the first valid point's complete config (the
    base config merged with its tuned keys) or in the optimizer for the space's ZeRO stages, naming the base
    config's key where it can."""
    import torch

    base = space.base_config_dict
    point = points[0]
    for section in ("optimizer", "scheduler"):
        if section in base and not (isinstance(base[section], dict) and isinstance(base[section].get("type"), str)):
            raise SpaceError(f"{BASE}.{section}", 'must be a mapping with a "type" (and "params")')
    _import_deepspeed_quietly()
    from deepspeed.runtime import lr_schedules
    from deepspeed.runtime.config import DEEPSPEED_OPTIMIZERS
    from pydantic import ValidationError

    from tuner.export import check_with_deepspeed

    ds_config = build_ds_config(
        base, point, global_batch=space.global_batch_of(point.values()) or space.training.global_batch_size,
        ranks=space.hardware.gpus_per_trial,
        precision=space.training.precision, accelerator="cuda" if accelerator == "cuda" else "cpu",
    )  # fmt: skip
    ds_logger = logging.getLogger("DeepSpeed")
    level = ds_logger.level
    ds_logger.setLevel(logging.ERROR)  # its deprecation notes go to stdout
    try:
        check_with_deepspeed(ds_config, space.hardware.gpus_per_trial)
    except ValidationError as exc:
        first = exc.errors()[0]
        names = [str(part) for part in first["loc"]]
        found = _key_path(base, names)
        key = f"{BASE}.{found}" if found else BASE
        raise SpaceError(key, f"DeepSpeed rejects it: {first['msg']} (got {first.get('input')!r})") from None
    except Exception as exc:  # the user's values handed to DeepSpeed's parser: any refusal is theirs to fix
        text = " ".join(str(exc).split()) or type(exc).__name__
        raise SpaceError(_named(base, text), f"DeepSpeed rejects it: {type(exc).__name__}: {text}"[:400]) from None
    finally:
        ds_logger.setLevel(level)
    optimizer = ds_config.get("optimizer") or {}
    name = str(optimizer.get("type", ""))
    if name.lower() not in DEEPSPEED_OPTIMIZERS and getattr(torch.optim, name, None) is None:
        known = ", ".join(sorted(DEEPSPEED_OPTIMIZERS))
        raise SpaceError(f"{BASE}.optimizer.type", f"unknown optimizer {name!r}: {known}, or a torch.optim class")
    if name.lower() not in DEEPSPEED_OPTIMIZERS and not base.get("zero_allow_untested_optimizer"):
        from deepspeed.runtime.zero.utils import ZERO_SUPPORTED_OPTIMIZERS

        stages = sorted({p.zero_stage for p in points if p.zero_stage > 0})
        if stages and getattr(torch.optim, name) not in ZERO_SUPPORTED_OPTIMIZERS:
            raise SpaceError(
                f"{BASE}.optimizer.type",
                f"DeepSpeed refuses torch.optim.{name} with ZeRO (space.zero_stage {', '.join(map(str, stages))}) "
                'unless the base config sets "zero_allow_untested_optimizer": true',
            )
    if "max_grad_norm" in (optimizer.get("params") or {}):
        raise SpaceError(f"{BASE}.optimizer.params.max_grad_norm", "not allowed by DeepSpeed: use gradient_clipping")
    scheduler = (ds_config.get("scheduler") or {}).get("type")
    if scheduler is not None and not (hasattr(lr_schedules, scheduler) or hasattr(torch.optim.lr_scheduler, scheduler)):
        known = ", ".join(lr_schedules.VALID_LR_SCHEDULES)
        raise SpaceError(
            f"{BASE}.scheduler.type", f"unknown scheduler {scheduler!r}: {known}, or a torch.optim.lr_scheduler class"
        )
