"""Activation and logits memory per rank (pure): what a training step keeps for backward, tensor by tensor.

The sources and the terms are in tuner.estimate's docstring; this module adds how a point splits them
(`Split`): tensor parallelism divides what lies inside the tensor-parallel region, Ulysses gives the rank
seq / sp tokens, TiledMLP and the tiled logits loss keep one tile where the whole tensor was.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

from tuner.estimate_parallel import output_tied, ulysses_kv_heads
from tuner.parallel import logits_tile_shards, mlp_tile_shards

if TYPE_CHECKING:
    from tuner.estimate import ModelShape


@dataclass(frozen=True)
class Split:
    """How a point divides one rank's activations: tensor- and sequence-parallel sizes and the tiled knobs."""

    tp: int = 1
    sp: int = 1
    tiled_mlp: bool = False
    tiled_logits: bool = False


WHOLE = Split()


def attention_kernel(shape: ModelShape, accelerator: str) -> str:
    """Which attention computation runs: flash (fused), the fp32 math fallback, or eager (unfused)."""
    if shape.attention == "eager":
        return "eager"
    if shape.attention == "sdpa" and shape.attention_dropout and accelerator == "cpu":
        return "math"  # PyTorch's CPU flash kernel has no dropout: SDPA falls back to fp32 math
    return "flash"


def layer_activation_bytes(
    shape: ModelShape,
    seq: int,
    micro: int,
    act_bytes: int,
    accelerator: str,
    first: bool = False,
    split: Split = WHOLE,
) -> float:
    """One transformer layer's saved activations for one micro-batch on one rank, tensor by tensor.

    Korthikanti et al.'s terms, with the sizes transformers' implementations keep (counted with
    torch.autograd.graph.saved_tensors_hooks, tests/unit/test_activations.py): norms keep their input (and
    an fp32 copy where RMSNorm upcasts); the QKV, output and first MLP projections their inputs; attention
    q, k, v and, fused, its output and log-sum-exp, or unfused the s x s scores; the MLP `mlp_saved`
    (s, b, intermediate) tensors; dropout one mask per element (1 byte on a GPU, the activation's dtype on CPU).
    A frozen base with adapters keeps only what its adapters need (tuner.estimate's docstring).

    `split`: the rank holds seq / sp tokens (Ulysses); attention, the output projection's input and the MLP's
    intermediates are / tp (Korthikanti's 24/t and 5as/(ht)), the rest whole (their 10); TiledMLP keeps none
    of the MLP's intermediates (its saved input is the MLP input already counted).
    """
    t = float(split.tp)
    s_all = float(seq)
    s, b, h, p = s_all / split.sp, float(micro), float(shape.hidden_size), float(act_bytes)
    i, a = float(shape.intermediate_size), float(shape.num_heads)
    sbh = s * b * h
    sb_kv = s * b * h * ulysses_kv_heads(shape, split.sp) / shape.num_heads
    mask = 1.0 if accelerator == "cuda" else p
    lora = shape.adapters
    # an RMSNorm's 16-bit input is kept for its weight's gradient; LayerNorm keeps its input either way
    norm = (0.0 if lora and shape.norm_fp32 else sbh * p) + (sbh * 4 if shape.norm_fp32 else 0.0)
    # the QKV and first MLP projections' inputs (whole on every tensor-parallel rank) and the output
    # projection's (split by heads); of a frozen base only the adapted ones
    inputs = set(lora.inputs) if lora else {"attention_input", "attention_output", "mlp_input"}
    mlp_input = "mlp_input" in inputs or split.tiled_mlp  # TiledMLP saves the MLP's input itself
    whole_inputs = ("attention_input" in inputs) + mlp_input
    linear_inputs = whole_inputs * sbh * p + (sbh * p / t if "attention_output" in inputs else 0.0)
    adapters = (lora.rank_outputs * s * b * p + lora.dropout_inputs * s * b * (p + 1.0)) if lora else 0.0
    kernel = attention_kernel(shape, accelerator)
    scores = a / t * s * s_all * b  # heads / sp over all the sequence under Ulysses: a x (s / sp) x s elements
    if kernel == "flash":
        attention = (sbh + 2 * sb_kv) * p / t + sbh * p / t + a / t * s * b * 4  # q, k, v; output; fp32 lse
    elif kernel == "math":
        attention = (sbh + 2 * sb_kv) * 4 / t + 3 * scores * 4  # fp32 q, k, v; softmax, dropout mask and output
    else:
        dropout = scores * (mask + p) if shape.attention_dropout else 0.0
        attention = (sbh + 2 * sb_kv) * p / t + scores * p + dropout  # Korthikanti's 5as^2b with dropout
    mlp_saved = shape.mlp_saved - (1 if lora and "down" not in lora.inputs else 0)  # the down projection's input
    mlp = 0.0 if split.tiled_mlp else mlp_saved * s * b * i * p / t
    residual_masks = 2 * sbh * mask if shape.hidden_dropout else 0.0
    if first and lora:
        # the first layer's input needs no gradient (the embedding is frozen): its first norm keeps nothing, nor
        # does its attention when no adapter feeds q, k or v
        return norm + linear_inputs + (attention if "attention_input" in lora.inputs else 0.0) + mlp + adapters
    return 2 * norm + linear_inputs + attention + mlp + residual_masks + adapters


