"""The activation model against what autograd really keeps for transformers' models (small, on CPU).

Every tensor saved for backward is seen through torch.autograd.graph.saved_tensors_hooks and counted
once by storage; parameters are left out. The prediction is the model's activations plus the saved
fp32 log-softmax of the loss (s x b x vocab x 4 bytes).
"""

from __future__ import annotations

from typing import Any

import pytest
import torch

from tuner.estimate import activation_bytes
from tuner.workload.hf_causal_lm import build_model, model_shape

CONFIGS: dict[str, dict[str, Any]] = {
    "gpt2 (dropout: fp32 math attention on CPU)": {"model_type": "gpt2", "n_layer": 2, "n_embd": 256, "n_head": 4,
                                                   "vocab_size": 4096},
    "gpt2 without dropout": {"model_type": "gpt2", "n_layer": 2, "n_embd": 256, "n_head": 4, "vocab_size": 4096,
                             "attn_pdrop": 0.0, "resid_pdrop": 0.0, "embd_pdrop": 0.0},
    "gpt2 fused gelu, residual dropout": {"model_type": "gpt2", "n_layer": 2, "n_embd": 256, "n_head": 4,
                                          "vocab_size": 4096, "attn_pdrop": 0.0,
                                          "activation_function": "gelu_pytorch_tanh"},
    "llama GQA": {"model_type": "llama", "hidden_size": 256, "intermediate_size": 688, "num_hidden_layers": 2,
                  "num_attention_heads": 8, "num_key_value_heads": 2, "vocab_size": 4096},
}  # fmt: skip


def saved_bytes(
    config: dict[str, Any], seq: int, micro: int, checkpointing: bool, options: dict[str, Any] | None = None
) -> int:
    model = build_model(config, seed=0, options=options).to(torch.bfloat16)
    model.train()
    if checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        key = t.untyped_storage().data_ptr()
        if key not in params:
            seen.setdefault(key, t.untyped_storage().nbytes())
        return t

    ids = torch.randint(0, model.config.vocab_size, (micro, seq))
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(input_ids=ids, labels=ids)
    return sum(seen.values())


@pytest.mark.parametrize("name", list(CONFIGS))
@pytest.mark.parametrize(("seq", "micro"), [(64, 2), (128, 4)])
def test_predicted_activations_match_what_autograd_saves(name: str, seq: int, micro: int) -> None:
    config = CONFIGS[name]
    shape = model_shape(config)
    predicted = activation_bytes(shape, seq, micro, 2, False, "cpu") + seq * micro * shape.vocab_size * 4
    measured = saved_bytes(config, seq, micro, checkpointing=False)
    assert predicted == pytest.approx(measured, rel=0.03), f"{name}: {predicted / measured - 1:+.1%}"


def test_checkpointing_keeps_only_layer_inputs() -> None:
    """With non-reentrant checkpointing autograd saves each layer's input; the model adds one layer's
    working set for the recomputation, which the hook (forward only) does not see."""
    config = CONFIGS["llama GQA"]
    shape = model_shape(config)
    full = saved_bytes(config, 128, 4, checkpointing=False)
    kept = saved_bytes(config, 128, 4, checkpointing=True)
    assert kept < full / 2
    predicted = activation_bytes(shape, 128, 4, 2, True, "cpu") + 128 * 4 * shape.vocab_size * 4
    assert kept <= predicted < full


def lora(targets: list[str] | str | None, dropout: float = 0.0) -> dict[str, Any]:
    return {"peft": {"method": "lora", "r": 8, "alpha": 16, "dropout": dropout, "target_modules": targets}}


LLAMA_LINEARS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
# (config, options, tolerance): a frozen base keeps only its adapted layers' inputs; the model counts LoRA
# dropout's mask in every layer, where the first layer (no gradient into it) keeps less: 2 layers magnify it
ADAPTED: dict[str, tuple[str, dict[str, Any], float]] = {
    "llama q, v": ("llama GQA", lora(["q_proj", "v_proj"]), 0.01),
    "llama o, down": ("llama GQA", lora(["o_proj", "down_proj"]), 0.02),
    "llama every linear": ("llama GQA", lora(LLAMA_LINEARS), 0.03),
    "llama every linear, dropout": ("llama GQA", lora(LLAMA_LINEARS, dropout=0.1), 0.07),
    "gpt2 c_attn (peft's default)": ("gpt2 without dropout", lora(None), 0.01),
    "gpt2 all-linear": ("gpt2 without dropout", lora("all-linear"), 0.03),
    "gpt2 with dropout, c_attn": ("gpt2 (dropout: fp32 math attention on CPU)", lora(["c_attn"]), 0.02),
}  # fmt: skip


@pytest.mark.parametrize("name", list(ADAPTED))
def test_a_frozen_base_keeps_only_what_its_adapters_need(name: str) -> None:
    base, options, tolerance = ADAPTED[name]
    config = CONFIGS[base]
    shape = model_shape(config, options)
    predicted = activation_bytes(shape, 128, 4, 2, False, "cpu") + 128 * 4 * shape.vocab_size * 4
    measured = saved_bytes(config, 128, 4, checkpointing=False, options=options)
    assert predicted == pytest.approx(measured, rel=tolerance), f"{name}: {predicted / measured - 1:+.1%}"
    if not options["peft"]["dropout"]:  # with dropout each adapter keeps its own copy of its input: can be more
        assert measured < saved_bytes(config, 128, 4, checkpointing=False)  # than full fine-tuning keeps
