"""Points: batch arithmetic, the validity rules, enumeration and the Optuna-params round trip."""

from __future__ import annotations

import itertools
from typing import Any

import pytest

from tuner.parallel import Context
from tuner.points import Enumeration, Point, enumerate_points, grad_accum, invalid_reason
from tuner.space import Space, parse_space

DIVIDE = "does not divide global_batch_size"
PARAM_RULE = "offload_param needs zero_stage 3"
OPT_RULE = "offload_optimizer needs zero_stage 1 or higher"


def _space(space: dict[str, Any], global_batch: int = 8, ranks: int = 1) -> Space:
    raw = {
        "model": {"config": {"model_type": "gpt2", "n_layer": 1, "n_embd": 32, "n_head": 2}},
        "data": {"sequence_length": 32},
        "training": {"global_batch_size": global_batch},
        "hardware": {"gpus_per_trial": ranks},
        "space": space,
    }
    return parse_space(raw, default_study="t")


# --- grad_accum ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("global_batch", "micro", "ranks", "accum"),
    [
        (16, 2, 2, 4),
        (16, 8, 2, 1),
        (16, 1, 1, 16),
        (8, 8, 1, 1),
        (12, 2, 3, 2),
        (64, 4, 8, 2),
        (16, 3, 1, None),  # 3 does not divide 16
        (16, 16, 2, None),  # one step of 32 samples is more than the global batch
        (12, 2, 4, None),  # 8 per step does not divide 12
        (10, 4, 1, None),
    ],
)
def test_grad_accum(global_batch: int, micro: int, ranks: int, accum: int | None) -> None:
    assert grad_accum(global_batch, micro, ranks) == accum
    if accum is not None:
        assert micro * accum * ranks == global_batch


# --- invalid_reason ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "point",
    [
        Point(2, 0),
        Point(2, 1, offload_optimizer="cpu"),
        Point(2, 2, offload_optimizer="cpu", activation_checkpointing=True),
        Point(2, 3, offload_optimizer="cpu", offload_param="cpu"),
        Point(2, 3, offload_param="cpu"),
    ],
    ids=Point.label,
)
def test_valid_points_have_no_reason(point: Point) -> None:
    assert invalid_reason(point, 8, Context(2)) is None


def test_micro_not_dividing_global_for_the_ranks() -> None:
    # 4 x 1 rank divides 8, 4 x 3 ranks does not.
    assert invalid_reason(Point(4, 0), 8, Context(1)) is None
    reason = invalid_reason(Point(4, 0), 8, Context(3))
    assert reason == "micro_batch_size 4 x 3 ranks does not divide global_batch_size 8"


@pytest.mark.parametrize("stage", [0, 1, 2])
def test_offload_param_below_stage_3(stage: int) -> None:
    assert invalid_reason(Point(1, stage, offload_param="cpu"), 8, Context(1)) == PARAM_RULE


def test_offload_optimizer_at_stage_0() -> None:
    assert invalid_reason(Point(1, 0, offload_optimizer="cpu"), 8, Context(1)) == OPT_RULE
    for stage in (1, 2, 3):
        assert invalid_reason(Point(1, stage, offload_optimizer="cpu"), 8, Context(1)) is None


def test_reason_precedence() -> None:
    # The batch arithmetic is reported first, then offload_param, then offload_optimizer.
    both = Point(3, 0, offload_optimizer="cpu", offload_param="cpu")
    assert DIVIDE in (invalid_reason(both, 8, Context(1)) or "")
    assert invalid_reason(Point(1, 0, offload_optimizer="cpu", offload_param="cpu"), 8, Context(1)) == PARAM_RULE


# --- enumerate_points ----------------------------------------------------------------------------


