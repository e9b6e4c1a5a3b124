"""build_ds_config: batch keys, ZeRO and offload, base-config merging, precision, optimizer, DeepSpeed's parser."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

from tuner.dsconfig import DEFAULT_OPTIMIZER, build_ds_config, retarget
from tuner.points import Point, enumerate_points
from tuner.space import load_space

QUICKSTART = Path(__file__).parents[2] / "search_spaces" / "quickstart-cpu.yaml"


def build(
    point: Point,
    base: dict[str, Any] | None = None,
    *,
    global_batch: int = 16,
    ranks: int = 2,
    precision: str = "bf16",
    accelerator: str = "cuda",
) -> dict[str, Any]:
    return build_ds_config(
        {} if base is None else base,
        point,
        global_batch=global_batch,
        ranks=ranks,
        precision=precision,
        accelerator=accelerator,  # type: ignore[arg-type]
    )


# --- batch keys ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("global_batch", "micro", "ranks", "accum"),
    [(16, 2, 2, 4), (16, 8, 2, 1), (16, 1, 1, 16), (24, 3, 4, 2), (64, 4, 8, 2)],
)
def test_batch_keys_are_consistent(global_batch: int, micro: int, ranks: int, accum: int) -> None:
    config = build(Point(micro, 0), global_batch=global_batch, ranks=ranks)
    assert config["train_batch_size"] == global_batch
    assert config["train_micro_batch_size_per_gpu"] == micro
    assert config["gradient_accumulation_steps"] == accum
    assert micro * accum * ranks == global_batch


def test_batch_keys_override_base() -> None:
    base = {"train_batch_size": 999, "train_micro_batch_size_per_gpu": 7, "gradient_accumulation_steps": 3}
    config = build(Point(2, 0), base, global_batch=16, ranks=2)
    assert (config["train_batch_size"], config["train_micro_batch_size_per_gpu"]) == (16, 2)
    assert config["gradient_accumulation_steps"] == 4


def test_point_that_cannot_divide_is_refused() -> None:
    with pytest.raises(ValueError, match="mb3 z0 cannot keep global batch 16 on 2 ranks"):
        build(Point(3, 0), global_batch=16, ranks=2)


# --- ZeRO and offload ----------------------------------------------------------------------------


@pytest.mark.parametrize("stage", [0, 1, 2, 3])
def test_zero_stage_without_offload(stage: int) -> None:
    assert build(Point(2, stage))["zero_optimization"] == {"stage": stage}


@pytest.mark.parametrize(("accelerator", "pin"), [("cuda", True), ("cpu", False)])
def test_offload_sections(accelerator: str, pin: bool) -> None:
    zero = build(Point(2, 3, "cpu", "cpu"), accelerator=accelerator)["zero_optimization"]
    assert zero == {
        "stage": 3,
        "offload_optimizer": {"device": "cpu", "pin_memory": pin},
        "offload_param": {"device": "cpu", "pin_memory": pin},
    }
    zero = build(Point(2, 1, offload_optimizer="cpu"), accelerator=accelerator)["zero_optimization"]
    assert zero == {"stage": 1, "offload_optimizer": {"device": "cpu", "pin_memory": pin}}


# --- the base config -----------------------------------------------------------------------------


def test_base_keys_kept_and_tuned_keys_override() -> None:
    base = {
        "optimizer": {"type": "Adam", "params": {"lr": 3e-4}},
        "scheduler": {"type": "WarmupLR", "params": {"warmup_num_steps": 10}},
        "gradient_clipping": 1.0,
        "steps_per_print": 10,
        "zero_optimization": {
            "stage": 1,
            "reduce_bucket_size": 5e8,
            "overlap_comm": True,
            "offload_optimizer": {"device": "cpu", "pin_memory": True},
            "offload_param": {"device": "cpu"},
        },
    }
    config = build(Point(2, 3), base)
    assert config["zero_optimization"] == {"stage": 3, "reduce_bucket_size": 5e8, "overlap_comm": True}
    assert config["scheduler"] == base["scheduler"]
    assert config["gradient_clipping"] == 1.0
    assert config["steps_per_print"] == 10
    assert config["optimizer"] == {"type": "Adam", "params": {"lr": 3e-4}}


def test_base_offload_replaced_by_the_points() -> None:
    base = {"zero_optimization": {"stage": 2, "offload_optimizer": {"device": "nvme", "nvme_path": "/x"}}}
    zero = build(Point(2, 2, offload_optimizer="cpu"), base)["zero_optimization"]
    assert zero == {"stage": 2, "offload_optimizer": {"device": "cpu", "pin_memory": True}}


def test_base_is_not_mutated() -> None:
    base = {
        "optimizer": {"type": "AdamW", "params": {"lr": 1e-3}},
        "zero_optimization": {"stage": 1, "offload_optimizer": {"device": "cpu"}, "reduce_bucket_size": 1},
        "activation_checkpointing": {"partition_activations": True},
        "bf16": {"enabled": True},
    }
    snapshot = copy.deepcopy(base)
    default_snapshot = copy.deepcopy(DEFAULT_OPTIMIZER)
    for point in (Point(2, 0), Point(2, 3, "cpu", "cpu", True)):
        for accelerator in ("cpu", "cuda"):
            build(point, base, precision="fp16", accelerator=accelerator)
            build(point, {}, precision="fp16", accelerator=accelerator)
    assert base == snapshot
    assert default_snapshot == DEFAULT_OPTIMIZER


def test_default_optimizer_when_base_has_none() -> None:
    config = build(Point(2, 0), {}, accelerator="cuda")
    assert config["optimizer"] == DEFAULT_OPTIMIZER
    assert config["steps_per_print"] == 1_000_000
    config["optimizer"]["params"]["lr"] = 1.0
    assert DEFAULT_OPTIMIZER["params"]["lr"] == 1e-4


# --- precision -----------------------------------------------------------------------------------


def test_precision_bf16() -> None:
    config = build(Point(2, 0), precision="bf16")
    assert config["bf16"] == {"enabled": True}
    assert config["fp16"] == {"enabled": False}


def test_precision_fp16() -> None:
    config = build(Point(2, 0), precision="fp16")
    assert config["fp16"]["enabled"] is True
    assert config["fp16"]["loss_scale"] == 0
    assert config["bf16"] == {"enabled": False}


def test_precision_fp32_overrides_base() -> None:
    config = build(Point(2, 0), {"bf16": {"enabled": True}, "fp16": {"enabled": True}}, precision="fp32")
    assert config["bf16"]["enabled"] is False
    assert config["fp16"]["enabled"] is False


# --- torch_adam ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("optimizer_type", "accelerator", "point", "torch_adam"),
    [
        ("AdamW", "cpu", Point(2, 0), True),
        ("Adam", "cpu", Point(2, 2), True),
        ("adamw", "cpu", Point(2, 3, offload_param="cpu"), True),
        ("AdamW", "cpu", Point(2, 2, offload_optimizer="cpu"), False),
        ("AdamW", "cuda", Point(2, 0), False),
        ("Adam", "cuda", Point(2, 2, offload_optimizer="cpu"), False),
        ("Lamb", "cpu", Point(2, 0), False),
        ("SGD", "cpu", Point(2, 0), False),
    ],
)
def test_torch_adam(optimizer_type: str, accelerator: str, point: Point, torch_adam: bool) -> None:
    base = {"optimizer": {"type": optimizer_type, "params": {"lr": 0.01}}}
    params = build(point, base, accelerator=accelerator)["optimizer"]["params"]
    assert params.get("torch_adam", False) is torch_adam
    assert params["lr"] == 0.01


def test_torch_adam_on_default_optimizer_and_without_params() -> None:
    assert build(Point(2, 0), {}, accelerator="cpu")["optimizer"]["params"]["torch_adam"] is True
    config = build(Point(2, 0), {"optimizer": {"type": "Adam"}}, accelerator="cpu")
    assert config["optimizer"]["params"] == {"torch_adam": True}


def test_a_config_measured_on_cpu_is_retargeted_for_gpus_and_says_what_changed() -> None:
    base = {"optimizer": {"type": "AdamW", "params": {"lr": 0.01}}}
    measured = build(Point(2, 0), base, accelerator="cpu")
    assert measured["optimizer"]["params"]["torch_adam"] is True
    for_gpu, notes = retarget(measured, "cuda", base)
    assert "torch_adam" not in for_gpu["optimizer"]["params"] and for_gpu["optimizer"]["params"]["lr"] == 0.01
    assert notes == ["optimizer.params.torch_adam removed: DeepSpeed's FusedAdam runs on the GPU"]
    assert for_gpu == build(Point(2, 0), base, accelerator="cuda")  # as if it had been measured on a GPU
    assert retarget(for_gpu, "cuda", base) == (for_gpu, [])  # nothing to change for the same device kind
    assert retarget(for_gpu, "cpu", base)[0] == measured  # and back


def test_retargeting_pins_offloaded_states_on_gpus_and_keeps_the_users_own_torch_adam() -> None:
    offload = Point(2, 3, offload_optimizer="cpu", offload_param="cpu")
    for_gpu, notes = retarget(build(offload, accelerator="cpu"), "cuda", {})
    zero = for_gpu["zero_optimization"]
    assert zero["offload_optimizer"]["pin_memory"] is True and zero["offload_param"]["pin_memory"] is True
    assert len(notes) == 2 and all("pin_memory set to true for cuda" in n for n in notes)
    theirs = {"optimizer": {"type": "AdamW", "params": {"torch_adam": True}}}
    kept, notes = retarget(build(Point(2, 0), theirs, accelerator="cpu"), "cuda", theirs)
    assert kept["optimizer"]["params"]["torch_adam"] is True and notes == []
    assert any("fp16" in n for n in retarget(build(Point(2, 0), precision="fp16"), "cpu", {})[1])


# --- activation checkpointing --------------------------------------------------------------------


def test_activation_checkpointing_only_when_the_point_checkpoints() -> None:
    base = {"activation_checkpointing": {"partition_activations": True, "number_checkpoints": 4}}
    assert "activation_checkpointing" not in build(Point(2, 0))
    assert "activation_checkpointing" not in build(Point(2, 0), base)
    on = build(Point(2, 0, activation_checkpointing=True), base)["activation_checkpointing"]
    assert on["partition_activations"] is False
    assert on["number_checkpoints"] == 4
    assert "activation_checkpointing" in build(Point(2, 0, activation_checkpointing=True))


# --- DeepSpeed's own parser ----------------------------------------------------------------------

QUICKSTART_SPACE = load_space(QUICKSTART)
QUICKSTART_POINTS = enumerate_points(QUICKSTART_SPACE).valid


@pytest.fixture(scope="module")
def check_with_deepspeed() -> Any:
    pytest.importorskip("deepspeed")
    from tuner.export import check_with_deepspeed

    return check_with_deepspeed


@pytest.mark.parametrize("accelerator", ["cpu", "cuda"])
@pytest.mark.parametrize("point", QUICKSTART_POINTS, ids=Point.label)
def test_quickstart_points_pass_deepspeed(check_with_deepspeed: Any, point: Point, accelerator: str) -> None:
    space = QUICKSTART_SPACE
    ranks = space.hardware.gpus_per_trial
    config = build_ds_config(
        space.base_config_dict,
        point,
        global_batch=space.training.global_batch_size,
        ranks=ranks,
        precision=space.training.precision,
        accelerator=accelerator,  # type: ignore[arg-type]
    )
    check_with_deepspeed(config, ranks)


@pytest.mark.parametrize("precision", ["bf16", "fp16", "fp32"])
def test_every_precision_passes_deepspeed(check_with_deepspeed: Any, precision: str) -> None:
    check_with_deepspeed(build(Point(2, 3, "cpu", "cpu", True), precision=precision), 2)


def test_wrong_train_batch_size_is_rejected(check_with_deepspeed: Any) -> None:
    config = build(Point(2, 2), global_batch=16, ranks=2)
    check_with_deepspeed(config, 2)
    with pytest.raises(ValueError, match="train_batch_size"):
        check_with_deepspeed(config, 4)  # right for 2 ranks, wrong for 4
    config["train_batch_size"] = 32
    with pytest.raises(ValueError, match=r"train_batch_size 32 != micro 2 x accumulation 4 x 2 ranks"):
        check_with_deepspeed(config, 2)


def test_deepspeed_rejects_a_bad_section(check_with_deepspeed: Any) -> None:
    config = build(Point(2, 2), precision="bf16")
    config["fp16"]["enabled"] = True  # DeepSpeed refuses bf16 and fp16 together
    with pytest.raises((AssertionError, ValueError), match="bfloat16 and fp16"):
        check_with_deepspeed(config, 2)
