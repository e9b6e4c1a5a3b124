"""The built-in workload: a Hugging Face causal LM with random weights on synthetic tokens.

Nothing is downloaded: the architecture comes from a config mapping (inline in the space or read
from a local config.json when the space was loaded), and the weights are initialised at random.
The throughput of a training step does not depend on the weights' values, only on the shapes.
"""

from __future__ import annotations

from typing import Any

import torch


def build_config(model_config: dict[str, Any]) -> Any:
    """A transformers config object from a mapping with `model_type` and the architecture's fields."""
    from transformers import AutoConfig

    fields = dict(model_config)
    model_type = fields.pop("model_type")
    for key in ("architectures", "transformers_version", "_name_or_path", "torch_dtype", "dtype"):
        fields.pop(key, None)
    defaults = AutoConfig.for_model(model_type).to_dict()
    vocab = fields.get("vocab_size", defaults.get("vocab_size"))
    for key in ("bos_token_id", "eos_token_id", "pad_token_id"):
        token = fields.get(key, defaults.get(key))
        if isinstance(token, int) and isinstance(vocab, int) and token >= vocab:
            fields[key] = vocab - 1  # defaults made for the full vocabulary; random ids need no tokenizer
    return AutoConfig.for_model(model_type, **fields)


def build_model(model_config: dict[str, Any], seed: int) -> Any:
    """The causal LM (a transformers PreTrainedModel) for `model_config`, in fp32, with seeded random weights."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    config = build_config(model_config)
    config.use_cache = False  # a KV cache is for generation; training only pays for it
    return AutoModelForCausalLM.from_config(config)


def model_facts(model: Any) -> dict[str, int]:
    """What the FLOPs formula needs, counted from the model itself (call before ZeRO-3 partitions it).

    matmul_parameters: every parameter except embedding lookups, plus the output projection when it is
    tied to the input embedding (the logits are computed all the same).
    """
    total = sum(p.numel() for p in model.parameters())
    embedding = sum(p.numel() for m in model.modules() if isinstance(m, torch.nn.Embedding) for p in m.parameters())
    output = model.get_output_embeddings()
    tied = output is not None and output.weight is model.get_input_embeddings().weight
    config = model.config
    return {
        "num_parameters": total,
        "embedding_parameters": embedding,
        "matmul_parameters": total - embedding + (output.weight.numel() if tied else 0),
        "num_layers": int(config.num_hidden_layers),
        "hidden_size": int(config.hidden_size),
    }


def vocab_size(model: torch.nn.Module) -> int:
    """The vocabulary size the model's embedding accepts."""
    return int(model.get_input_embeddings().weight.shape[0])  # type: ignore[operator]


def synthetic_batch(
    generator: torch.Generator, vocab: int, micro_batch: int, sequence_length: int, device: torch.device
) -> dict[str, torch.Tensor]:
    """Random token ids; the labels are the inputs (the model shifts them for next-token loss)."""
    ids = torch.randint(0, vocab, (micro_batch, sequence_length), generator=generator)
    ids = ids.to(device)
    return {"input_ids": ids, "labels": ids}
