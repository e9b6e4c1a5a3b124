"""LoRA on a frozen base (model.peft) and the attention implementation (model.attn_implementation): the schema,
the trainable count against peft's own, the memory model's states and FLOPs worked out by hand for a tiny model,
and DeepSpeed's estimator for the trainable part."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from tuner.estimate import GB, Adapters, Setup, activation_bytes, estimate
from tuner.flops import flops_per_token
from tuner.points import Point
from tuner.result import figures_from_worker
from tuner.space import parse_space
from tuner.trial.spec import TrialSpec
from tuner.workload.hf_causal_lm import build_model, model_facts, model_shape

# q_proj 64 -> 64, v_proj 64 -> 32 (2 key/value heads of 16): r x (in + out) = 8 x 128 + 8 x 96 per layer
TINY_LLAMA: dict[str, Any] = {
    "model_type": "llama", "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
    "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 256,
}  # fmt: skip
LORA: dict[str, Any] = {"method": "lora", "r": 8, "alpha": 16, "dropout": 0.0, "target_modules": ["q_proj", "v_proj"]}
BY_HAND_TRAINABLE = 2 * (8 * (64 + 64) + 8 * (64 + 32))  # 3584


def space_with(model: dict[str, Any]) -> Any:
    return parse_space(
        {
            "model": {"config": TINY_LLAMA, **model},
            "data": {"sequence_length": 32},
            "training": {"global_batch_size": 4},
            "space": {"micro_batch_size": [1]},
        },
        default_study="lora",
    )


def test_schema_fills_peft_defaults_and_passes_the_options_to_the_trials() -> None:
    space = space_with(
        {"peft": {"r": 16, "alpha": 32, "target_modules": ["q_proj", "v_proj"]}, "attn_implementation": "eager"}
    )
    assert space.model.options() == {
        "attn_implementation": "eager",
        "peft": {"method": "lora", "r": 16, "alpha": 32, "dropout": 0.0, "target_modules": ["q_proj", "v_proj"]},
    }
    default = space_with({"peft": {}}).model.options()["peft"]
    assert default == {"method": "lora", "r": 8, "alpha": 8, "dropout": 0.0, "target_modules": None}  # peft's defaults
    assert space_with({}).model.options() == {}
    point = Point(1, 0)
    spec = TrialSpec.build(space, point, {})
    assert TrialSpec.from_json(spec.to_json()).model_options == space.model.options()


def test_trainable_parameters_on_the_meta_device_equal_peft_on_the_built_model() -> None:
    shape = model_shape(TINY_LLAMA, {"peft": LORA})
    model = build_model(TINY_LLAMA, seed=0, options={"peft": LORA})
    trainable, total = model.get_nb_trainable_parameters()
    assert shape.adapters is not None
    assert shape.adapters.trainable_parameters == shape.trainable_parameters == trainable == BY_HAND_TRAINABLE
    assert shape.num_parameters == total == model_shape(TINY_LLAMA).num_parameters + BY_HAND_TRAINABLE
    facts = model_facts(model)  # what a trial records
    assert facts["trainable_parameters"] == facts["trainable_matmul_parameters"] == BY_HAND_TRAINABLE
    assert shape.adapters.inputs == ("attention_input",) and shape.adapters.rank_outputs == 16
    assert shape.adapters.target_modules == ("q_proj", "v_proj") and shape.adapters.largest_trainable_layer == 8 * 64
    full = model_facts(build_model(TINY_LLAMA, seed=0))
    assert full["trainable_parameters"] == full["num_parameters"]
    assert full["trainable_matmul_parameters"] == full["matmul_parameters"]


def gpu(ranks: int, precision: str = "bf16") -> Setup:
    return Setup(ranks=ranks, sequence_length=32, precision=precision, accelerator="cuda")


@pytest.mark.parametrize("precision", ["bf16", "fp32"])
def test_model_states_of_a_frozen_base_by_hand(precision: str) -> None:
    """The frozen base keeps its weights in the training precision; gradients and Adam only for the adapters."""
    shape = model_shape(TINY_LLAMA, {"peft": LORA})
    n, t, g = shape.num_parameters, BY_HAND_TRAINABLE, 2
    p = 2 if precision == "bf16" else 4
    mixed = 4 if precision == "bf16" else 0  # DeepSpeed's fp32 gradient copy / master weights in mixed precision
    big, big_t = shape.largest_layer_parameters, shape.adapters.largest_trainable_layer  # type: ignore[union-attr]
    expected = {
        0: (p * n, p * t + mixed * t, 8 * t + mixed * t),
        1: (p * n, p * t + 4 * t / g, 12 * t / g),
        2: (p * n, p * t / g + 4 * t / g, 12 * t / g),
        3: (p * n / g + p * big, 4 * t / g + p * big_t, 12 * t / g),
    }
    for stage, (params, grads, optim) in expected.items():
        parts = estimate(shape, Point(1, stage), gpu(g, precision)).parts
        got = (parts["parameters"], parts["gradients"], parts["optimizer_states"])
        assert got == pytest.approx((params, grads, optim)), stage


@pytest.mark.parametrize("n", [124_439_808, 6_738_415_616])
@pytest.mark.parametrize("ranks", [1, 2, 8])
@pytest.mark.parametrize("offload", [False, True])
def test_zero2_states_are_deepspeeds_estimate_for_the_adapters_plus_the_frozen_weights(
    n: int, ranks: int, offload: bool
) -> None:
    """DeepSpeed's estimator assumes every parameter trains: run it on the trainable count, then add the frozen
    weights' 16-bit copy (2 bytes each), which is all a frozen parameter costs at ZeRO-2."""
    from deepspeed.runtime.zero.stage_1_and_2 import estimate_zero2_model_states_mem_needs

    t = n // 250
    _, ds_device = estimate_zero2_model_states_mem_needs(t, num_gpus_per_node=ranks, cpu_offload=offload)
    lora = Adapters("lora", 16, t, 4096, ("attention_input",), 32, 0)
    shape = dataclasses.replace(model_shape(TINY_LLAMA), num_parameters=n, adapters=lora)
    est = estimate(shape, Point(1, 2, "cpu" if offload else "none"), gpu(ranks))
    assert est.model_state_bytes == pytest.approx(ds_device + 2 * (n - t), abs=1)


