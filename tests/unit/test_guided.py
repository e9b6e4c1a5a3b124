"""The guided sampler on synthetic landscapes: a pure function of the point gives each throughput, a
memory function decides out-of-memory. No DeepSpeed; the search logic alone."""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable

import pytest

from tests.landscapes import LOADERS, landscape
from tuner.guided import Outcome, at_least_as_fast, bound, next_point
from tuner.points import Point

MICROS = [1, 2, 4, 8, 16, 32]
SPACE = [
    Point(m, z, opt, param, ckpt)
    for m, z, opt, param, ckpt in itertools.product(
        MICROS, [0, 1, 2, 3], ["none", "cpu"], ["none", "cpu"], [False, True]
    )
    if not (opt == "cpu" and z == 0) and not (param == "cpu" and z != 3)
]


def memory(p: Point) -> float:
    """GB per device: states shrink with stage and offload, activations grow with micro, shrink with ckpt."""
    states = {0: 16.0, 1: 10.0, 2: 7.0, 3: 4.0}[p.zero_stage]
    states *= 0.4 if p.offload_optimizer == "cpu" else 1.0
    states *= 0.5 if p.offload_param == "cpu" else 1.0
    return states + p.micro_batch_size * (0.4 if p.activation_checkpointing else 2.0)


def smooth(p: Point) -> float:
    """Throughput rising with micro-batch; checkpointing, offload and stage 3 cost time."""
    speed = 1000 * (1 - 0.6 / math.sqrt(p.micro_batch_size))
    speed *= 0.7 if p.activation_checkpointing else 1.0
    speed *= 0.8 if p.offload_optimizer == "cpu" else 1.0
    speed *= 0.7 if p.offload_param == "cpu" else 1.0
    return speed * {0: 1.0, 1: 1.01, 2: 0.99, 3: 0.85}[p.zero_stage]


def trap(p: Point) -> float:
    """Checkpointing families are slow at small micro-batches, but micro-batch 32, which only they can reach
    under 20 or 40 GB, wins outright (the same stage and offload factors keep assumption 2 true)."""
    if not p.activation_checkpointing:
        return smooth(p)
    return smooth(p) / smooth(Point(p.micro_batch_size, 0)) * (5000.0 if p.micro_batch_size == 32 else 50.0)


def run(
    landscape: Callable[[Point], float], limit_gb: float, fits: Callable[[Point], bool] = lambda _: True
) -> tuple[list[Point], dict[Point, Outcome]]:
    measured: dict[Point, Outcome] = {}
    launched: list[Point] = []
    while (p := next_point(SPACE, measured, fits)) is not None:
        launched.append(p)
        oom = memory(p) > limit_gb
        measured[p] = Outcome(None, oom=True) if oom else Outcome(landscape(p))
        assert len(launched) <= len(SPACE), "the search must end"
    return launched, measured


def true_best(landscape: Callable[[Point], float], limit_gb: float) -> float:
    return max(landscape(p) for p in SPACE if memory(p) <= limit_gb)


CASES = [(smooth, 20.0), (smooth, 40.0), (smooth, 80.0), (trap, 20.0), (trap, 40.0)]


@pytest.mark.parametrize(("landscape", "limit_gb"), CASES, ids=[f"{f.__name__}-{g:g}GB" for f, g in CASES])
@pytest.mark.parametrize("model_error", [0.95, 1.0, 1.05])
def test_guided_finds_the_true_best_with_a_fraction_of_the_trials(
    landscape: Callable[[Point], float], limit_gb: float, model_error: float
) -> None:
    """With a memory model off by up to 5% either way (and the search's 10% margin): the best point, with at
    most a quarter of the trials."""
    launched, measured = run(landscape, limit_gb, lambda p: memory(p) * model_error <= limit_gb * 1.1)
    found = max(o.value for o in measured.values() if o.value is not None)
    assert found == pytest.approx(true_best(landscape, limit_gb))
    assert len(launched) <= 0.25 * len(SPACE), f"{len(launched)} of {len(SPACE)} points launched"
    assert len(set(launched)) == len(launched)


