"""Samplers behind one interface (tuner.samplers.base): the orchestrator builds one from the space by name
here and never names one itself."""

from __future__ import annotations

from collections.abc import Callable

from tuner.samplers.base import DONE, WAIT, Phases, Proposal, Sampler, SearchView
from tuner.samplers.main import GridSampler, GuidedSampler, RandomSampler, TpeSampler
from tuner.samplers.steps import REMEASURE_MAX_POINTS, CommPhase, Remeasure
from tuner.space import Space

MAIN_SAMPLERS: dict[str, Callable[[Space], Sampler]] = {
    "grid": lambda space: GridSampler(),
    "random": lambda space: RandomSampler(space.search.seed),
    "tpe": lambda space: TpeSampler(space.search.seed),
    "guided": lambda space: GuidedSampler(),
}
REMEASURING = {"guided"}  # the samplers whose picks are re-measured before the search ends


def make_sampler(space: Space) -> Sampler:
    """The space's sampler, then the best few re-measured (guided), then the communication knobs."""
    steps: list[Sampler] = [MAIN_SAMPLERS[space.search.sampler](space)]
    if space.search.sampler in REMEASURING and space.search.remeasure_within > 0:
        lengths = max(1, len(space.data.lengths))  # each length re-measures its own best few
        steps.append(Remeasure(space.search.remeasure_within, workloads=lengths))
    steps.append(CommPhase(space.space.comm_lists()))
    return Phases(*steps)


__all__ = [
    "DONE", "MAIN_SAMPLERS", "REMEASURE_MAX_POINTS", "WAIT", "CommPhase", "GridSampler", "GuidedSampler",
    "Phases", "Proposal", "RandomSampler", "Remeasure", "Sampler", "SearchView", "TpeSampler", "make_sampler",
]  # fmt: skip
