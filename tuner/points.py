"""Points of the space: one DeepSpeed configuration to measure, and which combinations are valid.

Pure: enumeration needs only the `Space`. A point that cannot be valid is dropped with its reason
before anything launches, so no trial is spent finding out what arithmetic already knows.
"""

from __future__ import annotations

import itertools
from collections import Counter
from dataclasses import asdict, dataclass
from typing import Any

from tuner.space import Space

COMM_PREFIX = "comm_"


@dataclass(frozen=True, order=True)
class Point:
    """The tuned knobs of one trial; the global batch is fixed by the space, not by the point."""

    micro_batch_size: int
    zero_stage: int
    offload_optimizer: str = "none"
    offload_param: str = "none"
    activation_checkpointing: bool = False
    comm: tuple[tuple[str, Any], ...] = ()  # ZeRO communication knobs, sorted; () is DeepSpeed's defaults

    def params(self) -> dict[str, Any]:
        """The point as Optuna params (and YAML-style keys); communication knobs as `comm_<knob>`."""
        params = asdict(self)
        params.pop("comm")
        params.update({f"{COMM_PREFIX}{knob}": value for knob, value in self.comm})
        return params

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> Point:
        """Rebuild a point from a trial's params; knobs a trial did not suggest take their defaults."""
        known = {key: params[key] for key in cls.__dataclass_fields__ if key in params and key != "comm"}
        comm = sorted((k.removeprefix(COMM_PREFIX), v) for k, v in params.items() if k.startswith(COMM_PREFIX))
        return cls(**known, comm=tuple(comm))

    def label(self) -> str:
        """A short human name: `mb4 z3 opt=cpu param=cpu ckpt`."""
        parts = [f"mb{self.micro_batch_size}", f"z{self.zero_stage}"]
        if self.offload_optimizer != "none":
            parts.append(f"opt={self.offload_optimizer}")
        if self.offload_param != "none":
            parts.append(f"param={self.offload_param}")
        if self.activation_checkpointing:
            parts.append("ckpt")
        parts.extend(f"{knob}={str(value).lower() if isinstance(value, bool) else value}" for knob, value in self.comm)
        return " ".join(parts)


def grad_accum(global_batch: int, micro_batch: int, ranks: int) -> int | None:
    """Gradient-accumulation steps that keep the global batch fixed, or None when it cannot divide."""
    per_step = micro_batch * ranks
    return global_batch // per_step if global_batch % per_step == 0 else None


def invalid_reason(point: Point, global_batch: int, ranks: int) -> str | None:
    """Why `point` can never run, in words, or None when it is valid."""
    if grad_accum(global_batch, point.micro_batch_size, ranks) is None:
        return (
            f"micro_batch_size {point.micro_batch_size} x {ranks} ranks does not divide "
            f"global_batch_size {global_batch}"
        )
    if point.offload_param != "none" and point.zero_stage != 3:
        return "offload_param needs zero_stage 3"
    if point.offload_optimizer != "none" and point.zero_stage == 0:
        return "offload_optimizer needs zero_stage 1 or higher"
    return None


@dataclass(frozen=True)
class Enumeration:
    """The valid points in a stable order, and the dropped ones with their reasons."""

    valid: tuple[Point, ...]
    dropped: tuple[tuple[Point, str], ...]

    def dropped_summary(self) -> list[tuple[str, int]]:
        """Each reason with how many points it dropped, most frequent first."""
        return Counter(reason for _, reason in self.dropped).most_common()


def enumerate_points(space: Space) -> Enumeration:
    """Every combination of the space's lists, split into valid and dropped."""
    s = space.space
    valid: list[Point] = []
    dropped: list[tuple[Point, str]] = []
    for combo in itertools.product(
        s.micro_batch_size, s.zero_stage, s.offload_optimizer, s.offload_param, s.activation_checkpointing
    ):
        point = Point(*combo)
        reason = invalid_reason(point, space.training.global_batch_size, space.hardware.gpus_per_trial)
        if reason is None:
            valid.append(point)
        else:
            dropped.append((point, reason))
    return Enumeration(tuple(valid), tuple(dropped))
