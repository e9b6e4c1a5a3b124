"""Work figures (pure): FLOPs per token from the architecture, achieved TFLOPs, MFU against a peak table.

Model FLOPs per token follow PaLM (Chowdhery et al. 2022, appendix B): 6·N + 12·L·h·s for a forward and
backward pass, where N counts the parameters that take part in matrix multiplies (everything but the
embedding lookups, plus the output projection when it is tied to the input embedding: the logits are
still computed), L layers, h hidden size, s sequence length. Full activation checkpointing recomputes
the forward once more, so the hardware does 8·N + 16·L·h·s; MFU uses the model figure, as PaLM defines it.

With a frozen base (LoRA adapters, peft) the frozen weights get no weight gradients. PaLM's 6·N is 2·N for
the forward pass and 4·N for the backward pass, one matrix multiply for the inputs' gradients and one for
the weights' per weight (Narayanan et al. 2021, "Efficient Large-Scale Language Model Training on GPU
Clusters", section 5.1: the backward pass is twice the forward). So training FLOPs per token are
2·N (forward) + 2·N (input gradients, through every layer) + 2·N_trainable (the adapters' weight gradients)
+ 12·L·h·s (attention scores and their gradients, which hold no weights): 4·N + 2·N_trainable instead of 6·N,
N counting the adapters too. The input gradients of the layers below the first adapter are counted as well.

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
    matmul_params: int,
    layers: int,
    hidden: int,
    sequence_length: int,
    recompute: bool,
    trainable_matmul_params: int | None = None,
) -> FlopsPerToken:
    """PaLM's 6·N + 12·L·h·s per token, or 4·N + 2·N_trainable + 12·L·h·s with a frozen base (module docstring);
    with full recomputation the hardware adds one forward."""
    trainable = matmul_params if trainable_matmul_params is None else trainable_matmul_params
    attention = 4.0 * layers * hidden * sequence_length  # forward; its backward is twice that
    forward = 2.0 * matmul_params + attention
    model = forward + 2.0 * matmul_params + 2.0 * trainable + 2 * attention
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
