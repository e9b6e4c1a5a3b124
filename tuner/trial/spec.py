"""The trial spec: one frozen record of what a trial runs, from the search to the ranks and into the result.

The search builds it (`TrialSpec.build`), the launcher writes it as JSON beside the trial (`spec.json`, the
only way the space reaches the ranks: never a command line), each rank's worker reads it back, and the
TrialResult of the trial carries it, so a figure can always be traced to what produced it.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tuner.points import Point
    from tuner.space import Space


@dataclass(frozen=True)
class TrialSpec:
    """Everything a trial's ranks need: the workload, the batch layout, the measurement rules, the config."""

    model_config: dict[str, Any]  # empty for a script without `model:`
    sequence_length: int | None  # None: a script's samples have no stated length (samples/s only)
    micro_batch_size: int
    grad_accum: int
    activation_checkpointing: bool
    global_batch_size: int
    precision: str
    ds_config: dict[str, Any]
    point: dict[str, Any] = field(default_factory=dict)  # the knob values (Optuna params) the trial measures
    seed: int = 0
    warmup_steps: int = 2
    measure_steps: int = 5
    max_measure_steps: int | None = None
    max_cv: float = 1.0
    step_timing: str = "auto"  # whole | composed | auto (tuner.trial.measure.step_timing_for)
    audit_rounds: int = 0  # benchmarks/fidelity.py: rounds of whole, composed, whole after the figures (timing.audit)
    device_memory_gb: float | None = None
    peak_tflops: float | None = None
    stop_over_step_s: float | None = None  # early stopping: clearly slower than the best trial's step
    script: str | None = None  # the user's training script (absolute path); None: the built-in workload
    script_args: list[str] = field(default_factory=list)  # its argument template ({placeholders})
    script_env: dict[str, str] = field(default_factory=dict)
    world_size: int = 1
    data: dict[str, Any] = field(default_factory=dict)  # the space's data section less sequence_length; {}: synthetic
    model_options: dict[str, Any] = field(default_factory=dict)  # attn_implementation, peft (ModelSection.options)
    usd_per_hour: float | None = None  # the trial's devices and nodes, priced (tuner.cost); None: not priced

    @classmethod
    def build(
        cls, space: Space, point: Point, ds_config: dict[str, Any], stop_over_step_s: float | None = None
    ) -> TrialSpec:
        """The spec of `point` in `space`, with its complete ds_config."""
        from tuner.points import point_accum

        ranks, values = space.hardware.gpus_per_trial, point.values()
        global_batch = space.global_batch_of(values)
        accum = point_accum(point, global_batch, ranks) if global_batch else None
        assert global_batch and accum is not None, f"{point.label()} is not a valid point for {ranks} ranks"
        return cls(
            model_config=space.model_config_dict,
            sequence_length=space.sequence_length_of(values),
            micro_batch_size=point.micro_batch_size,
            grad_accum=accum,
            activation_checkpointing=bool(point.activation_checkpointing),
            global_batch_size=global_batch,
            precision=space.training.precision,
            ds_config=ds_config,
            point=point.params(),
            seed=space.search.seed,
            warmup_steps=space.trial.warmup_steps,
            measure_steps=space.trial.measure_steps,
            max_measure_steps=space.trial.measure_cap,
            max_cv=space.trial.max_cv,
            step_timing=space.trial.step_timing,
            device_memory_gb=space.hardware.device_memory_gb,
            peak_tflops=space.hardware.peak_tflops,
            stop_over_step_s=stop_over_step_s,
            script=space.script,
            script_args=list(space.workload.args) if space.workload else [],
            script_env=dict(space.workload.env) if space.workload else {},
            world_size=ranks,
            data=space.data.model_dump(exclude={"sequence_length"}),
            model_options=space.model.options() if space.model else {},
            usd_per_hour=space.hardware.usd_per_hour,
        )

    def replace(self, **changes: Any) -> TrialSpec:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrialSpec:
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    @classmethod
    def from_json(cls, text: str) -> TrialSpec:
        return cls.from_dict(json.loads(text))
