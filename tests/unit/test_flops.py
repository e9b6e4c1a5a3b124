"""FLOPs and MFU arithmetic against values computed by hand for GPT-2 small (124M)."""

from __future__ import annotations

import re

import pytest
import torch
from transformers import AutoModelForCausalLM

from tuner.flops import PEAK_TFLOPS, flops_per_token, peak_tflops, work_figures
from tuner.result import GB, figures_from_worker
from tuner.trial.spec import TrialSpec
from tuner.workload.hf_causal_lm import build_config, model_facts

GPT2_SMALL = {
    "model_type": "gpt2",
    "n_layer": 12,
    "n_embd": 768,
    "n_head": 12,
    "n_positions": 1024,
    "vocab_size": 50257,
}


def test_gpt2_small_parameters_are_counted_from_the_model() -> None:
    with torch.device("meta"):  # shapes only: no memory, no time
        model = AutoModelForCausalLM.from_config(build_config(GPT2_SMALL))
    facts = model_facts(model)
    assert facts["num_parameters"] == 124_439_808  # GPT-2 small's published count
    # wte 50257 x 768 + wpe 1024 x 768
    assert facts["embedding_parameters"] == 38_597_376 + 786_432
    # 12 layers x (12 h^2 + 13 h) + final layer norm 2h = 85,056,000; the tied output projection adds wte.
    assert facts["matmul_parameters"] == 85_056_000 + 38_597_376
    assert (facts["num_layers"], facts["hidden_size"]) == (12, 768)


def test_palm_flops_per_token_by_hand() -> None:
    per_token = flops_per_token(123_653_376, layers=12, hidden=768, sequence_length=1024, recompute=False)
    # 6 x 123,653,376 + 12 x 12 x 768 x 1024 = 741,920,256 + 113,246,208
    assert per_token.model == 855_166_464
    assert per_token.hardware == per_token.model
    recomputed = flops_per_token(123_653_376, layers=12, hidden=768, sequence_length=1024, recompute=True)
    # one more forward: 2 x 123,653,376 + 4 x 12 x 768 x 1024 = 247,306,752 + 37,748,736
    assert recomputed.model == 855_166_464
    assert recomputed.hardware == 855_166_464 + 285_055_488


def test_mfu_against_the_h100_peak_by_hand() -> None:
    per_token = flops_per_token(123_653_376, 12, 768, 1024, recompute=True)
    figures = work_figures(1_000_000.0, 8, per_token, peak_tflops("NVIDIA H100 80GB HBM3", "bf16"))
    assert figures["tokens_per_s_per_device"] == 125_000
    assert figures["tflops_per_device"] == pytest.approx(106.895808)  # 125,000 x 855,166,464 / 1e12
    assert figures["hardware_tflops_per_device"] == pytest.approx(142.527744)
    assert figures["mfu"] == pytest.approx(106.895808 / 989)  # model FLOPs only, as PaLM defines MFU
    assert "mfu" not in work_figures(1.0, 1, per_token, None)


# Real torch.cuda.get_device_name strings, one case per (row, precision) of the table, figures typed from
# the data sheets rather than read from the table.
PEAK_CASES: list[tuple[str, str, float | None]] = [
    ("NVIDIA H100 PCIe", "bf16", 756.0),
    ("NVIDIA H100 PCIe", "fp16", 756.0),
    ("NVIDIA H100 PCIe", "fp32", 51.0),
    ("NVIDIA H100 NVL", "bf16", 835.0),
    ("NVIDIA H100 NVL", "fp16", 835.0),
    ("NVIDIA H100 NVL", "fp32", 60.0),
    ("NVIDIA GH200 480GB", "bf16", 989.0),
    ("NVIDIA GH200 480GB", "fp16", 989.0),
    ("NVIDIA GH200 480GB", "fp32", 67.0),
    ("NVIDIA H200 NVL", "bf16", 835.0),
    ("NVIDIA H200 NVL", "fp16", 835.0),
    ("NVIDIA H200 NVL", "fp32", 60.0),
    ("NVIDIA H200", "bf16", 989.0),
    ("NVIDIA H200", "fp16", 989.0),
    ("NVIDIA H200", "fp32", 67.0),
    ("NVIDIA H100 80GB HBM3", "bf16", 989.0),
    ("NVIDIA H100 80GB HBM3", "fp16", 989.0),
    ("NVIDIA H100 80GB HBM3", "fp32", 67.0),
    ("NVIDIA A100-SXM4-80GB", "bf16", 312.0),
    ("NVIDIA A100-PCIE-40GB", "fp16", 312.0),
    ("NVIDIA A100 80GB PCIe", "fp32", 19.5),
    ("NVIDIA L40S", "bf16", 362.0),
    ("NVIDIA L40S", "fp16", 362.0),
    ("NVIDIA L40S", "fp32", 91.6),
    ("NVIDIA L40", "bf16", 181.0),  # not the L4's 121
    ("NVIDIA L40", "fp16", 181.0),
    ("NVIDIA L40", "fp32", 90.5),
    ("NVIDIA L4", "bf16", 121.0),
    ("NVIDIA L4", "fp16", 121.0),
    ("NVIDIA L4", "fp32", 30.3),
    ("NVIDIA A10G", "bf16", 125.0),
    ("NVIDIA A10G", "fp16", 125.0),
    ("NVIDIA A10G", "fp32", 31.2),
    ("NVIDIA A10", "bf16", 125.0),
    ("NVIDIA A10", "fp16", 125.0),
    ("NVIDIA A10", "fp32", 31.2),
    ("Tesla V100-PCIE-16GB", "fp16", 112.0),
    ("Tesla V100-PCIE-16GB", "fp32", 14.0),
    ("Tesla V100-SXM2-32GB", "fp16", 125.0),
    ("Tesla V100-SXM2-32GB", "fp32", 15.7),
    ("Tesla V100-SXM2-32GB", "bf16", None),  # no bf16 on V100
    ("Tesla V100-PCIE-16GB", "bf16", None),
    ("cpu", "bf16", None),
    ("NVIDIA B200", "bf16", None),  # not in the table
]


