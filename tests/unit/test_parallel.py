"""Tensor and sequence parallelism in the pure core: which points DeepSpeed 0.19 runs, the batch arithmetic over
the data-parallel ranks, DeepSpeed's own train_batch_size, and a searched sequence length."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from tuner.dsconfig import build_ds_config
from tuner.errors import SpaceError
from tuner.parallel import AUTOTP_UNSUPPORTED, Context, data_parallel, deepspeed_world
from tuner.points import Point, enumerate_points, invalid_reason, point_accum
from tuner.space import Space, parse_space

LLAMA = {"model_type": "llama", "num_hidden_layers": 1, "hidden_size": 64, "num_attention_heads": 8,
         "num_key_value_heads": 4, "intermediate_size": 128, "vocab_size": 256}  # fmt: skip


def _space(space: dict[str, Any], ranks: int = 8, length: Any = 1024, **sections: Any) -> Space:
    raw = {
        "model": {"config": LLAMA},
        "data": {"sequence_length": length},
        "training": {"global_batch_size": 16, **sections.pop("training", {})},
        "hardware": {"gpus_per_trial": ranks, **sections.pop("hardware", {})},
        "space": {"micro_batch_size": [1], "zero_stage": [1], **space},
        **sections,
    }
    return parse_space(raw, default_study="t")


LLAMA_8 = Context(ranks=8, heads=8, kv_heads=4, sequence_length=1024, model_type="llama")


@pytest.mark.parametrize(
    ("knobs", "ctx", "reason"),
    [
        ({"tensor_parallel_size": 2}, LLAMA_8, None),
        ({"tensor_parallel_size": 4}, LLAMA_8, None),
        ({"tensor_parallel_size": 3}, LLAMA_8, "tensor_parallel_size 3 does not divide the 8 ranks"),
        ({"tensor_parallel_size": 8}, LLAMA_8, "tensor_parallel_size 8 does not divide the model's 4 key-value heads"),
        ({"tensor_parallel_size": 4}, Context(8, ranks_per_node=2, kv_heads=4),
         "tensor_parallel_size 4 would span nodes: a tensor-parallel group stays within one node's 2 ranks"),
        ({"tensor_parallel_size": 2}, Context(2, model_type="gpt2"),
         "tensor_parallel_size 2: DeepSpeed's AutoTP does not support gpt2 models (auto_tp.py)"),
        ({"tensor_parallel_size": 2, "sequence_parallel_size": 2}, LLAMA_8,
         "tensor_parallel_size 2 with sequence_parallel_size 2: DeepSpeed 0.19's AutoTP replaces the process groups "
         "Ulysses needs (engine.py _configure_tensor_parallel); use one of them"),
        ({"sequence_parallel_size": 8}, LLAMA_8, None),  # kv 4 divides sp 8: Ulysses repeats the kv heads
        ({"sequence_parallel_size": 4}, Context(6, heads=8), "sequence_parallel_size 4 does not divide the 6 ranks"),
        ({"sequence_parallel_size": 4}, Context(4, heads=6), "sequence_parallel_size 4 does not divide the model's 6 "
         "attention heads"),
        ({"sequence_parallel_size": 4}, Context(4, heads=12, kv_heads=6),
         "sequence_parallel_size 4 and the model's 6 key-value heads: one must divide the other"),
        ({"sequence_parallel_size": 4}, Context(4, heads=8, sequence_length=1022),
         "sequence_parallel_size 4 does not divide sequence_length 1022"),
        ({"sequence_parallel_size": 2, "sequence_length": 1023}, Context(4, heads=8),
         "sequence_parallel_size 2 does not divide sequence_length 1023"),  # the point's own length
        ({"sequence_parallel_size": 2}, Context(4, heads=8, attention="eager"),
         "sequence_parallel_size needs sdpa or flash attention: DeepSpeed's Ulysses refuses eager"),
    ],
)  # fmt: skip
def test_each_rule_names_what_deepspeed_refuses(knobs: dict[str, Any], ctx: Context, reason: str | None) -> None:
    point = Point(1, 1, **knobs)
    assert invalid_reason(point, 8 * ctx.ranks, ctx) == reason


def test_the_autotp_refusals_are_deepspeeds_own_list() -> None:
    import deepspeed.module_inject.auto_tp as auto_tp

    source = Path(auto_tp.__file__).read_text()
    listed = re.search(r"unsupported = \[([^\]]*)\]", source)
    assert listed is not None and tuple(re.findall(r"'(\w+)'", listed.group(1))) == AUTOTP_UNSUPPORTED


def test_tp_and_sp_leave_the_data_parallel_ranks_and_keep_the_global_batch() -> None:
    """16 samples on 8 ranks: dp = 8 / (tp x sp); accumulation = 16 / (micro x dp); DeepSpeed's own batch counts
    every rank under AutoTP (tp ranks share samples) and ranks / sp under Ulysses."""
    for knobs, dp, accum, deepspeed_batch in [
        ({}, 8, 2, 16),
        ({"tensor_parallel_size": 2}, 4, 4, 32),
        ({"tensor_parallel_size": 4}, 2, 8, 64),
        ({"sequence_parallel_size": 2}, 4, 4, 16),
        ({"sequence_parallel_size": 8}, 1, 16, 16),
    ]:
        point = Point(1, 1, **knobs)
        assert data_parallel(point.values(), 8) == dp and point_accum(point, 16, 8) == accum
        config = build_ds_config({}, point, global_batch=16, ranks=8, precision="bf16", accelerator="cuda")
        assert config["gradient_accumulation_steps"] == accum
        assert config["train_batch_size"] == deepspeed_batch == accum * deepspeed_world(point.values(), 8)
        assert config.get("tensor_parallel", {}).get("autotp_size", 1) == knobs.get("tensor_parallel_size", 1)
        assert config.get("sequence_parallel_size", 1) == knobs.get("sequence_parallel_size", 1)


def test_a_base_configs_tensor_parallel_does_not_leak_into_a_tp1_point() -> None:
    base = {"tensor_parallel": {"autotp_size": 4}, "sequence_parallel_size": 2}
    config = build_ds_config(base, Point(1, 1), global_batch=16, ranks=8, precision="bf16", accelerator="cuda")
    assert "tensor_parallel" not in config and "sequence_parallel_size" not in config


def test_enumeration_drops_each_invalid_layout_with_its_reason() -> None:
    space = _space({"tensor_parallel_size": [1, 2, 8], "sequence_parallel_size": [1, 2], "micro_batch_size": [1, 4]})
    enum = enumerate_points(space)
    assert sorted(p.label() for p in enum.valid) == sorted(
        ["mb1 z1", "mb1 z1 tp2", "mb1 z1 sp2", "mb4 z1 tp2", "mb4 z1 sp2"]
    )
    reasons = dict(enum.dropped_summary())
    assert reasons["micro_batch_size 4 x 8 ranks does not divide global_batch_size 16"] == 1
    assert reasons["tensor_parallel_size 8 does not divide the model's 4 key-value heads"] == 2
    assert sum(n for r, n in reasons.items() if "with sequence_parallel_size" in r) == 4  # named before the heads
    # a point at tp 1 and sp 1 leaves both out of its params: stores written before these knobs read the same
    assert "tensor_parallel_size" not in Point(1, 1).params() and Point(1, 1).tensor_parallel_size == 1


def test_a_list_of_lengths_is_a_knob_with_the_global_batch_in_samples_or_tokens() -> None:
    samples = _space({}, length=[4096, 1024, 2048])
    assert samples.data.sequence_length == [1024, 2048, 4096] and samples.knob_values("sequence_length") == [
        1024, 2048, 4096]  # fmt: skip
    points = enumerate_points(samples).valid
    assert [p.label() for p in points] == ["mb1 z1 s1024", "mb1 z1 s2048", "mb1 z1 s4096"]
    assert {samples.global_batch_of(p.values()) for p in points} == {16}
    tokens = _space({}, length=[1024, 2048, 4096], training={"keep_fixed": "tokens"})
    assert [tokens.global_batch_of(p.values()) for p in enumerate_points(tokens).valid] == [16, 8]
    # at 4096 tokens only 4 samples remain: micro-batch 1 on 8 ranks cannot make them
    assert enumerate_points(tokens).dropped_summary() == [
        ("micro_batch_size 1 x 8 ranks does not divide global_batch_size 4", 1)
    ]
    single = _space({}, length=[1024])
    assert single.data.sequence_length == 1024 and single.knob_values("sequence_length") == [None]
    assert [p.label() for p in enumerate_points(single).valid] == ["mb1 z1"]


@pytest.mark.parametrize(
    ("length", "key", "message"),
    [
        ([], "data.sequence_length", "must list at least one length"),
        ([1024, 1024], "data.sequence_length", "a length is listed twice"),
    ],
)
def test_a_bad_length_list_is_one_line_naming_the_key(length: list[int], key: str, message: str) -> None:
    with pytest.raises(SpaceError) as info:
        _space({}, length=length)
    text = str(info.value)
    assert text.startswith(key) and message in text and "\n" not in text
