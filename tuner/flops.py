"""Work figures (pure): FLOPs per token from the architecture, achieved TFLOPs, MFU against a peak table.

Model FLOPs per token follow PaLM (Chowdhery et al. 2022, appendix B): 6·N + 12·L·h·s for a forward and
backward pass, where N counts the parameters that take part in matrix multiplies (everything but the
embedding lookups, plus the output projection when it is tied to the input embedding: the logits are
still computed), L layers, h hidden size, s sequence length. Full activation checkpointing recomputes
the forward once more, so the hardware does 8·N + 16·L·h·s; MFU uses the model figure, as PaLM defines it.
"""

from __future__ import annotations

from dataclasses import dataclass

# Dense (no sparsity) tensor-core peaks per GPU in TFLOP/s, from NVIDIA's data sheets; fp32 means TF32
# tensor cores, which PyTorch uses for fp32 matmuls only when allowed, so fp32 MFU is an upper figure.
# Longer names first: "L4" must not match an L40S.
PEAK_TFLOPS: tuple[tuple[str, dict[str, float]], ...] = (
    ("H200", {"bf16": 989.0, "fp16": 989.0, "fp32": 494.5}),
    ("H100", {"bf16": 989.0, "fp16": 989.0, "fp32": 494.5}),  # SXM; the PCIe card is lower (756)
    ("A100", {"bf16": 312.0, "fp16": 312.0, "fp32": 156.0}),
    ("L40S", {"bf16": 362.0, "fp16": 362.0, "fp32": 183.0}),
    ("A10G", {"bf16": 125.0, "fp16": 125.0, "fp32": 62.5}),  # no public sheet: the A10's (same GA102 part)
    ("A10", {"bf16": 125.0, "fp16": 125.0, "fp32": 62.5}),
    ("L4", {"bf16": 121.0, "fp16": 121.0, "fp32": 60.0}),
    ("V100", {"fp16": 125.0, "fp32": 15.7}),
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
    for key, peaks in PEAK_TFLOPS:
        if key in upper:
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