@pytest.mark.parametrize(("landscape", "limit_gb"), CASES, ids=[f"{f.__name__}-{g:g}GB" for f, g in CASES])
def test_without_a_memory_model_out_of_memory_trials_lead_down_to_the_best(
    landscape: Callable[[Point], float], limit_gb: float
) -> None:
    _, measured = run(landscape, limit_gb)
    found = max(o.value for o in measured.values() if o.value is not None)
    assert found == pytest.approx(true_best(landscape, limit_gb))


def test_guided_never_launches_what_the_memory_model_rules_out() -> None:
    def predicted_fit(p: Point) -> bool:
        return memory(p) * 1.05 <= 40.0 * 1.1  # a model that over-predicts by 5%, the 10% margin

    launched, measured = run(smooth, 40.0, predicted_fit)
    assert all(predicted_fit(p) for p in launched)
    assert sum(o.oom for o in measured.values()) <= 3  # straight to (about) the largest micro-batch that fits


def test_an_out_of_memory_trial_rules_out_its_larger_micro_batches_and_the_next_smaller_runs() -> None:
    measured = {Point(32, 0): Outcome(None, oom=True)}
    nxt = next_point([Point(m, 0) for m in MICROS], measured)
    assert nxt == Point(16, 0)


def test_bounds_follow_the_stated_assumptions() -> None:
    assert at_least_as_fast(Point(8, 1), Point(8, 2))
    assert at_least_as_fast(Point(8, 0), Point(8, 3))
    assert not at_least_as_fast(Point(8, 0), Point(8, 1))  # stages 0 and 1 are not ordered
    assert at_least_as_fast(Point(8, 2), Point(8, 2, activation_checkpointing=True))
    assert at_least_as_fast(Point(8, 2), Point(8, 2, "cpu"))
    assert not at_least_as_fast(Point(8, 2), Point(8, 2, "cpu"), offload_is_slower=False)  # CPU-only machine
    assert not at_least_as_fast(Point(4, 2), Point(8, 2, activation_checkpointing=True))  # micro-batch differs
    measured = {Point(16, 1): Outcome(900.0), Point(16, 2): Outcome(None)}
    assert bound(Point(8, 1), measured) == 900.0  # same family, larger micro-batch measured
    assert bound(Point(16, 3, activation_checkpointing=True), measured) == 900.0
    assert bound(Point(32, 1, activation_checkpointing=True), measured) == math.inf


def test_nothing_measured_yet_starts_with_the_largest_micro_batch_and_least_work() -> None:
    assert next_point(SPACE, {}) == Point(32, 0)


def test_the_landscapes_are_what_the_files_record() -> None:
    """Sizes, failures, true bests and noise of the landscapes the figures in this module are about."""
    rows = {
        name: (
            len(land.points),
            land.space_size,
            sum(v is None for v in land.values().values()),
            land.best()[0].label(),
            round(land.best()[1]),
        )
        for name, land in ((name, landscape(name)) for name in LOADERS)
    }
    assert rows == {
        "search-efficiency": (70, 70, 19, "mb8 z0", 7232),  # 7,302 over the 7 runs the evidence report pools
        "quickstart": (12, 12, 0, "mb8 z0", 20027),
        "ds-autotuner-ours": (8, 84, 0, "mb16 z1 opt=cpu", 5711),
        "ds-autotuner-deepspeed": (5, 84, 0, "mb32 z2", 6449),
        "cluster-1-node": (4, 4, 0, "mb8 z0", 11367),
        "cluster-2-node": (4, 4, 0, "mb8 z3", 13615),
    }
    efficiency = landscape("search-efficiency")
    assert max(efficiency.noise.values()) == pytest.approx(0.086, abs=0.001)
    assert len(efficiency.measurements[Point(8, 0)]) == 9
    # At the budget's edge the same point fitted in one run and not in another; it counts as out of memory
    # where it ran out in at least half its trials, and a noisy draw runs it out as often as the file did.
    assert efficiency.oom_share(Point(16, 2, activation_checkpointing=True)) == pytest.approx(0.8)
    assert efficiency.oom_share(Point(16, 2, "cpu", activation_checkpointing=True)) == pytest.approx(0.5)
