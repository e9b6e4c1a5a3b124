"""`tuner plan --device/--ranks` (tuner.whatif): the device table, and a plan recomputed on hardware not owned:
the budget from the card (an 8B point that fits an H200 but not an A100 40GB, by the memory model), the ranks
(validity, data-parallel ranks, accumulation) and the nodes they are placed on."""

from __future__ import annotations

from typing import Any

import pytest

from tests.unit.test_estimate_parallel import LLAMA3_8B
from tuner.errors import SpaceError
from tuner.parallel import data_parallel
from tuner.plan import decide, device_budget, estimate_setup, prune_margin
from tuner.points import Point, enumerate_points, point_accum
from tuner.space import Space, parse_space
from tuner.whatif import DEVICES, Hardware, device_named, what_if
from tuner.workload.hf_causal_lm import model_shape

# Llama 3.1 8B at 32k on 8 ranks of 80 GB, as search_spaces/llama-8b-32k-8gpu.yaml (2M tokens per step)
RAW: dict[str, Any] = {
    "model": {"config": LLAMA3_8B, "attn_implementation": "sdpa"},
    "data": {"sequence_length": 32768},
    "training": {"global_batch_size": 64, "precision": "bf16"},
    "hardware": {"accelerator": "cuda", "gpus_per_trial": 8, "device_memory_gb": 80, "host_memory_gb": 1024},
    "space": {
        "micro_batch_size": [1, 2], "zero_stage": [1, 3], "activation_checkpointing": [True],
        "tiled_logits": [True], "tensor_parallel_size": [1, 2, 8],
    },
}  # fmt: skip
POINT = Point(1, 1, activation_checkpointing=True, tiled_logits=True)  # mb1 z1 ckpt tlog


@pytest.fixture(scope="module")
def space() -> Space:
    return parse_space(RAW, default_study="whatif")


@pytest.fixture(scope="module")
def llama8b() -> Any:
    return model_shape(LLAMA3_8B, {"attn_implementation": "sdpa"})


def judge(hardware: Hardware, shape: Any, point: Point = POINT) -> Any:
    """The plan's decision for `point` on the what-if hardware, as `tuner plan` makes it."""
    space = hardware.space
    budget = device_budget(hardware.device_gb, space.hardware.host_memory_gb, prune_margin(space, "cuda"), "cuda")
    return decide(shape, estimate_setup(space, "cuda"), point, budget)


def test_the_table_holds_the_cards_as_the_driver_reports_them() -> None:
    h200, a100 = DEVICES["h200"], DEVICES["a100-40gb"]
    assert h200.sold_gb == 141 and h200.memory_gb == pytest.approx(140.40, abs=0.01)  # 143,771 MiB
    assert a100.memory_gb == 40.0 and DEVICES["h100-80gb"].memory_gb == pytest.approx(79.65, abs=0.01)
    assert (h200.peak("bf16"), a100.peak("bf16"), DEVICES["l40s"].peak("bf16")) == (989.0, 312.0, 362.0)
    assert device_named("H200") is h200  # the name as a user might type it
    assert DEVICES["l40s"].host_gb is None and h200.host_gb == 2048.0


def test_an_8b_point_fits_an_h200_but_not_an_a100_40gb(space: Space, llama8b: Any) -> None:
    on_h200 = judge(what_if(space, None, "h200", None), llama8b)
    on_a100 = judge(what_if(space, None, "a100-40gb", None), llama8b)
    assert on_h200.predicted_gb == pytest.approx(on_a100.predicted_gb)  # the same point: only the budget moved
    assert 40 * 1.1 < on_h200.predicted_gb < 139  # over an A100 even with the margin, inside an H200 without it
    assert on_h200.fits is True and on_h200.reason is None
    assert on_a100.fits is False and "over the budget of 40 GB less 1.00 GB" in str(on_a100.reason)


