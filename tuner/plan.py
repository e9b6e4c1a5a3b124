"""`tuner plan` and the search's pruning (pure): which points fit the memory budget, and why not.

A point is predicted not to fit when its calibrated peak exceeds the budget by more than the margin
(the model's error allowance), or its offloaded states exceed the host budget. Measured trials overrule
the model (tuner.evidence): a point is never pruned when a trial that needs at least as much fitted, and
is pruned, with no margin, when a trial it needs at least as much as ran out of memory.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace

from tuner.calibration import Calibration, Calibrations, Measured, calibrate
from tuner.estimate import GB, Buckets, Estimate, ModelShape, Setup, estimate
from tuner.evidence import Evidence
from tuner.points import Enumeration, Point
from tuner.space import Space


def estimate_setup(space: Space, accelerator: str) -> Setup:
    """The memory model's inputs that come from the space (not the point)."""
    assert space.data.lengths, "the memory model needs the sequence length"
    return Setup(
        ranks=space.hardware.gpus_per_trial,
        ranks_per_node=space.hardware.ranks_per_node,  # host memory is per node: a trial over 4 nodes has 1/4 each
        sequence_length=space.data.fixed_length or max(space.data.lengths),  # a point may set its own
        precision=space.training.precision,
        accelerator="cuda" if accelerator == "cuda" else "cpu",
        buckets=Buckets.from_config(space.base_config_dict),
    )


DEFAULT_MARGIN = {"cuda": 0.10, "cpu": 0.20}


def prune_margin(space: Space, accelerator: str) -> float:
    """The space's margin, else the default for the device kind (the model's measured error allowance)."""
    if space.search.prune_margin is not None:
        return space.search.prune_margin
    return DEFAULT_MARGIN["cuda" if accelerator == "cuda" else "cpu"]


@dataclass(frozen=True)
class Planned:
    """One point with its prediction and the decision."""

    point: Point
    estimate: Estimate | None  # None: no model to predict with (a script's memory is learned from trials)
    predicted_gb: float  # calibrated device peak (nan without a model)
    fits: bool | None  # None: no budget to judge against
    reason: str | None  # why it does not fit, or why it is kept despite the model
    calibration: Calibration = field(default_factory=Calibration)

    def attrs(self) -> dict[str, object]:
        """The prediction as the store's user attributes."""
        if self.estimate is None:
            return {"memory_calibration": "no model described: memory learned from the trials"}
        return {
            "predicted_mem_gb": round(self.predicted_gb, 4),
            "predicted_raw_mem_gb": round(self.estimate.device_gb, 4),
            "predicted_host_mem_gb": round(self.estimate.host_gb, 4),
            "predicted_mem_parts_gb": {k: round(v / GB, 4) for k, v in self.estimate.parts.items()},
            "memory_calibration": self.calibration.describe(),
        }


# What a GPU holds outside PyTorch's allocator (CUDA context, NCCL's buffers), assumed until a trial measures
# it (`device_overhead_gb`): not measured on a GPU by this project yet. The CPU has none: a rank's RSS is all.
GPU_OVERHEAD_PRIOR_GB = 1.0


@dataclass(frozen=True)
class Budget:
    """Memory limits a point must fit: per device, optionally per node for offloaded states, and the margin.

    All in GB of 2**30 bytes (GiB, as torch and nvidia-smi count). On a GPU the model predicts what PyTorch's
    allocator holds, so a point must fit the budget less the overhead outside the allocator.
    """

    device_gb: float | None
    host_gb: float | None = None
    margin: float = 0.10
    overhead_gb: float = 0.0
    overhead_measured: bool = False

    @property
    def usable_gb(self) -> float | None:
        """What the allocator may hold: the device budget less the overhead outside it."""
        return None if self.device_gb is None else self.device_gb - self.overhead_gb

    def with_measured_overhead(self, overheads: Sequence[float]) -> Budget:
        """This budget with the largest overhead trials measured, once any did."""
        seen = [o for o in overheads if o > 0]
        return replace(self, overhead_gb=max(seen), overhead_measured=True) if seen else self

    def describe(self) -> str:
        """The budget in words, for tables and messages."""
        if self.device_gb is None:
            return "no budget"
        if not self.overhead_gb:
            return f"{self.device_gb:g} GB"
        how = "measured" if self.overhead_measured else "assumed"
        return f"{self.device_gb:g} GB less {self.overhead_gb:.2f} GB of CUDA context and NCCL buffers ({how})"

    def over(self, predicted_gb: float, host_gb: float) -> str | None:
        """Why a prediction does not fit, or None."""
        usable = self.usable_gb
        if usable is not None and predicted_gb > usable * (1 + self.margin):
            return (
                f"predicted peak {predicted_gb:.2f} GB per device is over the budget of {self.describe()} "
                f"(+{self.margin:.0%} margin)"
            )
        if self.host_gb is not None and host_gb > self.host_gb * (1 + self.margin):
            return (
                f"predicted host memory {host_gb:.2f} GB per node is over hardware.host_memory_gb="
                f"{self.host_gb:g} (+{self.margin:.0%} margin)"
            )
        return None


