"""The knob registry: every knob declared once, and everything else reading the declarations (pure)."""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import REPO
from tuner.dsconfig import build_ds_config
from tuner.estimate import GB, Setup, estimate
from tuner.knobs import BY_NAME, COMM, KNOBS, MAIN, family_label, invalid_reason, unsupported_on
from tuner.parallel import Context
from tuner.points import Point, enumerate_points
from tuner.space import SpaceSection, parse_space
from tuner.workload.hf_causal_lm import model_shape

ZERO_PLUS_PLUS = ("zero_quantized_weights", "zero_quantized_gradients", "zero_hpz_partition_size")


def test_every_knob_is_a_space_key_with_its_declared_default() -> None:
    section = SpaceSection.model_validate({"micro_batch_size": [1]})
    assert list(SpaceSection.model_fields) == [k.name for k in KNOBS if k.section == "space"]
    for k in (k for k in KNOBS if k.section == "space"):
        expected = list(k.default) if k.default is not None else ([1] if k.scale else None)
        assert getattr(section, k.name) == expected, k.name
        assert SpaceSection.model_fields[k.name].description == k.help


def test_a_point_reads_its_knobs_by_name_and_labels_itself_from_the_declarations() -> None:
    point = Point(8, 3, "cpu", "cpu", True)
    assert (point.micro_batch_size, point.zero_stage, point.offload_param) == (8, 3, "cpu")
    assert point.label() == "mb8 z3 opt=cpu param=cpu ckpt"
    assert Point(4, 0).label() == "mb4 z0"  # neutral values unlabelled, but the stage always shown
    tuned = Point(4, 3).with_knob("zero_hpz_partition_size", 8).with_knob("zero_quantized_weights", True)
    assert tuned.label() == "mb4 z3 zero_quantized_weights=true zero_hpz_partition_size=8"
    assert tuned.main() == Point(4, 3) and dict(tuned.comm) == {"zero_quantized_weights": True,
                                                               "zero_hpz_partition_size": 8}  # fmt: skip
    assert Point.from_params(tuned.params()) == tuned and "comm_zero_hpz_partition_size" in tuned.params()
    assert pickle.loads(pickle.dumps(tuned)) == tuned and hash(tuned) == hash(Point.from_params(tuned.params()))
    assert sorted([Point(8, 1), Point(2, 3), Point(2, 0)]) == [Point(2, 0), Point(2, 3), Point(8, 1)]
    with pytest.raises(AttributeError):
        point.zero_stage = 1  # type: ignore[misc]
    with pytest.raises(TypeError, match="not a knob"):
        Point(4, 0, pipeline_parallel=2)
    assert family_label(point.values()) == "z3 opt=cpu param=cpu ckpt"


@pytest.mark.parametrize(
    ("values", "ranks", "reason"),
    [
        ({"offload_param": "cpu", "zero_stage": 2}, 2, "offload_param needs zero_stage 3"),
        ({"offload_optimizer": "cpu", "zero_stage": 0}, 2, "offload_optimizer needs zero_stage 1 or higher"),
        ({"zero_quantized_weights": True, "zero_stage": 2}, 2, "zero_quantized_weights needs zero_stage 3"),
        ({"zero_hpz_partition_size": 3, "zero_stage": 3}, 4, "zero_hpz_partition_size 3 does not divide the 4 ranks"),
        ({"zero_hpz_partition_size": 2, "zero_stage": 3}, 4, None),
        ({"zero_quantized_weights": False, "zero_stage": 2}, 2, None),  # the neutral value is valid anywhere
        ({"allgather_bucket_size": 10, "zero_stage": 3}, 2, "allgather_bucket_size needs zero_stage 1 or 2"),
    ],
)
def test_validity_comes_from_each_knobs_stages_and_rank_rule(
    values: dict[str, Any], ranks: int, reason: str | None
) -> None:
    assert invalid_reason(values, Context(ranks)) == reason


