"""The timing rules: when measuring stops, when warm-up ends, how a composed step is put together."""

from __future__ import annotations

import random
import statistics
from collections.abc import Iterator
from typing import Any

import pytest
import torch

from tuner.trial import timing
from tuner.trial.measure import (
    COMPOSED,
    COMPOSED_FROM_ACCUM,
    WHOLE,
    composed_plan,
    composed_sample,
    composed_time,
    median_ci,
    steady_state_done,
    step_timing_for,
    warmup_prefix,
)
from tuner.trial.spec import TrialSpec


def stop_at(series: list[float], minimum: int, cap: int, max_cv: float) -> int:
    """How many steps of `series` the loop times before it stops (fed one at a time, as the worker does)."""
    times: list[float] = []
    for value in series:
        if steady_state_done(times, minimum, cap, max_cv):
            break
        times.append(value)
    return len(times)


def test_a_noisy_series_stops_as_soon_as_the_median_is_known_within_max_cv() -> None:
    rng = random.Random(7)
    series = [1.0 + rng.gauss(0, 0.08) for _ in range(200)]  # 8% noise: five steps cannot pin the median to 5%
    n = stop_at(series, minimum=3, cap=100, max_cv=0.05)
    assert 3 < n < 100
    assert median_ci(series[:n]) <= 0.05 < median_ci(series[: n - 1])  # the first count at which it is known
    assert statistics.median(series[:n]) == pytest.approx(1.0, abs=0.05)


def test_a_steady_series_stops_at_the_minimum() -> None:
    assert stop_at([1.0, 1.002, 0.999, 1.001] * 5, minimum=3, cap=9, max_cv=0.05) == 3
    assert stop_at([1.0] * 20, minimum=5, cap=15, max_cv=0.05) == 5


def test_the_cap_holds_however_noisy() -> None:
    rng = random.Random(3)
    series = [rng.uniform(0.5, 2.0) for _ in range(100)]
    assert stop_at(series, minimum=3, cap=9, max_cv=0.05) == 9
    assert median_ci(series[:9]) > 0.05  # stopped by the cap, not by the interval: the trial is flagged noisy


def test_the_interval_is_wider_for_fewer_steps_and_unknown_for_one() -> None:
    assert median_ci([1.0]) == float("inf")
    assert median_ci([1.0, 1.0]) == 0.0
    three, nine = median_ci([0.9, 1.0, 1.1]), median_ci([0.9, 1.0, 1.1] * 3)
    assert three > nine > 0
    # five steps with a 10% spread: t(4) = 2.776, sqrt(pi/2) = 1.2533: 2.776 x 1.2533 x s / sqrt(5)
    five = [0.9, 0.95, 1.0, 1.05, 1.1]
    expected = 2.776 * 1.2533 * statistics.stdev(five) / 5**0.5
    assert median_ci(five) == pytest.approx(expected, rel=1e-3)


def test_warm_up_ends_once_steps_stop_falling() -> None:
    assert warmup_prefix([3.0, 1.5, 1.0, 1.01, 0.99], max_cv=0.05) == 2
    assert warmup_prefix([1.0, 1.02, 0.99, 1.01], max_cv=0.05) == 0  # steady from the start
    assert warmup_prefix([1.04, 1.0, 1.0], max_cv=0.05) == 0  # within max_cv: noise, not warm-up
    assert warmup_prefix([3.0, 1.0], max_cv=0.05) == 0  # one later step cannot judge: it might be the outlier
    assert warmup_prefix([3.0, 1.0, 1.0], max_cv=0.05) == 1
    assert warmup_prefix([1.0, 2.0, 1.0, 1.0], max_cv=0.05) == 0  # a slow step later on is noise, not warm-up


def test_auto_composes_from_the_threshold() -> None:
    assert step_timing_for("auto", COMPOSED_FROM_ACCUM - 1) == WHOLE
    assert step_timing_for("auto", COMPOSED_FROM_ACCUM) == COMPOSED
    assert step_timing_for("whole", 128) == WHOLE
    assert step_timing_for("composed", 8) == COMPOSED


def test_composition_arithmetic() -> None:
    # first 2.0 s, middles 1.0/1.2/1.1 (median 1.1), boundary 3.0 s, at 16 micro-steps: 2 + 14 x 1.1 + 3
    assert composed_time([2.0, 1.0, 1.2, 1.1, 3.0], 16) == pytest.approx(20.4)
    assert composed_time([2.0, 1.0, 3.0], 4) == pytest.approx(2.0 + 2 * 1.0 + 3.0)
    assert composed_time([2.0, 1.0, 3.0], 3) == pytest.approx(6.0)  # every micro-step: the step itself
    assert composed_time([4.0], 1) == 4.0
    with pytest.raises(AssertionError):
        composed_time([2.0, 3.0], 8)  # no middle micro-step: nothing to count accum - 2 times
    assert composed_plan(128) == 5 and composed_plan(4) == 4 and composed_plan(1) == 1