def test_lora_needs_less_than_full_fine_tuning_on_every_part_that_trains() -> None:
    config = {**TINY_LLAMA, "num_hidden_layers": 4, "hidden_size": 256, "intermediate_size": 688, "vocab_size": 4096}
    full, lora = model_shape(config), model_shape(config, {"peft": LORA})
    setup = Setup(ranks=2, sequence_length=256, precision="bf16", accelerator="cuda")
    for stage in (0, 1, 2, 3):
        a, b = estimate(full, Point(4, stage), setup).parts, estimate(lora, Point(4, stage), setup).parts
        assert b["gradients"] < a["gradients"] / 10 and b["optimizer_states"] < a["optimizer_states"] / 10
        assert b["activations"] < a["activations"] and b["logits"] == a["logits"]
        assert b["parameters"] == pytest.approx(a["parameters"], rel=0.02)  # the base, plus the small adapters


def test_flops_of_a_frozen_base_by_hand() -> None:
    """Forward 2N, input gradients 2N, weight gradients only for the adapters 2T, attention 12·L·h·s."""
    shape = model_shape(TINY_LLAMA, {"peft": LORA})
    n, t, layers, h, s = shape.matmul_parameters, BY_HAND_TRAINABLE, 2, 64, 32
    expected = 2 * n + 2 * n + 2 * t + 12 * layers * h * s
    assert estimate(shape, Point(1, 0), gpu(2)).flops_per_token == expected
    per_token = flops_per_token(n, layers, h, s, recompute=True, trainable_matmul_params=t)
    assert per_token.model == expected and per_token.hardware == expected + 2 * n + 4 * layers * h * s
    assert flops_per_token(n, layers, h, s, recompute=False).model == 6 * n + 12 * layers * h * s  # full: PaLM's

    raw = {  # a trial's result.json: MFU follows the frozen-base figure
        "step_times_s": [1.0, 1.0], "peak_mem_bytes": GB, "peak_reserved_bytes": GB, "host_mem_bytes": GB,
        "final_loss": 5.0, "num_parameters": shape.num_parameters, "trainable_parameters": t,
        "matmul_parameters": n, "trainable_matmul_parameters": t, "num_layers": layers, "hidden_size": h,
        "device": "cpu", "device_name": "cpu", "world_size": 2,
        "clock": dict.fromkeys(("launched", "imported", "distributed", "built", "initialized", "warmed_up"), 0.0)
        | {"measured": 1.0},
    }  # fmt: skip
    spec = TrialSpec({}, s, 1, 1, False, 4, "bf16", {}, peak_tflops=1.0)
    figures = figures_from_worker(raw, spec, duration_s=2.0)
    assert figures["model_flops_per_token"] == expected and figures["trainable_parameters"] == t
    assert figures["mfu"] == pytest.approx(4 * s / 2 * expected / 1e12)


def test_eager_and_sdpa_build_and_plan_differently() -> None:
    """transformers' eager attention keeps the s x s scores for backward; SDPA (the default) does not."""
    eager = model_shape(TINY_LLAMA, {"attn_implementation": "eager"})
    sdpa = model_shape(TINY_LLAMA, {"attn_implementation": "sdpa"})
    assert eager.attention == "eager" and sdpa.attention == model_shape(TINY_LLAMA).attention == "sdpa"
    built = build_model(TINY_LLAMA, seed=0, options={"attn_implementation": "eager"})
    assert built.config._attn_implementation == "eager"
    seq, micro = 512, 2
    extra = activation_bytes(eager, seq, micro, 2, False) - activation_bytes(sdpa, seq, micro, 2, False)
    assert extra >= 2 * 4 * seq * seq * micro * 2 * 0.9  # each layer's a x s x s scores in 16 bits, roughly
    setup = Setup(ranks=2, sequence_length=seq, precision="bf16", accelerator="cuda")
    assert estimate(eager, Point(micro, 0), setup).device_bytes > estimate(sdpa, Point(micro, 0), setup).device_bytes