def test_every_knob_writes_the_ds_config_key_deepspeed_reads() -> None:
    """Each communication knob lands in zero_optimization under its own name, which DeepSpeed's parser accepts."""
    values = {"zero_quantized_weights": True, "zero_quantized_gradients": True, "zero_hpz_partition_size": 2,
              "overlap_comm": False, "stage3_prefetch_bucket_size": 1000}  # fmt: skip
    point = Point(2, 3, comm=list(values.items()))
    config = build_ds_config({}, point, global_batch=8, ranks=2, precision="bf16", accelerator="cuda")
    assert config["zero_optimization"].items() >= {"stage": 3, **values}.items()
    from tuner.export import check_with_deepspeed

    check_with_deepspeed(config, 2)  # DeepSpeed's ZeRO section forbids unknown keys: it read these names


def test_the_cpu_accelerator_lacks_the_quantizer_and_says_which_knob_needs_it() -> None:
    values = Point(2, 3, comm=[("zero_quantized_weights", True), ("zero_hpz_partition_size", 2)]).values()
    assert unsupported_on(values, "cpu") == ["zero_quantized_weights=true"]
    assert unsupported_on(values, "cuda") == []
    assert unsupported_on(Point(2, 3, comm=[("zero_quantized_weights", False)]).values(), "cpu") == []


def test_the_zero_plus_plus_knobs_are_zero3_communication_knobs_of_the_space(tmp_path: Path) -> None:
    for name in ZERO_PLUS_PLUS:
        assert BY_NAME[name].phase == "comm" and BY_NAME[name].stages == (3,)
    raw = {
        "model": {"config": {"model_type": "gpt2", "n_layer": 1, "n_embd": 32, "n_head": 2}},
        "data": {"sequence_length": 16},
        "training": {"global_batch_size": 8},
        "hardware": {"gpus_per_trial": 2},
        "space": {"micro_batch_size": [1], "zero_stage": [3], "zero_hpz_partition_size": [1, 2],
                  "zero_quantized_weights": [False, True]},
    }  # fmt: skip
    space = parse_space(raw, "unit")
    assert space.space.comm_lists() == {"zero_quantized_weights": [False, True], "zero_hpz_partition_size": [1, 2]}
    assert enumerate_points(space).valid == (Point(1, 3),)  # communication knobs are not main points
    raw["space"]["zero_hpz_partition_size"] = [0]
    with pytest.raises(Exception, match="zero_hpz_partition_size"):
        parse_space(raw, "unit")


def test_hpz_keeps_a_secondary_parameter_partition_per_group_on_the_device() -> None:
    """ZeRO++ hpZ: each rank also holds the 16-bit parameters partitioned over its group (p x N / hpz)."""
    shape = model_shape({"model_type": "llama", "hidden_size": 512, "intermediate_size": 1376,
                         "num_hidden_layers": 4, "num_attention_heads": 8, "vocab_size": 1000})  # fmt: skip
    setup = Setup(ranks=32, sequence_length=128, precision="bf16", accelerator="cuda")
    plain = estimate(shape, Point(1, 3), setup)
    hpz = estimate(shape, Point(1, 3).with_knob("zero_hpz_partition_size", 8), setup)
    extra = hpz.parts["parameters"] - plain.parts["parameters"]
    assert extra == pytest.approx(2 * shape.num_parameters / 8)
    assert estimate(shape, Point(1, 3).with_knob("zero_hpz_partition_size", 1), setup).parts == plain.parts
    qwz = estimate(shape, Point(1, 3).with_knob("zero_quantized_weights", True), setup)
    assert qwz.parts["parameters"] - plain.parts["parameters"] == shape.largest_layer_parameters  # int8 layer
    assert hpz.device_gb > plain.device_gb > 0 and GB > 0


def test_no_module_but_the_registry_and_the_memory_model_names_a_knob_like_offload_param() -> None:
    """Issue 15's measure of 'one knob, one place': the other modules read the declarations."""
    users = sorted(p.name for p in (REPO / "tuner").rglob("*.py") if "offload_param" in p.read_text())
    assert users == ["estimate.py", "knobs.py"]
    assert len(MAIN) + len(COMM) == len(KNOBS)
