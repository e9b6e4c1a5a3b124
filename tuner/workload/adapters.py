"""LoRA adapters (peft) on the built-in workload's model, and what a frozen base changes for the memory model.

The space's `model.peft` becomes peft's `LoraConfig` (`lora_kwargs`: the same arguments `tuner export --format hf`
hands to a Trainer script) and the model is wrapped with `get_peft_model` after it is built: the base frozen,
only the adapters trainable. peft is imported only when a space asks for adapters (it adds about 2 s).

What a frozen base keeps for backward, checked against torch.autograd.graph.saved_tensors_hooks
(tests/unit/test_activations.py): a linear layer whose weight does not train needs no input for a weight
gradient, so autograd keeps the input of a linear layer only when LoRA adapts it (lora_A reads the same
tensor); an RMSNorm whose weight does not train keeps only its fp32 copy. Each adapted layer adds lora_A's
output (s x b x r, kept by lora_B) and, with dropout, its own dropped copy of the input and the mask.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch

from tuner.estimate import Adapters

TASK_TYPE = "CAUSAL_LM"  # peft's PeftModelForCausalLM: forward(input_ids, labels) as the base model's


def lora_kwargs(peft: dict[str, Any]) -> dict[str, Any]:
    """peft.LoraConfig's arguments for the space's `model.peft` (plain JSON: exports carry them as they are)."""
    kwargs: dict[str, Any] = {
        "r": int(peft["r"]),
        "lora_alpha": int(peft["alpha"]),
        "lora_dropout": float(peft["dropout"]),
        "task_type": TASK_TYPE,
    }
    if peft.get("target_modules") is not None:  # None: peft's default for the architecture
        kwargs["target_modules"] = peft["target_modules"]
    return kwargs


def apply_peft(model: Any, peft: dict[str, Any], seed: int) -> Any:
    """`model` wrapped with LoRA adapters (peft's get_peft_model): the base frozen, the adapters trainable.

    The adapters are initialised from `seed`, alike on every rank (lora_B starts at zero, so the wrapped model
    computes what the base does). Under ZeRO-3 the base is already partitioned by zero.Init: peft reads a
    partitioned layer's sizes from DeepSpeed's ds_shape, the adapters are built whole (r x (in + out) each)
    and deepspeed.initialize partitions them, as it does any parameter created outside zero.Init.
    """
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*fan_in_fan_out.*")  # GPT-2's Conv1D: peft sets it itself
        warnings.filterwarnings("ignore", category=FutureWarning)  # peft calls transformers' renamed methods
        return get_peft_model(model, LoraConfig(**lora_kwargs(peft)))


def linear_names(model: torch.nn.Module) -> list[str]:
    """The distinct last names of the model's linear layers (what target_modules can name), for messages."""
    from transformers.pytorch_utils import Conv1D

    names = {name.rsplit(".", 1)[-1] for name, m in model.named_modules() if isinstance(m, torch.nn.Linear | Conv1D)}
    return sorted(names)


def _attention_path(path: str) -> bool:
    """Whether a module path inside a block is under its attention (self_attn, attn, attention, ...)."""
    return any("attn" in part.lower() or "attention" in part.lower() for part in path.split(".")[:-1])


def adapters_shape(model: torch.nn.Module, block: torch.nn.Module, intermediate: int, peft: dict[str, Any]) -> Adapters:
    """What the adapters add and what the frozen base keeps, counted on one (meta-device) transformer block.

    Each adapted layer of the block reads one of four inputs: the normed input of attention (q, k, v), the
    attention output (its output projection: the last linear layer the attention module registers), the
    normed input of the MLP, or the MLP's intermediate activation (its down projection: in_features equal
    to the intermediate size). Autograd keeps each of those inputs once when any layer reading it is adapted.
    """
    from peft.tuners.lora import LoraLayer

    adapted = [(path, m) for path, m in block.named_modules() if isinstance(m, LoraLayer)]
    layers = [path for path, m in block.named_modules() if _is_linear(m) and not _inside_adapter(path)]
    attention = [path for path in layers if _attention_path(path)]
    output_projection = attention[-1] if attention else None
    slots: set[str] = set()
    rank_outputs = dropout_inputs = 0
    for path, layer in adapted:
        in_features = int(layer.in_features or 0)
        if _attention_path(path):
            slots.add("attention_output" if path == output_projection else "attention_input")
        else:
            slots.add("down" if in_features == intermediate else "mlp_input")
        rank_outputs += int(layer.r["default"])
        if float(peft["dropout"]) > 0:
            dropout_inputs += in_features
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    largest = max(sum(p.numel() for p in m.parameters(recurse=False) if p.requires_grad) for m in model.modules())
    return Adapters(
        method=str(peft["method"]),
        rank=int(peft["r"]),
        trainable_parameters=trainable,
        largest_trainable_layer=largest,
        inputs=tuple(sorted(slots)),
        rank_outputs=rank_outputs,
        dropout_inputs=dropout_inputs,
        target_modules=tuple(sorted({path.rsplit(".", 1)[-1] for path, _ in adapted})),
    )


def _inside_adapter(path: str) -> bool:
    """A module peft put inside an adapted layer (the wrapped base_layer, lora_A, lora_B, lora_dropout)."""
    return any(part == "base_layer" or part.startswith("lora_") for part in path.split("."))


def _is_linear(module: torch.nn.Module) -> bool:
    from peft.tuners.lora import LoraLayer
    from transformers.pytorch_utils import Conv1D

    return isinstance(module, torch.nn.Linear | Conv1D | LoraLayer)