class BoundaryEngine:
    """DeepSpeed's engine as a composed sample sees it: the boundary set by hand before each forward."""

    def __init__(self) -> None:
        self.boundaries: list[bool] = []
        self.inputs: list[int] = []
        self.steps = 0

    def set_gradient_accumulation_boundary(self, is_boundary: bool) -> None:
        self.boundaries.append(is_boundary)

    def __call__(self, input_ids: torch.Tensor) -> Any:
        self.inputs.append(int(input_ids[0]))
        return type("Out", (), {"loss": input_ids.float().mean()})()

    def backward(self, loss: torch.Tensor) -> None:
        pass

    def step(self) -> None:
        self.steps += 1


def test_a_composed_sample_runs_few_micro_steps_and_ends_on_a_boundary() -> None:
    batches = [{"input_ids": torch.tensor([i])} for i in range(128)]
    engine = BoundaryEngine()
    times, loss = composed_sample(engine, batches, lambda: None)
    assert engine.boundaries == [False, False, False, False, True]  # 5 of 128 micro-steps, the last a boundary
    assert engine.inputs == [0, 1, 2, 3, 127] and engine.steps == 5  # the step's last micro-batch at the boundary
    assert len(times) == 5 and float(loss) == pytest.approx((0 + 1 + 2 + 3 + 127) / 5)
    small = BoundaryEngine()
    composed_sample(small, batches[:3], lambda: None)
    assert small.boundaries == [False, False, True]


def test_an_audit_round_is_whole_composed_whole_each_ending_on_its_own_boundary(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """After a composed sample DeepSpeed's count is off, so the audit's whole steps set the boundary too."""
    reduced: list[list[float]] = []
    monkeypatch.setattr(timing, "reduce_on_device", lambda values, op, device: reduced.append(list(values)) or values)
    batches = [{"input_ids": torch.tensor([i])} for i in range(16)]
    engine = BoundaryEngine()
    got = timing.audit(engine, batches, 2, lambda: None, "cpu")
    one_round = [False] * 15 + [True] + [False] * 4 + [True] + [False] * 15 + [True]
    assert engine.boundaries == one_round * 2 and engine.steps == 2 * (16 + 5 + 16)
    assert list(got) == ["whole", "composed", "whole_again"] and all(len(v) == 2 for v in got.values())
    assert reduced[0] == [got["whole"][0], got["composed"][0], got["whole_again"][0]]  # one reduction per round
    assert timing.Timing("composed", audit=got).summary()["timing_audit"] == got


def scripted(values: list[float]) -> Iterator[float]:
    yield from values
    raise AssertionError("the loop timed more steps than the script has")


def test_the_loop_detects_warm_up_and_stops_on_the_interval(monkeypatch: pytest.MonkeyPatch) -> None:
    """Whole steps: the first is warm-up, a second still falling is reclassified; then three steady steps."""
    series = scripted([9.0, 3.0, 1.0, 1.01, 0.99, 1.0])
    monkeypatch.setattr(timing, "timed_step", lambda *a: (next(series), torch.tensor(2.0)))
    monkeypatch.setattr(timing, "reduce_on_device", lambda values, op, device: list(values))
    spec = spec_of(grad_accum=4, warmup_steps=3, measure_steps=3, step_timing="auto")
    got = timing.measure(object(), [{}] * 4, spec, lambda: None, "cpu")
    assert got.step_timing == WHOLE and got.warmup_steps == 2
    assert got.times == [1.0, 1.01, 0.99] and got.loss == 2.0 and not got.stopped_early
    assert got.summary() == {"step_timing": WHOLE, "warmup_steps": 2}


def test_the_loop_never_warms_up_past_warmup_steps(monkeypatch: pytest.MonkeyPatch) -> None:
    series = scripted([9.0, 5.0, 3.0, 1.0, 1.0, 1.0])
    monkeypatch.setattr(timing, "timed_step", lambda *a: (next(series), torch.tensor(2.0)))
    monkeypatch.setattr(timing, "reduce_on_device", lambda values, op, device: list(values))
    got = timing.measure(object(), [{}], spec_of(grad_accum=1, warmup_steps=2, measure_steps=3), lambda: None, "cpu")
    assert got.warmup_steps == 2 and got.times[0] == 3.0  # the cap: the third step is measured, slow as it is


def test_the_loop_composes_and_reports_the_parts(monkeypatch: pytest.MonkeyPatch) -> None:
    samples = iter([[5.0, 2.0, 2.0, 2.0, 6.0]] + [[1.5, 1.0, 1.1, 0.9, 3.0]] * 3)
    monkeypatch.setattr(timing, "composed_sample", lambda *a: (next(samples), torch.tensor(1.0)))
    monkeypatch.setattr(timing, "reduce_on_device", lambda values, op, device: list(values))
    spec = spec_of(grad_accum=32, warmup_steps=2, measure_steps=3)
    got = timing.measure(object(), [{}] * 32, spec, lambda: None, "cpu")
    assert got.step_timing == COMPOSED and got.warmup_steps == 1
    assert got.times == [pytest.approx(1.5 + 30 * 1.0 + 3.0)] * 3
    assert got.summary()["micro_step_s"] == {"first": 1.5, "middle": 1.0, "boundary": 3.0}


def spec_of(**over: Any) -> TrialSpec:
    base = TrialSpec(
        model_config={}, sequence_length=8, micro_batch_size=1, grad_accum=1, activation_checkpointing=False,
        global_batch_size=1, precision="fp32", ds_config={}, max_cv=0.05,
    )  # fmt: skip
    return base.replace(**over)
