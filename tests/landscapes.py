"""Measured throughput landscapes: the points a file in benchmarks/results/ measured, with every measurement.

A sampler replayed on one of these meets what the machine did (noise, out-of-memory failures at the edge
of the budget, assumptions that do not hold), not a function written to satisfy its rules. Each landscape
keeps every measurement of a point (tokens/s; None where the trial ran out of memory) and the relative
noise of one measurement, estimated from the same file: the spread of the points it measured more than
once where there are such, else each trial's own step-time CV. Only figures timed by the same code are
pooled: DeepSpeed's autotuner times its steps its own way, so its experiments are a landscape of their own.

Reads JSON only; no DeepSpeed, no tuner code beyond `Point`.
"""

from __future__ import annotations

import functools
import json
import math
import random
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tuner.points import Point

RESULTS = Path(__file__).resolve().parents[1] / "benchmarks" / "results"
SEARCH_EFFICIENCY = ("2026-11-28-search-efficiency-cpu.json", "2026-11-28-search-efficiency-cpu-evidence.json")
DS_AUTOTUNER = "2026-11-28-ds-autotuner-cpu.json"
QUICKSTART = "2026-11-28-quickstart-cpu.json"
CLUSTER = "2026-11-29-cluster-cpu.json"

Measurements = dict[Point, tuple[float | None, ...]]


@dataclass(frozen=True)
class Landscape:
    """Every measured point of one results file, each with all its measurements and the noise of one."""

    name: str
    source: str  # the results file(s) it was read from
    space_size: int  # valid points of the space searched; more than len(points) where not all were measured
    measurements: Mapping[Point, tuple[float | None, ...]]  # None: that trial ran out of memory
    noise: Mapping[Point, float]  # relative standard deviation of one measurement of the point

    @property
    def points(self) -> tuple[Point, ...]:
        return tuple(sorted(self.measurements))

    def oom_share(self, point: Point) -> float:
        values = self.measurements[point]
        return sum(v is None for v in values) / len(values)

    def fitted_mean(self, point: Point) -> float | None:
        """The mean of the point's completed measurements, also where others of it ran out of memory."""
        values = [v for v in self.measurements[point] if v is not None]
        return sum(values) / len(values) if values else None

    def value(self, point: Point) -> float | None:
        """The point as one value: None where it ran out of memory in at least half its trials, else its mean."""
        return None if self.oom_share(point) >= 0.5 else self.fitted_mean(point)

    def values(self) -> dict[Point, float | None]:
        return {p: self.value(p) for p in self.points}

    def best(self) -> tuple[Point, float]:
        """The true best by the file: the highest mean of a point that fits."""
        return max(((p, v) for p, v in self.values().items() if v is not None), key=lambda pv: pv[1])

    def draw(self, seed: int) -> dict[Point, float | None]:
        """One noisy measurement of every point: its mean x (1 + noise x N(0, 1)), and out of memory as often
        as it ran out in the file. Deterministic per seed; drawn in point order, so independent of the order
        a sampler asks."""
        rng = random.Random(seed)
        drawn: dict[Point, float | None] = {}
        for p in self.points:
            oom = rng.random() < self.oom_share(p)
            z = rng.gauss(0.0, 1.0)
            mean = self.fitted_mean(p)
            drawn[p] = None if oom or mean is None else mean * (1.0 + self.noise[p] * z)
        return drawn


def point_from_label(label: str) -> Point:
    """`mb8 z1 opt=cpu ckpt` back to its Point; the label must be exactly what `Point.label()` writes."""
    params: dict[str, Any] = {}
    for part in label.split():
        if part == "ckpt":
            params["activation_checkpointing"] = True
        elif part.startswith("opt="):
            params["offload_optimizer"] = part.removeprefix("opt=")
        elif part.startswith("param="):
            params["offload_param"] = part.removeprefix("param=")
        elif part.startswith("mb"):
            params["micro_batch_size"] = int(part.removeprefix("mb"))
        elif part.startswith("z"):
            params["zero_stage"] = int(part.removeprefix("z"))
        else:
            raise ValueError(f"point label {label!r}: unknown part {part!r}")
    point = Point.from_params(params)
    if point.label() != label:
        raise ValueError(f"point label {label!r} reads back as {point.label()!r}")
    return point


def pooled_relative_sd(measurements: Mapping[Point, Iterable[float | None]]) -> float:
    """The relative standard deviation of one measurement, pooled over the points measured more than once:
    sqrt(sum over those points' measurements of (x / mean - 1)^2 / (measurements - points))."""
    squares, dof = 0.0, 0
    for values in measurements.values():
        fitted = [v for v in values if v is not None]
        if len(fitted) > 1:
            mean = sum(fitted) / len(fitted)
            squares += sum((v / mean - 1.0) ** 2 for v in fitted)
            dof += len(fitted) - 1
    if dof == 0:
        raise ValueError("no point was measured twice: the noise cannot be estimated from repeats")
    return math.sqrt(squares / dof)


def _read(name: str) -> Any:
    return json.loads((RESULTS / name).read_text())


def _add(measurements: dict[Point, list[float | None]], point: Point, value: float | None) -> None:
    measurements.setdefault(point, []).append(value)


