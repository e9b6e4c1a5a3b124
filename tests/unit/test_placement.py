"""Where a trial's ranks go: its bundles and how many trials a cluster's nodes hold at once."""

from __future__ import annotations

import pytest

from tests.conftest import REPO
from tuner.placement import (
    PACK,
    SPREAD,
    TrialShape,
    concurrent_trials,
    default_cpus_per_rank,
    describe_nodes,
    strategy,
    trial_bundles,
)

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


def test_gpu_trials_hold_their_gpus_and_a_share_of_the_cpus_per_rank() -> None:
    per_rank = default_cpus_per_rank([NODE_8GPU, {"CPU": 2.0}])  # a CPU-only head does not count
    assert per_rank == 12  # 96 CPUs for 8 GPUs
    one_node = trial_bundles(TrialShape(ranks=2, accelerator="cuda", cpus_per_rank=per_rank), local_cpus=96)
    assert one_node == [{"CPU": 24, "GPU": 2}]
    assert concurrent_trials([NODE_8GPU], one_node) == 4
    three = trial_bundles(TrialShape(ranks=3, accelerator="cuda", cpus_per_rank=per_rank))
    assert concurrent_trials([NODE_8GPU], three) == 2
    assert concurrent_trials([NODE_8GPU, NODE_8GPU], one_node) == 8
    spanning = trial_bundles(TrialShape(ranks=16, nodes=2, accelerator="cuda", cpus_per_rank=per_rank))
    assert spanning == [{"CPU": 96, "GPU": 8}] * 2 and concurrent_trials([NODE_8GPU, NODE_8GPU], spanning) == 1


def test_the_cpu_share_is_set_by_the_gpu_node_with_the_fewest_cpus_per_gpu() -> None:
    small = {"CPU": 16.0, "GPU": 8.0}
    assert default_cpus_per_rank([NODE_8GPU, small]) == 2
    assert default_cpus_per_rank([{"CPU": 4.0, "GPU": 8.0}]) == 1  # never below one
    assert default_cpus_per_rank([{"CPU": 2.0}]) == 1  # no GPU node at all


def test_each_rank_runs_its_share_of_the_trials_cpus_as_threads_on_gpus_too() -> None:
    from tuner.trial.env import worker_env

    gpu = worker_env("cuda", ranks=8, cpus=96)
    assert gpu["OMP_NUM_THREADS"] == "12" and gpu["DS_ACCELERATOR"] == "cuda"
    cpu = worker_env("cpu", ranks=2, cpus=2)
    assert cpu["OMP_NUM_THREADS"] == "1" and cpu["DS_ACCELERATOR"] == "cpu"
    assert worker_env("cuda", ranks=4, cpus=2)["OMP_NUM_THREADS"] == "1"  # never zero


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
