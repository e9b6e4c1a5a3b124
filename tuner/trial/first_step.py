"""The loss of a trial's first optimizer step, so trials of one space compare at the same weights.

Every trial starts from the same seeded weights and trains its first step on the same samples
(tuner.workload.layout), so the first step's loss is the same for tp 1 and tp 2, sp 1 and sp 2, tiled or not,
up to rounding: a trial whose first loss differs runs something else. It is read by a forward hook on the
engine's module, which removes itself after the step's micro-batches: the timed loop stays as it is.
"""

from __future__ import annotations

import math
from typing import Any


class FirstStepLoss:
    """Records the loss of the first `micro_steps` forwards of `module` (one optimizer step's micro-batches)."""

    def __init__(self, module: Any, micro_steps: int) -> None:
        self.micro_steps = micro_steps
        self.losses: list[Any] = []
        self.handle = module.register_forward_hook(self._record)

    def _record(self, module: Any, args: Any, output: Any) -> None:
        loss = getattr(output, "loss", None)
        if loss is not None:
            self.losses.append(loss.detach())
        if len(self.losses) >= self.micro_steps:
            self.handle.remove()

    def value(self) -> float:
        """The step's mean loss over its micro-batches (as the timed steps report it); NaN before a full step."""
        if len(self.losses) < self.micro_steps:
            return math.nan
        return float(sum(float(loss) for loss in self.losses[: self.micro_steps]) / self.micro_steps)
