"""Where a trial's ranks go: the Ray resources one trial holds, and how many trials a cluster runs at once.

Pure: it reads resource dictionaries in Ray's spelling (CPU, GPU, custom names) and never asks Ray. A trial
holds one bundle per node it spans; the first bundle also holds the Tune trainable, which launches node 0's
ranks and starts the other nodes' ranks as Ray tasks in the other bundles.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

SPREAD = "STRICT_SPREAD"  # one bundle per distinct node: a multi-node trial crosses the network for real
PACK = "PACK"


@dataclass(frozen=True)
class TrialShape:
    """How many ranks a trial runs, over how many nodes, on which accelerator."""

    ranks: int
    nodes: int = 1
    accelerator: str = "cpu"
    extra: Mapping[str, float] = field(default_factory=dict)  # hardware.ray_resources, held on every node
    cpus_per_rank: int | None = None  # hardware.cpus_per_rank, else default_cpus_per_rank on GPU nodes

    @property
    def ranks_per_node(self) -> int:
        return self.ranks // self.nodes


def default_cpus_per_rank(nodes: Sequence[Mapping[str, float]]) -> int:
    """A GPU rank's share of its node's CPUs: CPUs per GPU on the GPU node with the fewest (at least 1)."""
    shares = [int(n.get("CPU", 0) // n["GPU"]) for n in nodes if n.get("GPU", 0) > 0]
    return max(1, min(shares, default=1))


def trial_bundles(shape: TrialShape, local_cpus: int | None = None) -> list[dict[str, float]]:
    """The bundles of one trial, one per node.

    GPU: `ranks_per_node` GPUs and `cpus_per_rank` CPUs per rank on each node: a rank's CPU-side work
    (DeepSpeed's CPU-Adam for optimizer offload runs on its OpenMP threads) gets its share of the node, and
    the ranks' threads are sized to what the trial holds (tuner.trial.env). CPU: a CPU per rank (or
    `cpus_per_rank`); on a local machine (`local_cpus`, one node) a trial holds all its cores, because each
    rank's threads are sized to share them (two one-rank trials at once on 2 cores measured mb32 z0 at 933
    tokens/s; alone, DeepSpeed's autotuner measured it at 6,223).
    """
    per_node = shape.ranks_per_node
    if shape.accelerator == "cuda":
        bundle: dict[str, float] = {"CPU": (shape.cpus_per_rank or 1) * per_node, "GPU": per_node}
    elif local_cpus is not None and shape.nodes == 1:
        bundle = {"CPU": max(local_cpus, per_node)}
    else:
        bundle = {"CPU": (shape.cpus_per_rank or 1) * per_node}
    bundle.update(shape.extra)
    return [dict(bundle) for _ in range(shape.nodes)]


def strategy(bundles: Sequence[Mapping[str, float]]) -> str:
    """STRICT_SPREAD for a trial over several nodes (each bundle on its own node), else PACK."""
    return SPREAD if len(bundles) > 1 else PACK


def _slots(node: Mapping[str, float], bundle: Mapping[str, float]) -> int:
    """How many copies of `bundle` fit in `node`'s resources."""
    fits = [int(node.get(key, 0.0) // need) for key, need in bundle.items() if need > 0]
    return min(fits, default=0)


def concurrent_trials(nodes: Sequence[Mapping[str, float]], bundles: Sequence[Mapping[str, float]]) -> int:
    """How many trials the cluster's nodes hold at once; 0 when not even one fits.

    Tune is capped at this, so a point is chosen only when it can start: otherwise Tune keeps one more trial
    pending and the searcher picks it before the running trial's result is in (guided then launched
    mb16 z1 before learning that mb16 z0 ran out of memory).

    With one bundle per node on n distinct nodes, T trials fit exactly when the nodes' slots, each counted at
    most T times (a node holds at most one bundle of each trial), add up to n*T.
    """
    if not bundles:
        return 0
    slots = [_slots(node, bundles[0]) for node in nodes]
    width = len(bundles)
    if width == 1:
        return sum(slots)
    best = 0
    for trials in range(1, sum(slots) // width + 1):
        if sum(min(s, trials) for s in slots) >= width * trials:
            best = trials
    return best


def describe_resources(resources: Mapping[str, float]) -> str:
    """One node's or bundle's resources as `CPU=2, GPU=8, h100_node=1` (no memory sizes or node labels)."""
    hidden = ("memory", "object_store_memory")
    return ", ".join(f"{k}={v:g}" for k, v in sorted(resources.items()) if ":" not in k and k not in hidden)


def describe_nodes(nodes: Sequence[Mapping[str, float]]) -> str:
    """The cluster's nodes in one line, for the error when a trial cannot be placed."""
    shown = [describe_resources(node) or "nothing" for node in nodes]
    return "; ".join(f"node {i + 1}: {s}" for i, s in enumerate(shown)) or "no nodes"
