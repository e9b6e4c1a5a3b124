"""The timing loop of a built-in trial: warm-up, then timed steps (whole or composed) until the median is known.

Apart from the worker so that the loop's decisions (warm-up detected, when to stop, how a step is composed)
read top to bottom; the rules themselves are pure and live in tuner.trial.measure. Every rank runs the
same loop on the same reduced figures (the slowest rank's), so all ranks decide alike when to stop.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from tuner.trial.measure import (
    WHOLE,
    clearly_slower,
    composed_sample,
    composed_time,
    reduce_on_device,
    steady_state_done,
    step_timing_for,
    timed_step,
    warmup_prefix,
)
from tuner.trial.spec import TrialSpec


@dataclass
class Timing:
    """What the loop measured: the steps' times (the slowest rank's), how, and where warm-up ended."""

    step_timing: str
    times: list[float] = field(default_factory=list)
    warmup_steps: int = 0
    warmed_up: float = 0.0  # wall clock (epoch seconds) when the last warm-up step ended
    stopped_early: bool = False
    loss: float = float("nan")
    micro: list[list[float]] = field(default_factory=list)  # composed: [first, median middle, boundary] per step
    audit: dict[str, list[float]] = field(default_factory=dict)  # `audit`'s rounds, when the spec asks for them

    def summary(self) -> dict[str, Any]:
        """The result.json fields: how the figures were taken, and a composed step's parts (median seconds)."""
        out: dict[str, Any] = {"step_timing": self.step_timing, "warmup_steps": self.warmup_steps}
        if self.micro:
            first, middle, boundary = (statistics.median(part) for part in zip(*self.micro, strict=True))
            out["micro_step_s"] = {"first": first, "middle": middle, "boundary": boundary}
        if self.audit:
            out["timing_audit"] = self.audit
        return out


def measure(
    engine: Any,
    batches: Sequence[dict[str, Any]],
    spec: TrialSpec,
    synchronize: Callable[[], None],
    device: Any,
) -> Timing:
    """Warm up, then time steps until the median's 95% interval is within `max_cv` (or the cap, or early stop).

    The first step is always warm-up (optimizer state and buffers are made lazily); later leading steps that
    were still falling are reclassified as warm-up (`warmup_prefix`), up to `warmup_steps` in all.
    """
    mode = step_timing_for(spec.step_timing, len(batches))
    timing = Timing(mode, warmed_up=time.time())
    ends: list[float] = []  # wall clock at the end of each timed step, to move warm-up's end with reclassification
    loss: Any = None

    def one_step() -> float:
        nonlocal loss
        if mode == WHOLE:
            elapsed, loss = timed_step(engine, batches, synchronize)
            return reduce_on_device([elapsed], "max", device)[0]
        micro, loss = composed_sample(engine, batches, synchronize)
        parts = [micro[0], statistics.median(micro[1:-1]) if len(micro) > 2 else 0.0, micro[-1]]
        total, *slowest = reduce_on_device([composed_time(micro, len(batches)), *parts], "max", device)
        timing.micro.append(slowest)
        return total

    if spec.warmup_steps > 0:
        one_step()
        timing.warmup_steps, timing.warmed_up = 1, time.time()
        timing.micro.clear()
    cap = max(spec.measure_steps, spec.max_measure_steps or spec.measure_steps)
    while not steady_state_done(timing.times, spec.measure_steps, cap, spec.max_cv):
        timing.times.append(one_step())
        ends.append(time.time())
        drop = min(warmup_prefix(timing.times, spec.max_cv), spec.warmup_steps - timing.warmup_steps)
        if drop > 0:
            del timing.times[:drop], timing.micro[:drop]
            timing.warmup_steps += drop
            timing.warmed_up = ends[drop - 1]
            del ends[:drop]
        if clearly_slower(timing.times, spec.stop_over_step_s):
            timing.stopped_early = True
            break
    timing.loss = float(loss) if loss is not None else float("nan")
    return timing


def audit(
    engine: Any, batches: Sequence[dict[str, Any]], rounds: int, synchronize: Callable[[], None], device: Any
) -> dict[str, list[float]]:
    """Composed timing checked in the same ranks (benchmarks/fidelity.py; `TrialSpec.audit_rounds`): `rounds` of
    a whole step, a composed sample and a whole step again, each the slowest rank's figure.

    Between two trials the same step time differed by 4-17% RMS on a 2-core VM (each trial is new processes),
    which hides a composed figure's error; within one trial only the formula's error and the short-term noise
    remain, and the two whole steps of a round measure that noise.
    """
    out: dict[str, list[float]] = {"whole": [], "composed": [], "whole_again": []}
    for _ in range(rounds):
        whole = timed_step(engine, batches, synchronize, manual_boundary=True)[0]
        micro = composed_sample(engine, batches, synchronize)[0]
        again = timed_step(engine, batches, synchronize, manual_boundary=True)[0]
        figures = reduce_on_device([whole, composed_time(micro, len(batches)), again], "max", device)
        for name, value in zip(out, figures, strict=True):
            out[name].append(value)
    return out
