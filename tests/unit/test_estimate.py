"""The memory model against DeepSpeed's own estimators and against activation sizes worked out by hand."""

from __future__ import annotations

import dataclasses
import resource

import pytest

from tuner.calibration import Calibration, Measured, Sample, calibrate, family, fit_calibration
from tuner.estimate import (
    GB,
    Buckets,
    MemoryKnobs,
    ModelShape,
    Setup,
    activation_bytes,
    estimate,
    layer_activation_bytes,
    model_states,
)
from tuner.evidence import Evidence
from tuner.plan import Budget, decide
from tuner.points import Point

GPT2_SMALL = ModelShape(
    model_type="gpt2",
    num_parameters=124_439_808,
    embedding_parameters=39_383_808,
    largest_layer_parameters=38_597_376,
    block_parameters=7_087_872,
    matmul_parameters=123_653_376,
    num_layers=12,
    hidden_size=768,
    intermediate_size=3072,
    num_heads=12,
    num_kv_heads=12,
    vocab_size=50257,
    gated_mlp=False,
    mlp_saved=2,  # a fused GeLU: its input and the down projection's input
    norm_fp32=False,
    attention="eager",
    attention_dropout=True,
    hidden_dropout=True,
)


def gpu(ranks: int, precision: str = "bf16", zero_init: bool = True) -> Setup:
    return Setup(ranks=ranks, sequence_length=1024, precision=precision, accelerator="cuda", zero_init=zero_init)


CASES = [(124_439_808, 38_597_376), (6_738_415_616, 131_072_000), (70_553_706_496, 1_050_673_152)]


@pytest.mark.parametrize(("n", "largest"), CASES)
@pytest.mark.parametrize("ranks", [1, 2, 8])
@pytest.mark.parametrize("offload", [False, True])
def test_zero2_model_states_equal_deepspeeds_estimator(n: int, largest: int, ranks: int, offload: bool) -> None:
    from deepspeed.runtime.zero.stage_1_and_2 import estimate_zero2_model_states_mem_needs

    ds_host, ds_device = estimate_zero2_model_states_mem_needs(n, num_gpus_per_node=ranks, cpu_offload=offload)
    shape = dataclasses.replace(GPT2_SMALL, num_parameters=n, largest_layer_parameters=largest)
    point = Point(1, 2, "cpu" if offload else "none")
    est = estimate(shape, point, gpu(ranks))
    assert est.model_state_bytes == pytest.approx(ds_device, abs=1)
    assert est.host_bytes == pytest.approx(ds_host, abs=1)


@pytest.mark.parametrize(("n", "largest"), CASES)
@pytest.mark.parametrize("ranks", [1, 2, 8])
@pytest.mark.parametrize(("opt", "param"), [("none", "none"), ("cpu", "none"), ("cpu", "cpu")])
@pytest.mark.parametrize("zero_init", [True, False])
def test_zero3_model_states_equal_deepspeeds_estimator(
    n: int, largest: int, ranks: int, opt: str, param: str, zero_init: bool
) -> None:
    from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs

    ds_host, ds_device, _ = estimate_zero3_model_states_mem_needs(
        n, largest, num_gpus_per_node=ranks, cpu_offload=opt == "cpu", cpu_offload_params=param == "cpu",
        zero_init=zero_init,
    )  # fmt: skip
    shape = dataclasses.replace(GPT2_SMALL, num_parameters=n, largest_layer_parameters=largest)
    est = estimate(shape, Point(1, 3, opt, param), gpu(ranks, zero_init=zero_init))
    assert est.model_state_bytes == pytest.approx(ds_device, abs=1)
    assert est.host_bytes == pytest.approx(ds_host, abs=1)


def test_model_states_per_parameter_follow_the_zero_paper() -> None:
    n, ranks = 1_000_000, 4
    fp32 = model_states(n, 0, MemoryKnobs.of(Point(1, 0)), gpu(ranks, "fp32"))
    assert sum(fp32.device.values()) == 16 * n  # 4 parameters + 4 gradients + 8 moments
    mixed = model_states(n, 0, MemoryKnobs.of(Point(1, 0)), gpu(ranks))
    assert sum(mixed.device.values()) == 20 * n  # 2 + 2 + 12, plus the fp32 gradient copy the wrapper steps on
    stage1 = model_states(n, 0, MemoryKnobs.of(Point(1, 1)), gpu(ranks))
    assert sum(stage1.device.values()) == 4 * n + 16 * n / ranks
    totals = [sum(model_states(n, 10, MemoryKnobs.of(Point(1, s)), gpu(ranks)).device.values()) for s in (0, 1, 2, 3)]
    assert totals == sorted(totals, reverse=True)  # each stage partitions more


