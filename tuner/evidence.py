"""What measured trials say about memory (pure): which points must fit, and which must run out.

The memory model alone judges a point with a margin for its own error. Trials are evidence the model can
be wrong about, so they overrule it in both directions:
- a point that needs no more memory than one that fitted is kept (whatever the model predicts);
- a point that needs at least as much as one that ran out of memory is ruled out, with no margin.

"Needs at least as much" is read on the axes where it is known: a larger micro-batch, no checkpointing
where the other had it, the same offload (on a CPU-only machine offloading moves nothing off the device,
so offload does not count there), and the ZeRO stage only in the direction the trials showed. ZeRO
partitions states to save memory, but on a small model its buckets and flat copies outweigh the saving:
on CPU mb8 z0 fitted 0.62 GB where mb8 z1, z2 and z3 ran out (benchmarks/results). So the direction is
read from a pair of trials that differ only in stage, one fitted and one ran out; until such a pair
exists the stage must be equal. One more rule lets the model order what the trials have not: a point
at the same micro-batch and checkpointing as one that ran out, which the calibrated model predicts to need
at least as much (it judges only the stage and offload), is ruled out, unless such a point predicted at
least as high fitted. Across micro-batches and checkpointing the model's order is not trusted: on CPU
mb16 z1 ckpt ran out at a predicted 0.55 GB where mb8 z0 fitted at a predicted 0.56 GB.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from tuner.points import Point

TOLERANCE = 0.01  # predictions this close count as equal (a partitioned gradient of a small model)


def _offloads(point: Point) -> tuple[str, str]:
    return point.offload_optimizer, point.offload_param


def _same_but_stage(a: Point, b: Point, offload_counts: bool) -> bool:
    return (
        a.micro_batch_size == b.micro_batch_size
        and a.activation_checkpointing == b.activation_checkpointing
        and (not offload_counts or _offloads(a) == _offloads(b))
    )


def stage_direction(fitted: Sequence[Point], ran_out: Sequence[Point], offload_counts: bool = True) -> int:
    """+1 when trials show a higher ZeRO stage needs more memory here, -1 when less, 0 when unknown or mixed."""
    seen = {
        (1 if oom.zero_stage > fit.zero_stage else -1)
        for fit in fitted
        for oom in ran_out
        if oom.zero_stage != fit.zero_stage and _same_but_stage(fit, oom, offload_counts)
    }
    return seen.pop() if len(seen) == 1 else 0


def _stage_at_least(hungry: Point, than: Point, direction: int) -> bool:
    diff = hungry.zero_stage - than.zero_stage
    return diff == 0 or diff * direction > 0


def needs_at_least(hungry: Point, than: Point, direction: int, offload_counts: bool = True) -> bool:
    """True when `hungry` needs at least the memory of `than` on every axis the trials or structure order."""
    return (
        hungry.micro_batch_size >= than.micro_batch_size
        and hungry.activation_checkpointing <= than.activation_checkpointing
        and (not offload_counts or _offloads(hungry) == _offloads(than))
        and _stage_at_least(hungry, than, direction)
    )


@dataclass(frozen=True)
class Evidence:
    """Measured points with the calibrated model's prediction for each: those that fitted, those that ran out."""

    fitted: tuple[tuple[Point, float], ...] = ()
    ran_out: tuple[tuple[Point, float], ...] = ()
    offload_counts: bool = True  # False on a CPU-only machine, where offloading moves nothing off the device

    @property
    def direction(self) -> int:
        return stage_direction([p for p, _ in self.fitted], [p for p, _ in self.ran_out], self.offload_counts)

    def fitted_witness(self, point: Point) -> Point | None:
        """A fitted trial that needs at least as much as `point`: it must fit too."""
        direction = self.direction or -1  # no pair yet: the model's usual order, partitioning saves memory
        for other, _ in self.fitted:
            if needs_at_least(other, point, direction, self.offload_counts):
                return other
        return None

    def ran_out_witness(self, point: Point, predicted_gb: float) -> tuple[Point, str] | None:
        """A trial that ran out although `point` needs at least as much (known order, or predicted), and why."""
        direction = self.direction
        for other, _ in self.ran_out:
            if needs_at_least(point, other, direction, self.offload_counts):
                return other, f"{other.label()} ran out of memory and this point needs at least as much"

        def alike(other: Point) -> bool:
            return _same_but_stage(other, point, offload_counts=False)

        higher_fit = any(alike(p) and gb >= predicted_gb * (1 - TOLERANCE) for p, gb in self.fitted)
        for other, gb in self.ran_out:
            if alike(other) and not higher_fit and predicted_gb >= gb * (1 - TOLERANCE):
                return other, (
                    f"{other.label()} ran out of memory at a predicted {gb:.2f} GB and this point is predicted "
                    f"{predicted_gb:.2f} GB"
                )
        return None
