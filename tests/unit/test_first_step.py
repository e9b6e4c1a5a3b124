"""The first optimizer step's loss, read by a forward hook that removes itself after the step's micro-batches."""

from __future__ import annotations

import math
from types import SimpleNamespace
from typing import Any

import torch

from tuner.trial.first_step import FirstStepLoss


class Losses(torch.nn.Module):
    """A module whose n-th forward returns the loss n (as a model's output with a `.loss`)."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def forward(self) -> Any:
        self.calls += 1
        return SimpleNamespace(loss=torch.tensor(float(self.calls)))


def test_the_first_step_is_the_mean_of_its_micro_batches_and_later_steps_do_not_count() -> None:
    module = Losses()
    first = FirstStepLoss(module, micro_steps=3)
    module()
    assert math.isnan(first.value())  # not a whole step yet
    for _ in range(5):
        module()
    assert first.value() == 2.0  # (1 + 2 + 3) / 3
    assert not module._forward_hooks  # the hook is gone: nothing runs in later steps
