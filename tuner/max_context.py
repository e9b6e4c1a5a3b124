"""`tuner plan --max-context` (pure): the longest sequence each family is predicted to fit.

A family is a valid point of the space without its micro-batch and sequence length (ZeRO stage, offload,
checkpointing, tensor and sequence parallelism, the tiled knobs). It is judged at micro-batch 1, the
longest context any micro-batch allows, as `tuner plan` judges a point (tuner.plan.decide: the calibrated
prediction against the device budget less its overhead, host memory for offload), twice: within the
budget itself (the answer), and within the budget plus the plan's margin (the longest a search would
still try: the model's error allowance). The length is bisected over multiples of `step` (64 tokens,
and of sequence_parallel_size) up to the model's max_position_embeddings; every term of the memory
model grows with the length, so the fitting lengths are a prefix. The global batch is left aside: a
family's context does not depend on how many samples a step takes.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace

from tuner.calibration import Calibrations
from tuner.estimate import ModelShape, Setup
from tuner.parallel import sizes
from tuner.plan import Budget, Planned, decide
from tuner.points import Point

STEP = 64  # tokens: the resolution of the answer


@dataclass(frozen=True)
class MaxContext:
    """One family's answer: the longest fitting length (None: not even `step` tokens), and why not longer."""

    family: Point  # at micro-batch 1, without a sequence length
    step: int
    longest: int | None  # predicted within the budget
    at_longest: Planned | None  # the judgement at `longest`
    limit: str  # what stops it: "device memory", "host memory" or the model's max_position_embeddings
    over: Planned | None = None  # the judgement one step longer (None when the model's positions end first)
    with_margin: int | None = None  # the longest within the budget plus the plan's margin

    @property
    def power_of_two(self) -> int | None:
        """The longest power-of-two length that fits (what training runs use)."""
        return 2 ** int(math.log2(self.longest)) if self.longest else None


def families(points: Iterable[Point]) -> list[Point]:
    """The distinct families of `points`, each at micro-batch 1 and without a sequence length, in order."""
    seen: dict[Point, None] = {}
    for point in points:
        values = point.values()
        values.pop("sequence_length", None)
        values["micro_batch_size"] = 1
        seen.setdefault(Point(**values), None)
    return list(seen)


def longest(fits: Callable[[int], bool], steps: int) -> int:
    """The largest k in 1..steps with fits(k) (0 when none), for a `fits` that holds on a prefix."""
    if fits(steps):
        return steps
    low, high = 0, steps  # fits(low) (or low == 0), not fits(high)
    while high - low > 1:
        middle = (low + high) // 2
        if fits(middle):
            low = middle
        else:
            high = middle
    return low


def max_context(
    shape: ModelShape,
    setup: Setup,
    points: Iterable[Point],
    budget: Budget,
    max_positions: int,
    calibrations: Calibrations | None = None,
) -> list[MaxContext]:
    """For each family of `points`, the longest sequence_length predicted to fit, longest first."""
    strict = replace(budget, margin=0.0)
    answers = []
    for family in families(points):
        step = math.lcm(STEP, sizes(family.values())[1])
        steps = max_positions // step

        def judge(k: int, within: Budget, family: Point = family, step: int = step) -> Planned:
            return decide(shape, setup, family.with_knob("sequence_length", k * step), within, calibrations)

        def reach(within: Budget, steps: int = steps) -> int:
            return longest(lambda n: judge(n, within).fits is not False, steps) if steps else 0

        k, k_margin = reach(strict), reach(budget)
        over = judge(k + 1, strict) if k < steps else None  # the first step that does not fit
        if over is None:
            limit = f"max_position_embeddings {max_positions}"
        else:
            limit = "host memory" if "host memory" in (over.reason or "") else "device memory"
        at = judge(k, strict) if k else None
        answers.append(MaxContext(family, step, k * step or None, at, limit, over, k_margin * step or None))
    return sorted(answers, key=lambda a: (-(a.longest or 0), -(a.with_margin or 0)))