def mlp_tile_bytes(shape: ModelShape, seq: int, micro: int, act_bytes: int, split: Split) -> float:
    """The one TiledMLP tile whose intermediates are alive while its backward recomputes it (0 untiled)."""
    if not split.tiled_mlp:
        return 0.0
    local = seq // split.sp
    tile = math.ceil(local / mlp_tile_shards(local, shape.hidden_size))
    return float(shape.mlp_saved) * tile * micro * shape.intermediate_size * act_bytes / split.tp


def activation_bytes(
    shape: ModelShape,
    seq: int,
    micro: int,
    act_bytes: int,
    checkpointing: bool,
    accelerator: str = "cuda",
    split: Split = WHOLE,
) -> float:
    """All layers' saved activations on one rank; with full checkpointing, layer inputs plus one layer being
    recomputed; with TiledMLP, one tile's intermediates besides."""
    layer = layer_activation_bytes(shape, seq, micro, act_bytes, accelerator, split=split)
    tokens = float(seq) / split.sp * micro
    sbh = tokens * shape.hidden_size * act_bytes
    frozen_rms = shape.adapters is not None and shape.norm_fp32  # its 16-bit input kept only for a trained weight
    final_norm = (0.0 if frozen_rms else sbh) + (tokens * shape.hidden_size * 4 if shape.norm_fp32 else 0.0)
    mask = 1 if accelerator == "cuda" else act_bytes
    embedding_mask = tokens * shape.hidden_size * mask if shape.hidden_dropout else 0.0
    outside = final_norm + embedding_mask + mlp_tile_bytes(shape, seq, micro, act_bytes, split)
    if checkpointing:
        return shape.num_layers * sbh + layer + outside
    if shape.adapters:  # the first layer of a frozen base keeps less (layer_activation_bytes)
        first = layer_activation_bytes(shape, seq, micro, act_bytes, accelerator, first=True, split=split)
        return first + (shape.num_layers - 1) * layer + outside
    return shape.num_layers * layer + outside


def logits_bytes(shape: ModelShape, seq: int, micro: int, act_bytes: int, split: Split = WHOLE) -> float:
    """The loss's peak over s x b x vocab: in the forward pass the logits, their fp32 upcast and the saved
    fp32 log-softmax (2 + 4 + 4 bytes in 16 bits); in the backward pass the saved log-softmax, its fp32
    gradient and the logits' gradient (4 + 4 + 4 in fp32, 4 + 4 + 2 in 16 bits).

    `split`: seq / sp tokens per rank; a tied output projection under tensor parallelism keeps its logits
    split by vocabulary (/ tp), an untied one gathers them whole; tiled, one tile's logits (torch.chunk of
    the b x s rows into logits_tile_shards) and the hidden states' gradient the loss keeps for backward.
    """
    local = seq // split.sp
    rows = float(micro * local)
    vocab = shape.vocab_size / (split.tp if split.tp > 1 and output_tied(shape) else 1)
    if not split.tiled_logits:
        return rows * vocab * (4 + 4 + act_bytes)
    tile = math.ceil(rows / logits_tile_shards(micro, local, shape.vocab_size))
    return tile * vocab * (4 + 4 + act_bytes) + rows * shape.hidden_size * act_bytes
