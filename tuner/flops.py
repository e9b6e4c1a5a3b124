"""Work figures (pure): FLOPs per token from the architecture, achieved TFLOPs, MFU against a peak table.

Model FLOPs per token follow PaLM (Chowdhery et al. 2022, appendix B): 6·N + 12·L·h·s for a forward and
backward pass, where N counts the parameters that take part in matrix multiplies (everything but the
embedding lookups, plus the output projection when it is tied to the input embedding: the logits are
still computed), L layers, h hidden size, s sequence length. Full activation checkpointing recomputes
the forward once more, so the hardware does 8·N + 16·L·h·s; MFU uses the model figure, as PaLM defines it.

Peaks are dense (no sparsity) per-GPU figures. "fp32" is the plain FP32 (non-tensor-core) peak: torch
leaves TF32 off for matmuls by default (torch.backends.cuda.matmul.allow_tf32 is False), so fp32 matmuls
run on the FP32 units. A job that turns TF32 on should set hardware.peak_tflops itself.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# (regular expression over the upper-cased torch.cuda.get_device_name, {precision: TFLOP/s}) from NVIDIA's
# data sheets. The first match wins, so specific names come first; word boundaries keep "L4" off an L40,
# "A10" off an A100 and "H200" off a GH200. An unlisted GPU (B200, V100S, ...) gets None.
PEAK_TFLOPS: tuple[tuple[str, dict[str, float]], ...] = (
    (r"\bH100\b.*\bPCIE\b", {"bf16": 756.0, "fp16": 756.0, "fp32": 51.0}),
    (r"\bH100\b.*\bNVL\b", {"bf16": 835.0, "fp16": 835.0, "fp32": 60.0}),
    (r"\bGH200\b", {"bf16": 989.0, "fp16": 989.0, "fp32": 67.0}),
    (r"\bH200\b.*\bNVL\b", {"bf16": 835.0, "fp16": 835.0, "fp32": 60.0}),
    (r"\bH200\b", {"bf16": 989.0, "fp16": 989.0, "fp32": 67.0}),  # SXM
    (r"\bH100\b", {"bf16": 989.0, "fp16": 989.0, "fp32": 67.0}),  # SXM
    (r"\bA100\b", {"bf16": 312.0, "fp16": 312.0, "fp32": 19.5}),  # SXM and PCIe alike
    (r"\bL40S\b", {"bf16": 362.0, "fp16": 362.0, "fp32": 91.6}),
    (r"\bL40\b", {"bf16": 181.0, "fp16": 181.0, "fp32": 90.5}),
    (r"\bL4\b", {"bf16": 121.0, "fp16": 121.0, "fp32": 30.3}),
    (r"\bA10G\b", {"bf16": 125.0, "fp16": 125.0, "fp32": 31.2}),  # no public sheet: the A10's (same GA102 part)
    (r"\bA10\b", {"bf16": 125.0, "fp16": 125.0, "fp32": 31.2}),
    (r"\bV100\b.*\bPCIE\b", {"fp16": 112.0, "fp32": 14.0}),  # no bf16 on V100
    (r"\bV100\b", {"fp16": 125.0, "fp32": 15.7}),  # SXM2
)


@dataclass(frozen=True)
class FlopsPerToken:
    """Training FLOPs per token: what the model needs, and what the hardware runs (with recomputation)."""

    model: float
    hardware: float


def flops_per_token(
    matmul_params: int, layers: int, hidden: int, sequence_length: int, recompute: bool
) -> FlopsPerToken:
    """PaLM's 6·N + 12·L·h·s per token; with full recomputation the hardware adds one forward."""
    forward = 2.0 * matmul_params + 4.0 * layers * hidden * sequence_length
    model = 3.0 * forward
    return FlopsPerToken(model=model, hardware=model + (forward if recompute else 0.0))


def peak_tflops(device_name: str, precision: str) -> float | None:
    """The table's peak for a device name (as torch.cuda.get_device_name gives it), or None."""
    upper = device_name.upper()
    for pattern, peaks in PEAK_TFLOPS:
        if re.search(pattern, upper):
            return peaks.get(precision)
    return None


def work_figures(
    tokens_per_s: float,
    devices: int,
    per_token: FlopsPerToken,
    peak: float | None,
) -> dict[str, float]:
    """Per-device throughput, achieved TFLOP/s (model and hardware) and MFU when a peak is known."""
    per_device = tokens_per_s / devices
    figures = {
        "tokens_per_s_per_device": per_device,
        "tflops_per_device": per_device * per_token.model / 1e12,
        "hardware_tflops_per_device": per_device * per_token.hardware / 1e12,
        "model_flops_per_token": per_token.model,
    }
    if peak:
        figures["mfu"] = figures["tflops_per_device"] / peak
        figures["peak_tflops"] = peak
    return figures