def test_activations_of_a_gpt_layer_are_korthikantis_formula() -> None:
    """Eager attention, a fused GeLU, dropout with 1-byte masks (GPU): exactly s*b*h*(34 + 5*a*s/h)."""
    s, b, h, a = 1024, 4, 768, 12
    per_layer = layer_activation_bytes(GPT2_SMALL, s, b, 2, "cuda")
    assert per_layer == pytest.approx(s * b * h * (34 + 5 * a * s / h))
    flash = dataclasses.replace(GPT2_SMALL, attention="sdpa")  # no s x s scores; its output and log-sum-exp
    assert layer_activation_bytes(flash, s, b, 2, "cuda") == pytest.approx(s * b * h * (34 + 2) + a * s * b * 4)
    checkpointed = activation_bytes(GPT2_SMALL, s, b, 2, checkpointing=True)
    outside = 2 * s * b * h + s * b * h  # final layer norm input, embedding dropout mask
    assert checkpointed == pytest.approx(12 * 2 * s * b * h + per_layer + outside)


def test_activations_of_a_llama_layer_worked_by_hand() -> None:
    """Llama-3.2-1B shapes: SwiGLU MLP, 8 KV heads of 64, fp32 RMSNorm copies, no dropout, SDPA, bf16."""
    llama = dataclasses.replace(
        GPT2_SMALL, hidden_size=2048, intermediate_size=8192, num_heads=32, num_kv_heads=8, gated_mlp=True,
        mlp_saved=4, norm_fp32=True, attention="sdpa", attention_dropout=False, hidden_dropout=False,
    )  # fmt: skip
    s, b = 2048, 1
    norms = 2 * (s * 2048 * 2 + s * 2048 * 4)  # two RMSNorms: bf16 output and fp32 input each
    inputs = 3 * s * 2048 * 2  # QKV, output and gate/up projections' inputs
    q, k, v, out, lse = s * 2048 * 2, s * 512 * 2, s * 512 * 2, s * 2048 * 2, 32 * s * 4
    mlp = 4 * (s * 8192 * 2)  # gate, up, SiLU(gate), product
    expected = norms + inputs + q + k + v + out + lse + mlp
    assert layer_activation_bytes(llama, s, b, 2, "cuda") == expected


def test_cpu_keeps_offloaded_states_in_the_rank_and_counts_the_runtime() -> None:
    cpu = Setup(ranks=2, sequence_length=128, precision="bf16", accelerator="cpu", runtime_gb=0.4)
    off = estimate(GPT2_SMALL, Point(2, 2, "cpu"), cpu)
    on_gpu = estimate(GPT2_SMALL, Point(2, 2, "cpu"), dataclasses.replace(cpu, accelerator="cuda", runtime_gb=None))
    assert off.parts["runtime"] == 0.4 * GB and on_gpu.parts["runtime"] == 0
    assert off.parts["optimizer_states"] > 0 and on_gpu.parts["optimizer_states"] == 0
    # on a GPU the 500M-element bucket is allocated whole; on CPU only the pages the model fills count
    assert on_gpu.parts["buffers"] > off.parts["buffers"]


def test_buckets_come_from_the_base_config() -> None:
    buckets = Buckets.from_config({"zero_optimization": {"reduce_bucket_size": 1000, "overlap_comm": True}})
    assert buckets.reduce_bucket_size == 1000 and buckets.overlap_comm is True
    small = estimate(GPT2_SMALL, Point(2, 2), dataclasses.replace(gpu(8), buckets=buckets))
    assert small.parts["buffers"] < estimate(GPT2_SMALL, Point(2, 2), gpu(8)).parts["buffers"]