def device_budget(device_gb: float | None, host_gb: float | None, margin: float, accelerator: str) -> Budget:
    """The budget for a device kind: on a GPU the overhead outside the allocator is assumed until measured."""
    overhead = GPU_OVERHEAD_PRIOR_GB if accelerator == "cuda" and device_gb is not None else 0.0
    return Budget(device_gb, host_gb, margin, overhead_gb=overhead)


def predict(shape: ModelShape, setup: Setup, point: Point, calibrations: Calibrations) -> tuple[Estimate, float]:
    """The model's estimate for `point` and its calibrated device peak in GB."""
    est = estimate(shape, point, setup)
    return est, calibrations.for_point(point).apply(est.parts["runtime"] / GB, est.device_gb)


def decide(
    shape: ModelShape,
    setup: Setup,
    point: Point,
    budget: Budget,
    calibrations: Calibrations | None = None,
    evidence: Evidence | None = None,
) -> Planned:
    """Predict `point` and judge it against the budget, the measured trials' `evidence` before the model."""
    cals = calibrations or Calibrations()
    est, predicted = predict(shape, setup, point, cals)
    cal = cals.for_point(point)
    if budget.device_gb is None and budget.host_gb is None:
        return Planned(point, est, predicted, None, None, cal)
    reason = budget.over(predicted, est.host_gb)
    evidence = evidence or Evidence()
    witness = evidence.fitted_witness(point)
    if witness is not None:
        kept = f"kept: {witness.label()} was measured inside the budget" if reason else None
        return Planned(point, est, predicted, True, kept, cal)
    ran_out = evidence.ran_out_witness(point, predicted) if budget.device_gb is not None else None
    if ran_out is not None:
        return Planned(point, est, predicted, False, ran_out[1], cal)
    return Planned(point, est, predicted, reason is None, reason, cal)


@dataclass(frozen=True)
class Plan:
    """Every valid point's prediction and decision, and the counts `tuner plan` ends with."""

    shape: ModelShape
    setup: Setup
    budget: Budget
    calibrations: Calibrations
    rows: tuple[Planned, ...]
    invalid: int

    @property
    def not_fitting(self) -> int:
        return sum(1 for r in self.rows if r.fits is False)

    @property
    def to_run(self) -> int:
        return len(self.rows) - self.not_fitting

    @property
    def total(self) -> int:
        return len(self.rows) + self.invalid


def plan_space(
    shape: ModelShape,
    setup: Setup,
    enumeration: Enumeration,
    budget: Budget,
    calibrations: Calibrations | None = None,
) -> Plan:
    """Predict every valid point of the space."""
    cals = calibrations or Calibrations()
    rows = tuple(decide(shape, setup, p, budget, cals) for p in enumeration.valid)
    return Plan(shape, setup, budget, cals, rows, len(enumeration.dropped))


@dataclass(frozen=True)
class MemoryPlanner:
    """The search's memory judge: the model, the budget, and whether pruning is on."""

    shape: ModelShape
    setup: Setup
    budget: Budget
    prune: bool = True

    def judge(self, point: Point, measured: Sequence[Measured], ran_out: Sequence[Point] = ()) -> Planned:
        """Predict `point` with the calibration the measured trials give; they overrule the model (evidence)."""
        calibrations = calibrate(self.shape, self.setup, measured)
        budget = self.budget.with_measured_overhead([m.overhead_gb for m in measured])
        limit = budget.usable_gb
        fitted = [m.point for m in measured if limit is None or m.peak_gb <= limit]
        evidence = Evidence(
            fitted=tuple((p, predict(self.shape, self.setup, p, calibrations)[1]) for p in fitted),
            ran_out=tuple((p, predict(self.shape, self.setup, p, calibrations)[1]) for p in ran_out),
            offload_counts=self.setup.accelerator == "cuda",
        )
        return decide(self.shape, self.setup, point, budget, calibrations, evidence)


@dataclass(frozen=True)
class EvidenceJudge:
    """The memory judge of a script whose space describes no model: what its trials showed, nothing predicted.

    A point that needs at least as much as one that ran out of memory (tuner.evidence's ordered rule) is
    ruled out; everything else runs, and the trials' peaks are the memory figures.
    """

    budget: Budget
    accelerator: str
    prune: bool = True

    def judge(self, point: Point, measured: Sequence[Measured], ran_out: Sequence[Point] = ()) -> Planned:
        evidence = Evidence(ran_out=tuple((p, 0.0) for p in ran_out), offload_counts=self.accelerator == "cuda")
        witness = evidence.ran_out_witness(point, predicted_gb=-1.0)
        if witness is None:
            return Planned(point, None, float("nan"), None, None)
        return Planned(point, None, float("nan"), False, witness[1])