@pytest.mark.parametrize(("name", "precision", "peak"), PEAK_CASES)
def test_peak_table(name: str, precision: str, peak: float | None) -> None:
    assert peak_tflops(name, precision) == peak


def test_every_row_and_precision_of_the_peak_table_is_tested() -> None:
    """A new row (or precision) must come with a device name in PEAK_CASES that reaches it."""

    def first_row(name: str) -> int | None:
        return next((i for i, (pattern, _) in enumerate(PEAK_TFLOPS) if re.search(pattern, name.upper())), None)

    tested = {(first_row(name), precision) for name, precision, peak in PEAK_CASES if peak is not None}
    listed = {(i, precision) for i, (_, peaks) in enumerate(PEAK_TFLOPS) for precision in peaks}
    assert listed - tested == set()


def test_figures_from_a_worker_result_agree_with_each_other() -> None:
    raw = {
        "world_size": 2,
        "device": "cuda",
        "device_name": "NVIDIA A100-SXM4-80GB",
        "step_times_s": [1.0, 1.2, 0.8, 1.1],
        "peak_mem_bytes": 3 * GB,
        "peak_reserved_bytes": 4 * GB,
        "host_mem_bytes": 5 * GB,
        "final_loss": 6.5,
        "num_parameters": 1000,
        "matmul_parameters": 900,
        "num_layers": 2,
        "hidden_size": 16,
        "clock": {
            "launched": 100.0,
            "imported": 104.0,
            "distributed": 105.0,
            "built": 106.0,
            "initialized": 108.0,
            "warmed_up": 110.0,
            "measured": 114.4,
        },
    }
    spec = TrialSpec(
        model_config={}, sequence_length=128, micro_batch_size=4, grad_accum=8, activation_checkpointing=False,
        global_batch_size=32, precision="bf16", ds_config={},
    )  # fmt: skip
    f = figures_from_worker(raw, spec, duration_s=20.0)
    assert f["step_time_s"] == pytest.approx(1.05)  # median of four
    assert f["tokens_per_s"] == pytest.approx(32 * 128 / 1.05)
    assert f["measured_steps"] == 4 and f["noisy"] == 0.0
    assert f["step_time_cv"] == pytest.approx(0.1443, abs=1e-4)  # pstdev sqrt(0.0875 / 4) / mean 1.025
    assert (f["peak_mem_gb"], f["peak_reserved_gb"], f["host_mem_gb"]) == (3.0, 4.0, 5.0)
    assert f["model_flops_per_token"] == 6 * 900 + 12 * 2 * 16 * 128
    assert f["mfu"] == pytest.approx(f["tflops_per_device"] / 312.0)
    assert (f["startup_s"], f["build_s"], f["initialize_s"], f["warmup_s"]) == (4.0, 1.0, 2.0, 2.0)
    assert f["measure_s"] == pytest.approx(4.4)
    assert f["fixed_overhead_s"] == pytest.approx(15.6) and f["overhead_share"] == pytest.approx(0.78)
    noisy = figures_from_worker(raw, spec.replace(max_cv=0.1, peak_tflops=100.0), duration_s=20.0)
    assert noisy["noisy"] == 1.0 and noisy["mfu"] == pytest.approx(noisy["tflops_per_device"] / 100.0)
