"""Where a trial's ranks go: its bundles and how many trials a cluster's nodes hold at once."""

from __future__ import annotations

import pytest

from tests.conftest import REPO
from tuner.placement import PACK, SPREAD, TrialShape, concurrent_trials, describe_nodes, strategy, trial_bundles

NODE_8GPU = {"CPU": 96.0, "GPU": 8.0, "memory": 1e12, "node:10.0.0.1": 1.0}


def test_a_local_cpu_trial_holds_the_whole_machine() -> None:
    bundles = trial_bundles(TrialShape(ranks=2, accelerator="cpu"), local_cpus=2)
    assert bundles == [{"CPU": 2}] and strategy(bundles) == PACK
    assert concurrent_trials([{"CPU": 2.0, "memory": 1e9}], bundles) == 1
    assert trial_bundles(TrialShape(ranks=4, accelerator="cpu"), local_cpus=2) == [{"CPU": 4}]  # ranks must fit


def test_on_a_cluster_a_cpu_trial_holds_a_cpu_per_rank_on_each_node() -> None:
    shape = TrialShape(ranks=4, nodes=2, accelerator="cpu", extra={"cpu_pool": 1.0})
    bundles = trial_bundles(shape)
    assert bundles == [{"CPU": 2, "cpu_pool": 1.0}] * 2 and strategy(bundles) == SPREAD
    assert bundles[0] is not bundles[1]  # Ray may annotate one bundle; the other must not change with it


def test_gpu_trials_hold_one_cpu_and_their_gpus_per_node() -> None:
    one_node = trial_bundles(TrialShape(ranks=2, accelerator="cuda"), local_cpus=96)
    assert one_node == [{"CPU": 1, "GPU": 2}]
    assert concurrent_trials([NODE_8GPU], one_node) == 4
    assert concurrent_trials([NODE_8GPU], trial_bundles(TrialShape(ranks=3, accelerator="cuda"))) == 2
    assert concurrent_trials([NODE_8GPU, NODE_8GPU], one_node) == 8


@pytest.mark.parametrize(
    ("slots", "width", "expected"),
    [
        ([8, 8], 2, 8),  # two nodes of 8 slots: 8 trials, each with a bundle on both
        ([8, 8, 8], 2, 12),  # 24 slots, 2 per trial, any two distinct nodes
        ([8, 1, 1], 2, 2),  # a trial's two bundles must sit on distinct nodes: the big node pairs only twice
        ([4], 2, 0),  # one node can never hold a trial over two
        ([1, 1, 0], 3, 0),  # a node without room does not count
        ([2, 2, 2], 3, 2),
    ],
)
def test_trials_over_several_nodes_need_distinct_nodes(slots: list[int], width: int, expected: int) -> None:
    nodes = [{"CPU": float(s), "memory": 1e9} for s in slots]
    assert concurrent_trials(nodes, [{"CPU": 1}] * width) == expected


def test_the_cluster_is_described_without_memory_or_node_labels() -> None:
    shown = describe_nodes([NODE_8GPU, {"CPU": 2.0, "second": 2.0}])
    assert shown == "node 1: CPU=96, GPU=8; node 2: CPU=2, second=2"
    assert describe_nodes([]) == "no nodes"


def test_a_trial_over_four_nodes_needs_a_quarter_of_the_host_memory_per_node() -> None:
    from tuner.plan import estimate_setup
    from tuner.space import load_space

    spanning = load_space(REPO / "search_spaces" / "llama-70b-4x8gpu.yaml")
    one_node = spanning.model_copy(update={"hardware": spanning.hardware.model_copy(update={"nodes_per_trial": 1})})
    assert spanning.hardware.ranks_per_node == 8
    assert estimate_setup(spanning, "cuda").per_node == 8 and estimate_setup(one_node, "cuda").per_node == 32