def test_enumerate_counts_valid_and_dropped() -> None:
    space = _space(
        {
            "micro_batch_size": [1, 2, 3],
            "zero_stage": [0, 1, 3],
            "offload_optimizer": ["none", "cpu"],
            "offload_param": ["none", "cpu"],
        },
        global_batch=8,
        ranks=2,
    )
    enum = enumerate_points(space)
    assert isinstance(enum, Enumeration)
    # 3 x 3 x 2 x 2 = 36 combinations. micro 3 x 2 ranks never divides 8: 12 dropped.
    # For micro 1 and 2: offload_param at stage 0 or 1 drops 2 x 2 = 4, offload_optimizer alone at stage 0
    # drops 1, so 5 of 12 are dropped and 7 are valid.
    assert len(enum.valid) + len(enum.dropped) == 36
    assert len(enum.valid) == 14
    assert len(enum.dropped) == 22
    assert enum.dropped_summary() == [
        ("micro_batch_size 3 x 2 ranks does not divide global_batch_size 8", 12),
        (PARAM_RULE, 8),
        (OPT_RULE, 2),
    ]
    for point, reason in enum.dropped:
        assert invalid_reason(point, 8, Context(2)) == reason
    assert all(invalid_reason(point, 8, Context(2)) is None for point in enum.valid)


def test_enumerate_order_is_the_product_order() -> None:
    lists = {
        "micro_batch_size": [4, 1],
        "zero_stage": [2, 0],
        "offload_optimizer": ["none", "cpu"],
        "activation_checkpointing": [True, False],
    }
    enum = enumerate_points(_space(lists, global_batch=8))
    expected = [
        Point(mb, z, opt, "none", ckpt)
        for mb, z, opt, ckpt in itertools.product(*lists.values())
        if not (z == 0 and opt == "cpu")
    ]
    assert list(enum.valid) == expected
    assert enumerate_points(_space(lists, global_batch=8)) == enum  # deterministic


def test_enumerate_respects_gpus_per_trial() -> None:
    lists = {"micro_batch_size": [1, 2, 4, 8], "zero_stage": [0]}
    assert [p.micro_batch_size for p in enumerate_points(_space(lists, global_batch=8, ranks=1)).valid] == [1, 2, 4, 8]
    assert [p.micro_batch_size for p in enumerate_points(_space(lists, global_batch=8, ranks=4)).valid] == [1, 2]


def test_all_dropped_space() -> None:
    enum = enumerate_points(_space({"micro_batch_size": [3, 5], "zero_stage": [0, 1]}, global_batch=8))
    assert enum.valid == ()
    assert len(enum.dropped) == 4
    assert enum.dropped_summary() == [
        ("micro_batch_size 3 x 1 ranks does not divide global_batch_size 8", 2),
        ("micro_batch_size 5 x 1 ranks does not divide global_batch_size 8", 2),
    ]


def test_nothing_dropped_summary_is_empty() -> None:
    enum = enumerate_points(_space({"micro_batch_size": [1, 2], "zero_stage": [0, 3]}))
    assert len(enum.valid) == 4
    assert enum.dropped == ()
    assert enum.dropped_summary() == []


# --- Point ---------------------------------------------------------------------------------------


def test_params_round_trip() -> None:
    point = Point(4, 3, offload_optimizer="cpu", offload_param="cpu", activation_checkpointing=True)
    params = point.params()
    assert params == {
        "micro_batch_size": 4,
        "zero_stage": 3,
        "offload_optimizer": "cpu",
        "offload_param": "cpu",
        "activation_checkpointing": True,
    }
    assert Point.from_params(params) == point


def test_from_params_defaults_and_extra_keys() -> None:
    point = Point.from_params({"micro_batch_size": 2, "zero_stage": 1, "unrelated": "ignored"})
    assert point == Point(2, 1, "none", "none", False)


def test_from_params_needs_micro_and_stage() -> None:
    with pytest.raises(TypeError):
        Point.from_params({"zero_stage": 1})


def test_point_is_hashable_and_frozen() -> None:
    assert len({Point(1, 0), Point(1, 0), Point(2, 0)}) == 2
    with pytest.raises(AttributeError):
        Point(1, 0).zero_stage = 2  # type: ignore[misc]


@pytest.mark.parametrize(
    ("point", "label"),
    [
        (Point(2, 0), "mb2 z0"),
        (Point(8, 2, offload_optimizer="cpu"), "mb8 z2 opt=cpu"),
        (Point(1, 3, offload_param="cpu"), "mb1 z3 param=cpu"),
        (Point(2, 1, activation_checkpointing=True), "mb2 z1 ckpt"),
        (Point(4, 3, "cpu", "cpu", True), "mb4 z3 opt=cpu param=cpu ckpt"),
    ],
)
def test_label(point: Point, label: str) -> None:
    assert point.label() == label