def test_calibration_recovers_a_scale_and_offset() -> None:
    samples = [Sample(0.5, 0.5 + x, 0.5 + 1.2 * x + 0.1) for x in (1.0, 2.0, 4.0)]
    cal = fit_calibration(samples)
    assert cal.scale == pytest.approx(1.2) and cal.offset_gb == pytest.approx(0.1)
    assert cal.apply(0.5, 3.5) == pytest.approx(0.5 + 1.2 * 3 + 0.1)
    one = fit_calibration(samples[:1])
    assert one.scale == 1.0 and one.offset_gb == pytest.approx(0.3)  # an offset alone from one trial
    wild = fit_calibration([Sample(0, x, 10 * x) for x in (1.0, 2.0, 3.0)])
    assert wild.scale == 2.0  # clamped: one odd study must not turn the model upside down
    assert fit_calibration([]) == Calibration()


def test_calibration_from_measured_trials_moves_the_prediction_toward_them() -> None:
    setup = Setup(ranks=2, sequence_length=128, precision="bf16", accelerator="cpu")
    points = [Point(2, 0), Point(8, 0), Point(2, 3)]
    measured = [Measured(p, estimate(GPT2_SMALL, p, setup).device_gb * 1.3) for p in points]
    cals = calibrate(GPT2_SMALL, setup, measured)
    assert cals.families == ((family(Point(2, 0)), cals.for_point(Point(4, 0))),)  # two trials make a family
    target = Point(8, 3, activation_checkpointing=True)  # ZeRO-3 has one trial: the overall fit serves it
    assert cals.for_point(target) is cals.overall
    raw = estimate(GPT2_SMALL, target, setup)
    calibrated = cals.for_point(target).apply(raw.parts["runtime"] / GB, raw.device_gb)
    assert calibrated > raw.device_gb * 1.15
    planned = decide(GPT2_SMALL, setup, target, Budget(None), cals)
    assert planned.predicted_gb == pytest.approx(calibrated) and "3 trial(s)" in planned.attrs()["memory_calibration"]


def test_decide_prunes_over_the_budget_with_a_reason_and_keeps_what_measured_inside() -> None:
    setup = gpu(8)
    big, small = Point(32, 0), Point(1, 3)
    need = estimate(GPT2_SMALL, big, setup).device_gb
    budget = Budget(device_gb=need / 2, margin=0.1)
    over = decide(GPT2_SMALL, setup, big, budget)
    assert over.fits is False and over.reason is not None and "over the budget" in over.reason
    assert decide(GPT2_SMALL, setup, small, budget).fits is True
    kept = decide(GPT2_SMALL, setup, Point(28, 0), budget, evidence=Evidence(fitted=((big, need),)))
    assert kept.fits is True and kept.reason is not None and "measured inside the budget" in kept.reason
    assert decide(GPT2_SMALL, setup, big, Budget(None)).fits is None
    margin = Budget(device_gb=need / 1.05, margin=0.1)  # 5% over the budget, inside the margin
    assert decide(GPT2_SMALL, setup, big, margin).fits is True


def test_host_budget_prunes_offload() -> None:
    setup = gpu(8)
    point = Point(1, 3, "cpu", "cpu")
    host = estimate(GPT2_SMALL, point, setup).host_gb
    planned = decide(GPT2_SMALL, setup, point, Budget(device_gb=1000, host_gb=host / 2))
    assert planned.fits is False and planned.reason is not None and "host_memory_gb" in planned.reason


def test_meta_build_of_a_7b_model_allocates_no_memory() -> None:
    from tuner.workload.hf_causal_lm import model_shape

    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    shape = model_shape(
        {"model_type": "llama", "hidden_size": 4096, "intermediate_size": 11008, "num_hidden_layers": 32,
         "num_attention_heads": 32, "vocab_size": 32000}
    )  # fmt: skip
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert shape.num_parameters == 6_738_415_616  # Llama-2-7B
    assert shape.largest_layer_parameters == 32000 * 4096  # the embedding (and the untied output layer)
    assert shape.gated_mlp and not shape.hidden_dropout and shape.norm_fp32 and shape.num_kv_heads == 32
    assert grown_mb < 200, f"the meta build grew the process by {grown_mb:.0f} MB (the weights are 27 GB in fp32)"
