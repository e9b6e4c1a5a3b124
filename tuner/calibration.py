"""Calibration (pure): correct the memory model with the peaks measured trials reported.

measured = runtime + scale x (predicted - runtime) + offset, fitted by least squares on a study's completed
trials: over all of them, and per family (ZeRO stage and offload) once a family has two, because what the
model leaves out differs between DeepSpeed's code paths (its buffers, the optimizer's temporaries, on CPU
how malloc reuses freed pages). A family not measured yet gets the overall fit.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from tuner.estimate import GB, ModelShape, Setup, estimate
from tuner.knobs import code_path_key
from tuner.points import Point


@dataclass(frozen=True)
class Sample:
    """One measured trial for calibration: the model's prediction for its point and what was measured."""

    runtime_gb: float  # the model's runtime term, left out of the scaling
    predicted_gb: float  # the model's whole prediction, runtime included
    measured_gb: float


@dataclass(frozen=True)
class Calibration:
    """measured = runtime + scale x (predicted - runtime) + offset, fitted on measured trials."""

    scale: float = 1.0
    offset_gb: float = 0.0
    samples: int = 0

    def apply(self, runtime_gb: float, predicted_gb: float) -> float:
        """The calibrated prediction in GB for a point the model predicted `predicted_gb` for."""
        return runtime_gb + self.scale * (predicted_gb - runtime_gb) + self.offset_gb

    def describe(self) -> str:
        if not self.samples:
            return "uncalibrated"
        return f"scale {self.scale:.3f}, offset {self.offset_gb:+.3f} GB from {self.samples} trial(s)"


MIN_SCALE, MAX_SCALE = 0.5, 2.0


def fit_calibration(samples: list[Sample]) -> Calibration:
    """Least squares for scale and offset once three trials span the predictions; an offset alone before."""
    if not samples:
        return Calibration()
    xs = [s.predicted_gb - s.runtime_gb for s in samples]
    ys = [s.measured_gb - s.runtime_gb for s in samples]
    n = len(samples)
    mean_x, mean_y = sum(xs) / n, sum(ys) / n
    var_x = sum((x - mean_x) ** 2 for x in xs)
    scale = 1.0
    if n >= 3 and min(xs) > 0 and max(xs) / min(xs) >= 1.2:
        scale = sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys, strict=True)) / var_x
        scale = min(MAX_SCALE, max(MIN_SCALE, scale))
    return Calibration(scale=scale, offset_gb=mean_y - scale * mean_x, samples=n)


@dataclass(frozen=True)
class Measured:
    """A completed trial's point and memory figures, for calibration and the never-prune-what-fitted rule."""

    point: Point
    peak_gb: float  # what the budget enforces: on a GPU the allocator's reserved peak, on CPU the peak RSS
    overhead_gb: float = 0.0  # on a GPU, what lived outside the allocator (CUDA context, NCCL buffers)


Family = tuple[object, ...]  # the knobs that pick DeepSpeed's code path: ZeRO stage, offload (tuner.knobs)


def family(point: Point) -> Family:
    return code_path_key(point.values())


@dataclass(frozen=True)
class Calibrations:
    """One calibration over all measured trials, and one per family (stage and offload) with two or more.

    A family's own fit corrects what differs between DeepSpeed's code paths (its buffers, the optimizer's
    temporaries, on CPU how malloc reuses freed pages) and the model leaves out; the overall fit serves
    families not measured yet.
    """

    overall: Calibration = field(default_factory=Calibration)
    families: tuple[tuple[Family, Calibration], ...] = ()

    def for_point(self, point: Point) -> Calibration:
        return dict(self.families).get(family(point), self.overall)

    def describe(self) -> str:
        return (
            f"{self.overall.describe()}; {len(self.families)} family fit(s)"
            if self.families
            else (self.overall.describe())
        )


MIN_FAMILY_SAMPLES = 2


def calibrate(shape: ModelShape, setup: Setup, measured: Iterable[Measured]) -> Calibrations:
    """Fit the model's corrections on measured trials (their points predicted afresh with the same model)."""
    by_family: dict[Family, list[Sample]] = {}
    samples = []
    for m in measured:
        est = estimate(shape, m.point, setup)
        sample = Sample(est.parts["runtime"] / GB, est.device_gb, m.peak_gb)
        samples.append(sample)
        by_family.setdefault(family(m.point), []).append(sample)
    families = tuple(
        (key, fit_calibration(group)) for key, group in sorted(by_family.items()) if len(group) >= MIN_FAMILY_SAMPLES
    )
    return Calibrations(fit_calibration(samples), families)
