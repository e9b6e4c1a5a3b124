"""What measured trials say about memory (pure): which points must fit, and which must run out.

The memory model alone judges a point with a margin for its own error. Trials are evidence the model can
be wrong about, so they overrule it in both directions:
- a point that needs no more memory than one that fitted is kept (whatever the model predicts);
- a point that needs at least as much as one that ran out of memory is ruled out, with no margin.

"Needs at least as much" is read on the axes where it is known (the knob registry's memory orderings,
tuner.orders): a larger micro-batch or sequence length, no checkpointing or tiling where the other had it,
less sequence parallelism, less tensor parallelism where neither point partitions with ZeRO (AutoTP's
ranks leave ZeRO's group, so at stage 1-3 tp is not ordered), the same offload (on a CPU-only machine
offloading moves nothing off the device, so offload does not count there), and the ZeRO stage only in the
direction the trials showed. ZeRO
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

from dataclasses import dataclass

from tuner.orders import learned_direction, needs_at_least, same_but_learned
from tuner.points import Point

TOLERANCE = 0.01  # predictions this close count as equal (a partitioned gradient of a small model)


@dataclass(frozen=True)
class Evidence:
    """Measured points with the calibrated model's prediction for each: those that fitted, those that ran out."""

    fitted: tuple[tuple[Point, float], ...] = ()
    ran_out: tuple[tuple[Point, float], ...] = ()
    offload_counts: bool = True  # False on a CPU-only machine, where offloading moves nothing off the device

    @property
    def direction(self) -> int:
        return learned_direction([p for p, _ in self.fitted], [p for p, _ in self.ran_out], self.offload_counts)

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
            return same_but_learned(other, point, on_device=False)

        higher_fit = any(alike(p) and gb >= predicted_gb * (1 - TOLERANCE) for p, gb in self.fitted)
        for other, gb in self.ran_out:
            if alike(other) and not higher_fit and predicted_gb >= gb * (1 - TOLERANCE):
                return other, (
                    f"{other.label()} ran out of memory at a predicted {gb:.2f} GB and this point is predicted "
                    f"{predicted_gb:.2f} GB"
                )
        return None