def test_a_device_replaces_the_budget_host_memory_peak_and_accelerator(space: Space) -> None:
    hardware = what_if(space, None, "l40s", None)
    h = hardware.space.hardware
    assert (h.device_memory_gb, h.host_memory_gb, h.peak_tflops, h.accelerator) == (
        pytest.approx(44.99, abs=0.01), None, 362.0, "cuda")  # fmt: skip
    assert (h.gpus_per_trial, h.nodes_per_trial) == (8, 1)  # the space's ranks kept
    line = hardware.describe("cuda")
    assert line.startswith("hardware what-if (--device/--ranks): l40s (48 GB as sold, 45.0 GB of 2^30 bytes")
    assert "host memory per node not known for l40s servers" in line
    assert space.hardware.device_memory_gb == 80, "the space itself is left as it was"


def test_more_ranks_change_the_data_parallel_ranks_and_the_accumulation(space: Space) -> None:
    on_8, on_16 = space, what_if(space, None, None, "16").space
    tp2 = Point(1, 1, activation_checkpointing=True, tiled_logits=True, tensor_parallel_size=2)
    assert [data_parallel(p.values(), 8) for p in (POINT, tp2)] == [8, 4]
    assert [data_parallel(p.values(), 16) for p in (POINT, tp2)] == [16, 8]
    assert [point_accum(p, 64, on_8.hardware.gpus_per_trial) for p in (POINT, tp2)] == [8, 16]
    assert [point_accum(p, 64, on_16.hardware.gpus_per_trial) for p in (POINT, tp2)] == [4, 8]
    assert (on_16.hardware.nodes_per_trial, on_16.hardware.ranks_per_node) == (2, 8)  # nodes of 8 devices
    assert enumerate_points(on_16).valid and not enumerate_points(on_16).dropped


def test_fewer_ranks_make_points_invalid_that_were_valid(space: Space) -> None:
    assert not enumerate_points(space).dropped
    on_4 = enumerate_points(what_if(space, None, None, "4").space)
    reasons = {reason for reason, _ in on_4.dropped_summary()}
    assert any("tensor_parallel_size 8 does not divide the 4 ranks" in r for r in reasons), reasons
    on_3 = enumerate_points(what_if(space, None, None, "3").space)
    assert not on_3.valid  # 64 samples do not split over 3 data-parallel ranks at any micro-batch


def test_ranks_are_placed_on_nodes_of_8_split_evenly(space: Space) -> None:
    twelve = what_if(space, None, "h100-80gb", "12")
    assert (twelve.space.hardware.nodes_per_trial, twelve.space.hardware.ranks_per_node) == (2, 6)
    assert "12 rank(s) on 2 node(s) of 6 (assumed: nodes of 8 devices, the ranks split evenly)" in (
        twelve.describe("cuda")
    )
    with pytest.raises(SpaceError, match=r"--ranks: 17 ranks do not split evenly over 3 nodes .* \(e\.g\. 24\)"):
        what_if(space, None, "h200", "17")


def test_nothing_asked_leaves_the_space_and_says_where_the_hardware_came_from(space: Space) -> None:
    hardware = what_if(space, None, None, None)
    assert hardware.space is space and hardware.device_gb is None and not hardware.overridden
    line = hardware.describe("cuda")
    assert line == (
        "hardware from the space: cuda devices of 80 GB; 8 rank(s) on 1 node(s) of 8; host memory 1024 GB per node"
    )
    assert hardware.as_dict("cuda")["overridden"] is False


@pytest.mark.parametrize(
    ("accelerator", "device", "ranks", "says"),
    [
        (None, "b200", None, "--device: unknown device 'b200'; allowed: a100-40gb, a100-80gb, h100-80gb, h200, l40s"),
        (None, None, "0", "--ranks: must be a positive whole number of ranks per trial, not '0'"),
        (None, None, "two", "--ranks: must be a positive whole number of ranks per trial, not 'two'"),
        (None, None, "-8", "--ranks: must be a positive whole number"),
        ("cpu", "h200", None, "--accelerator: --device h200 is a GPU"),
    ],
)
def test_bad_what_ifs_name_the_flag_and_what_is_allowed(
    space: Space, accelerator: str | None, device: str | None, ranks: str | None, says: str
) -> None:
    with pytest.raises(SpaceError) as raised:
        what_if(space, accelerator, device, ranks)
    assert str(raised.value).startswith(says) and "\n" not in str(raised.value)
