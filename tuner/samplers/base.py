"""The sampler interface: the next point, or "wait", or "done"; told nothing else (Optuna's BaseSampler shape).

A sampler reads the search so far through `SearchView` and proposes one point at a time. The orchestrator
(tuner.searcher) judges each proposal against the memory model, records it, launches it, and asks again;
it knows no sampler by name. Steps that follow the main search (re-measuring the best few, the
communication knobs) are samplers too, composed in order by `Phases`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from optuna.trial import FrozenTrial, Trial

from tuner import guided
from tuner.points import Point

Wait = Literal["wait"]
Done = Literal["done"]
WAIT: Wait = "wait"  # come back once the trials in flight have reported
DONE: Done = "done"  # nothing more to propose


@dataclass(frozen=True)
class Proposal:
    """A point to measure; `trial` when the sampler already asked the study (TPE), `attrs` to record with it."""

    point: Point
    trial: Trial | None = None
    attrs: Mapping[str, Any] = field(default_factory=dict)


class SearchView(Protocol):
    """What a sampler may read of the search, and the two things TPE asks of the study."""

    valid: tuple[Point, ...]
    done: dict[Point, FrozenTrial]
    repeats: dict[Point, list[FrozenTrial]]
    skipped: set[Point]
    pruned_before: set[Point]
    ranks: int
    offload_is_slower: bool

    def remaining(self) -> list[Point]: ...

    def busy(self) -> bool: ...

    def value(self, point: Point) -> float | None: ...

    def signed(self, trial: FrozenTrial) -> float | None: ...

    def outcomes(self) -> dict[Point, guided.Outcome]: ...

    def ask(self) -> Trial: ...

    def suggest(self, trial: Trial) -> Point: ...

    def duplicate(self, trial: Trial, point: Point) -> None: ...


class Sampler(Protocol):
    """Proposes the next point to measure, or WAIT, or DONE."""

    def propose(self, view: SearchView) -> Proposal | Wait | Done: ...

    def extra_trials(self) -> int:
        """Trials it may launch beyond one per valid point (re-measurements, communication variants)."""
        ...


class Phases:
    """Samplers run in order: each proposes until it is done, then the next one takes over."""

    def __init__(self, *steps: Sampler) -> None:
        self.steps = steps

    def propose(self, view: SearchView) -> Proposal | Wait | Done:
        for step in self.steps:
            proposed = step.propose(view)
            if proposed != DONE:
                return proposed
        return DONE

    def extra_trials(self) -> int:
        return sum(step.extra_trials() for step in self.steps)
