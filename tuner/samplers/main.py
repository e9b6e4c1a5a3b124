"""The main-phase samplers: grid, random, tpe and guided, one small class each."""

from __future__ import annotations

import random

from tuner import guided
from tuner.samplers.base import DONE, Done, Proposal, SearchView, Wait

TPE_TRIES = 20  # TPE proposals of already-measured points before falling back to a random new one


class GridSampler:
    """Every valid point, in the space's order: the ground truth the others are measured against."""

    def propose(self, view: SearchView) -> Proposal | Wait | Done:
        remaining = view.remaining()
        return Proposal(remaining[0]) if remaining else DONE

    def extra_trials(self) -> int:
        return 0


class RandomSampler:
    """Valid points drawn without replacement, seeded."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)

    def propose(self, view: SearchView) -> Proposal | Wait | Done:
        remaining = view.remaining()
        return Proposal(self.rng.choice(remaining)) if remaining else DONE

    def extra_trials(self) -> int:
        return 0


class TpeSampler(RandomSampler):
    """Optuna's TPE over a conditional space (the study's own sampler); a point it proposes again is recorded
    as a duplicate with the earlier value (Optuna's advice), and after TPE_TRIES a random new point is taken."""

    def propose(self, view: SearchView) -> Proposal | Wait | Done:
        remaining = view.remaining()
        if not remaining:
            return DONE
        for _ in range(TPE_TRIES):
            trial = view.ask()
            point = view.suggest(trial)
            if point in remaining:
                return Proposal(point, trial)
            view.duplicate(trial, point)
        return Proposal(self.rng.choice(remaining))


class GuidedSampler:
    """The space's structure instead of blind sampling (tuner.guided): done when nothing left can win."""

    def propose(self, view: SearchView) -> Proposal | Wait | Done:
        remaining = view.remaining()
        if not remaining:
            return DONE
        # A point the memory model rules out is recorded PRUNED when proposed and leaves `remaining`, so
        # guided then tries the next smaller micro-batch of its family.
        choice = guided.next_point(remaining, view.outcomes(), offload_is_slower=view.offload_is_slower)
        return DONE if choice is None else Proposal(choice)

    def extra_trials(self) -> int:
        return 0