def _landscape(
    name: str, source: str, space_size: int, found: dict[Point, list[float | None]], noise: dict[Point, float] | None
) -> Landscape:
    """A landscape of `found`; without a per-point `noise`, the noise pooled from its repeated points."""
    frozen = {p: tuple(v) for p, v in found.items()}
    per_point = noise if noise is not None else dict.fromkeys(frozen, pooled_relative_sd(frozen))
    return Landscape(name, source, space_size, frozen, per_point)


def search_efficiency_runs() -> list[dict[str, Any]]:
    """Every distinct run of the two search-efficiency files: the grid (every point once), random, tpe and
    guided. The evidence file reuses the first file's grid, random and tpe (`reused_from`); those are
    counted once. A run's `points` holds its first measurement of each point, re-measurements not."""
    first, evidence = (_read(name) for name in SEARCH_EFFICIENCY)
    return [*first, *(run for run in evidence if not run.get("reused_from"))]


def search_efficiency() -> Landscape:
    """The 70-point space on 2 CPU ranks at a 0.62 GB budget, every point run by the grid; each point's
    measurements from all ten runs, noise pooled from the points measured more than once."""
    found: dict[Point, list[float | None]] = {}
    for run in search_efficiency_runs():
        for label, value in run["points"].items():
            _add(found, point_from_label(label), value)
    return _landscape("search-efficiency", " + ".join(SEARCH_EFFICIENCY), 70, found, None)


def search_efficiency_grid_draw() -> dict[Point, float | None]:
    """The grid's single measurement of every point: one real noisy draw of the search-efficiency landscape."""
    (grid,) = (run for run in search_efficiency_runs() if run["name"] == "grid")
    return {point_from_label(label): value for label, value in grid["points"].items()}


def ds_autotuner_ours() -> Landscape:
    """The 84-point space on one CPU rank, only the 8 points our trial runner measured there: guided's
    trials (two stopped early: still measurements) and the one-point re-measurements of each side's pick."""
    doc = _read(DS_AUTOTUNER)
    trials = [*doc["ours"]["trials"], *(t for r in doc["remeasure"].values() for t in r["trials"])]
    found: dict[Point, list[float | None]] = {}
    for t in trials:
        assert t["train_batch"] == doc["global_batch"], t
        value = None if t["failure"] == "oom" else t["tokens_per_s"]
        _add(found, point_from_label(t["point"]), value)
    return _landscape("ds-autotuner-ours", DS_AUTOTUNER, 84, found, None)


def ds_autotuner_deepspeed() -> Landscape:
    """The same space, the points DeepSpeed's autotuner measured at the space's global batch (its fast and
    full mode: 5 points, each twice), by its own throughput metric. Experiments at other global batches
    (it varies the batch; 1, 22, 27) are not points of this space and are left out."""
    doc = _read(DS_AUTOTUNER)
    found: dict[Point, list[float | None]] = {}
    for mode in doc["ds"].values():
        for e in mode["experiments"]:
            if e["train_batch"] != doc["global_batch"]:
                continue
            assert e["error"] is None, e  # none failed; a failure's category is not recorded here
            _add(found, Point(e["micro_batch"], e["stage"]), e["tokens_per_s"])
    return _landscape("ds-autotuner-deepspeed", DS_AUTOTUNER, 84, found, None)


def _step_cv_landscape(name: str, source: str, trials: list[dict[str, Any]], label: str, cv: str) -> Landscape:
    """One measurement per point (no repeats): each trial's step-time CV stands for its noise. That is the
    spread of single steps, an upper estimate for the median of several that a trial reports."""
    found: dict[Point, list[float | None]] = {}
    noise: dict[Point, float] = {}
    for t in trials:
        assert t["state"] == "COMPLETE", t  # none failed in these files
        point = point_from_label(t[label])
        _add(found, point, t["user_attrs_tokens_per_s" if "user_attrs_tokens_per_s" in t else "tokens_per_s"])
        noise[point] = t[cv]
    return _landscape(name, source, len(found), found, noise)


def quickstart() -> Landscape:
    """search_spaces/quickstart-cpu.yaml on 2 CPU ranks, every one of its 12 points measured once."""
    doc = _read(QUICKSTART)
    return _step_cv_landscape("quickstart", QUICKSTART, doc["trials"], "user_attrs_point", "user_attrs_step_time_cv")


def cluster(nodes_per_trial: int) -> Landscape:
    """The 4-point cluster benchmark (2 ranks per trial on one Ray node or spanning two), each point once."""
    (search,) = (s for s in _read(CLUSTER)["searches"] if s["nodes_per_trial"] == nodes_per_trial)
    return _step_cv_landscape(f"cluster-{nodes_per_trial}-node", CLUSTER, search["trials"], "point", "step_time_cv")


LOADERS: dict[str, Callable[[], Landscape]] = {
    "search-efficiency": search_efficiency,
    "quickstart": quickstart,
    "ds-autotuner-ours": ds_autotuner_ours,
    "ds-autotuner-deepspeed": ds_autotuner_deepspeed,
    "cluster-1-node": functools.partial(cluster, 1),
    "cluster-2-node": functools.partial(cluster, 2),
}


@functools.cache
def landscape(name: str) -> Landscape:
    return LOADERS[name]()
