"""The built-in workload: a Hugging Face causal LM with random weights on synthetic tokens.

Nothing is downloaded: the architecture comes from a config mapping (inline in the space or read
from a local config.json when the space was loaded), and the weights are initialised at random.
The throughput of a training step does not depend on the weights' values, only on the shapes.
"""

from __future__ import annotations

import re
from typing import Any

import torch

from tuner.errors import SpaceError
from tuner.estimate import ModelShape

# transformers' activation functions written as several Python operations, each keeping a tensor for
# backward (gelu_new: its input, tanh, 1 + tanh and 0.5 x); the others are one fused kernel.
UNFUSED_ACTIVATIONS = {"gelu_new": 4, "gelu_fast": 4, "gelu_accurate": 4, "quick_gelu": 2, "gelu_python": 3}
DROPOUT_KEYS = ("resid_pdrop", "embd_pdrop", "hidden_dropout", "hidden_dropout_prob", "dropout")


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


# Sizes a model needs at least one of; transformers accepts 0 or less for some and fails later, in every trial.
POSITIVE_SIZES = (
    "vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
    "intermediate_size", "max_position_embeddings", "head_dim",
)  # fmt: skip


def _user_key(model_config: dict[str, Any], aliases: dict[str, str], name: str) -> str | None:
    """The key the user wrote for transformers' attribute `name` (gpt2's n_head for num_attention_heads)."""
    return next((key for key in model_config if key in (name, aliases.get(name))), None)


def _key_holding(model_config: dict[str, Any], value: object, prefix: str = "") -> str | None:
    """The dotted key whose value is `value` (what a KeyError from transformers names), if one is."""
    for key, held in model_config.items():
        if isinstance(held, dict):
            found = _key_holding(held, value, f"{prefix}{key}.")
            if found:
                return found
        elif isinstance(held, str) and held == value:
            return f"{prefix}{key}"
    return None


def _named_key(model_config: dict[str, Any], exc: BaseException) -> str:
    """model.config, or model.config.<field> when transformers' message names a field the user wrote."""
    text = str(exc)
    field = re.search(r"Validation error for field '(\w+)'", text)
    named = field.group(1) if field else None
    if named is None and isinstance(exc, KeyError) and exc.args:
        named = _key_holding(model_config, exc.args[0])  # an unknown name: ACT2FN['nope'], a rope_type, ...
    if named is None:
        named = next((k for k in model_config if re.search(rf"\b{re.escape(k)}\b", text)), None)
    return f"model.config.{named}" if named else "model.config"


def _one_line(exc: BaseException) -> str:
    """transformers' message without its wrapper (huggingface_hub's strict dataclasses put the cause below)."""
    cause = exc.__cause__ if "StrictDataclass" in type(exc).__name__ and exc.__cause__ else exc
    if isinstance(cause, KeyError) and cause.args:
        return f"no such name: {cause.args[0]!r}"  # a lookup in one of its tables (activations, rope types)
    text = " ".join(str(cause).split()) or type(cause).__name__
    return text if len(text) <= 300 else text[:297] + "..."


def validate_model_config(
    model_config: dict[str, Any], sequence_length: int | None, options: dict[str, Any] | None = None
) -> None:
    """Raise SpaceError (naming model.config, or its field) for a config transformers would reject.

    transformers 5 checks a config's fields and architecture (`validate_architecture`) in its constructor,
    some architectures only when the model is built, and a few mismatches only in the forward pass. All of
    those run here before anything is written: the config, then the model on the meta device (shapes only,
    milliseconds even for 70B), then what the forward pass would hit (key/value heads, learned positions).
    `options` (model.attn_implementation, model.peft) are built on the meta device too.
    """
    from transformers import CONFIG_MAPPING, AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    # transformers' names for the user's keys: gpt2's attribute_map has max_position_embeddings -> n_positions
    aliases: dict[str, str] = dict(getattr(CONFIG_MAPPING[model_config["model_type"]], "attribute_map", {}))
    standard = {alias: name for name, alias in aliases.items()}
    for key, value in model_config.items():
        if standard.get(key, key) in POSITIVE_SIZES and type(value) is int and value <= 0:
            raise SpaceError(f"model.config.{key}", f"must be a positive integer (got {value})")
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # the one line below says what is wrong; no warnings around it
    try:
        config = build_config(model_config)
        config.use_cache = False
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config)
    except Exception as exc:  # user values handed to transformers: any refusal is the user's to fix
        if "Unrecognized configuration class" in str(exc):
            raise SpaceError(
                "model.config.model_type",
                f"{model_config['model_type']!r} is not a causal language model transformers builds "
                "(AutoModelForCausalLM); e.g. gpt2, llama, qwen2",
            ) from None
        raise SpaceError(_named_key(model_config, exc), f"transformers rejects it: {_one_line(exc)}") from None
    finally:
        hf_logging.set_verbosity(verbosity)
    _validate_options(model, model_config, options or {})
    heads, kv_heads = getattr(config, "num_attention_heads", None), getattr(config, "num_key_value_heads", None)
    if isinstance(heads, int) and isinstance(kv_heads, int) and heads % kv_heads:
        key = _user_key(model_config, aliases, "num_key_value_heads") or "num_key_value_heads"
        why = "each key/value head serves the same number of query heads"
        raise SpaceError(f"model.config.{key}", f"must divide num_attention_heads ({heads}), got {kv_heads}: {why}")
    positions = getattr(config, "max_position_embeddings", None)
    if not isinstance(positions, int) or sequence_length is None or sequence_length <= positions:
        return
    inputs = model.get_input_embeddings()
    if any(
        isinstance(m, torch.nn.Embedding) and m is not inputs and positions <= m.num_embeddings <= positions + 2
        for m in model.modules()
    ):  # a learned position table (GPT-2's wpe, OPT's embed_positions) has no row past max_position_embeddings
        written = _user_key(model_config, aliases, "max_position_embeddings")
        name = f"model.config.{written}" if written else "the model's max_position_embeddings"
        raise SpaceError(
            "data.sequence_length",
            f"must be at most {name} ({positions}): the learned position table ends there; got {sequence_length}",
        )


def _validate_options(model: Any, model_config: dict[str, Any], options: dict[str, Any]) -> None:
    """The attention implementation transformers must accept for the architecture; the adapters peft must
    attach (each target module found), both on the meta device."""
    attention = options.get("attn_implementation")
    if attention:
        try:
            with torch.device("meta"):
                _base_model(model_config, 0, {"attn_implementation": attention})
        except Exception as exc:  # transformers' refusal (e.g. no SDPA for this architecture)
            raise SpaceError("model.attn_implementation", f"transformers rejects it: {_one_line(exc)}") from None
    peft = options.get("peft")
    if not peft:
        return
    from tuner.workload.adapters import apply_peft, linear_names

    names = ", ".join(linear_names(model))
    targets = peft.get("target_modules")
    try:
        with torch.device("meta"):
            wrapped = apply_peft(model, peft, 0)
    except Exception as exc:  # peft's refusal: no target matches, or a module type it cannot adapt
        if type(exc).__name__ == "NoMatchingPeftModuleError" or "not found in the base model" in str(exc):
            what = targets if targets is not None else f"peft's default for {model_config['model_type']}"
            raise SpaceError(
                "model.peft.target_modules", f"{what} matches no module; its linear layers: {names}"
            ) from None
        kind = re.match(r"Target module (\w+)", str(exc))
        if kind:  # a module peft has no adapter for (a norm, a dropout, a whole block)
            raise SpaceError(
                "model.peft.target_modules",
                f"{targets} names a {kind.group(1)}, which peft cannot adapt (it adapts linear, embedding and "
                f"convolution layers); the model's linear layers: {names}",
            ) from None
        raise SpaceError(
            "model.peft", f"peft rejects it: {_one_line(exc)} (the model's linear layers: {names})"
        ) from None
    adapted = [path for path, m in wrapped.named_modules() if hasattr(m, "lora_A")]
    for target in targets if isinstance(targets, list) else []:  # peft itself only needs one of them to match
        if not any(path == target or path.endswith("." + target) for path in adapted):
            raise SpaceError("model.peft.target_modules", f"{target!r} matches no module; its linear layers: {names}")


def import_model_code(model_config: dict[str, Any]) -> None:
    """Import the architecture's modeling module (transformers imports it lazily on first build)."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING

    MODEL_FOR_CAUSAL_LM_MAPPING[type(build_config(model_config))]


def _base_model(model_config: dict[str, Any], seed: int, options: dict[str, Any] | None) -> Any:
    """The transformers model with seeded random weights and the space's attention implementation."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    config = build_config(model_config)
    config.use_cache = False  # a KV cache is for generation; training only pays for it
    attention = (options or {}).get("attn_implementation")
    return AutoModelForCausalLM.from_config(config, **({"attn_implementation": attention} if attention else {}))


def _with_adapters(model: Any, seed: int, options: dict[str, Any] | None) -> Any:
    """The model wrapped with the space's LoRA adapters (model.peft), or as it is."""
    peft = (options or {}).get("peft")
    if not peft:
        return model
    from tuner.workload.adapters import apply_peft

    return apply_peft(model, peft, seed)


def build_model(model_config: dict[str, Any], seed: int, options: dict[str, Any] | None = None) -> Any:
    """The causal LM for `model_config`, in fp32, with seeded random weights; `options` (the space's model section
    besides its config: attn_implementation, peft) pick the attention kernel and wrap it with LoRA adapters."""
    return _with_adapters(_base_model(model_config, seed, options), seed, options)


def build_partitioned_model(
    model_config: dict[str, Any], seed: int, ds_config: dict[str, Any], options: dict[str, Any] | None = None
) -> Any:
    """The model built already partitioned by ZeRO-3 (deepspeed.zero.Init): no rank ever holds it whole.

    transformers initialises weights after construction, when zero.Init has partitioned them away, so each
    module's own parameters are gathered in turn (at most one module whole at a time) and initialised on
    rank 0, which DeepSpeed then scatters. torch._dynamo's polyfills must be imported first: they check
    torch.Tensor.__new__'s signature, which zero.Init patches (torch 2.13). LoRA adapters are attached
    afterwards (tuner.workload.adapters.apply_peft): deepspeed.initialize partitions them.
    """
    import deepspeed
    import torch._dynamo.polyfills.loader
    import torch.distributed as dist

    with deepspeed.zero.Init(config_dict_or_path=ds_config):
        model = _base_model(model_config, seed, options)
    torch.manual_seed(seed)
    for module in model.modules():
        own = list(module.parameters(recurse=False))
        if own:
            with deepspeed.zero.GatheredParameters(own, modifier_rank=0), torch.no_grad():
                if dist.get_rank() == 0:
                    model._init_weights(module)
    return _with_adapters(model, seed, options)


def _numel(param: torch.nn.Parameter) -> int:
    """Elements of a parameter, also when ZeRO-3 has partitioned it away (zero.Init)."""
    return int(getattr(param, "ds_numel", param.numel()))


def model_facts(model: Any) -> dict[str, int]:
    """What the FLOPs formula needs, counted from the model itself (full sizes, also under zero.Init).

    matmul_parameters: every parameter except embedding lookups, plus the output projection when it is
    tied to the input embedding (the logits are computed all the same). trainable_parameters: those with
    gradients (all, or LoRA's adapters); trainable_matmul_parameters: the matmul ones among them (weight
    gradients, tuner.flops).
    """
    total = sum(_numel(p) for p in model.parameters())
    trainable = sum(_numel(p) for p in model.parameters() if p.requires_grad)
    embeddings = [p for m in model.modules() if isinstance(m, torch.nn.Embedding) for p in m.parameters()]
    embedding = sum(_numel(p) for p in embeddings)
    output = model.get_output_embeddings()
    tied = output is not None and output.weight is model.get_input_embeddings().weight
    tied_output = _numel(output.weight) if tied else 0
    trained_output = tied_output if tied and output.weight.requires_grad else 0
    trained_embedding = sum(_numel(p) for p in embeddings if p.requires_grad)
    config = model.config
    return {
        "num_parameters": total,
        "trainable_parameters": trainable,
        "embedding_parameters": embedding,
        "matmul_parameters": total - embedding + tied_output,
        "trainable_matmul_parameters": trainable - trained_embedding + trained_output,
        "num_layers": int(config.num_hidden_layers),
        "hidden_size": int(config.hidden_size),
    }


def _blocks(model: torch.nn.Module) -> torch.nn.ModuleList:
    """The repeated transformer blocks: the longest ModuleList in the model."""
    lists = [m for m in model.modules() if isinstance(m, torch.nn.ModuleList)]
    return max(lists, key=len)


def model_shape(model_config: dict[str, Any], options: dict[str, Any] | None = None) -> ModelShape:
    """Count the architecture on PyTorch's meta device: shapes only, no memory, so a 70B model plans anywhere.

    With `options` (ModelSection.options) the model is built as the trials build it: the attention
    implementation, and LoRA adapters attached (their trainable parameters, what the frozen base keeps).
    """
    with torch.device("meta"):
        model = _base_model(model_config, 0, options)
        config = model.config
        model = _with_adapters(model, 0, options)
    facts = model_facts(model)
    heads = int(config.num_attention_heads)
    hidden = facts["hidden_size"]
    intermediate = getattr(config, "intermediate_size", None) or getattr(config, "n_inner", None) or 4 * hidden
    names = [name for name, _ in model.named_modules()]
    gated = any(name.endswith(("gate_proj", "gate_up_proj", "w1")) for name in names)
    act = str(getattr(config, "hidden_act", None) or getattr(config, "activation_function", "gelu"))
    # gated: gate and up outputs, the activation's output, their product; else the activation's saved
    # tensors and the down projection's input
    mlp_saved = 4 if gated else UNFUSED_ACTIVATIONS.get(act, 1) + 1
    attention_dropout = float(getattr(config, "attention_dropout", None) or getattr(config, "attn_pdrop", 0.0) or 0)
    hidden_dropout = any(float(getattr(config, key, 0.0) or 0.0) > 0 for key in DROPOUT_KEYS)
    norm_fp32 = any("RMSNorm" in type(m).__name__ for m in model.modules())
    largest = max(sum(p.numel() for p in m.parameters(recurse=False)) for m in model.modules())
    adapters = None
    if (options or {}).get("peft"):
        from tuner.workload.adapters import adapters_shape

        adapters = adapters_shape(model, _blocks(model)[0], int(intermediate), (options or {})["peft"])
    return ModelShape(
        model_type=str(config.model_type),
        num_parameters=facts["num_parameters"],
        embedding_parameters=facts["embedding_parameters"],
        largest_layer_parameters=largest,
        block_parameters=sum(p.numel() for p in _blocks(model)[0].parameters()),
        matmul_parameters=facts["matmul_parameters"],
        num_layers=facts["num_layers"],
        hidden_size=hidden,
        intermediate_size=int(intermediate),
        num_heads=heads,
        num_kv_heads=int(getattr(config, "num_key_value_heads", None) or heads),
        vocab_size=vocab_size(model),
        gated_mlp=gated,
        mlp_saved=mlp_saved,
        norm_fp32=norm_fp32,
        attention=str(getattr(config, "_attn_implementation", None) or "eager"),
        attention_dropout=attention_dropout > 0,
        hidden_dropout=hidden_dropout,
        adapters=adapters,
    )


def vocab_size(model: torch.nn.Module) -> int:
    """The vocabulary size the model's embedding accepts."""
    weight = model.get_input_embeddings().weight  # type: ignore[operator]
    return int(getattr(weight, "ds_shape", weight.shape)[0])  # ds_shape: the full shape under zero.Init


def synthetic_batch(
    generator: torch.Generator, vocab: int, micro_batch: int, sequence_length: int, device: torch.device
) -> dict[str, torch.Tensor]:
    """Random token ids; the labels are the inputs (the model shifts them for next-token loss)."""
    ids = torch.randint(0, vocab, (micro_batch, sequence_length), generator=generator)
    ids = ids.to(device)
    return {"input_ids": ids, "labels": ids}


def synthetic_batches(
    generator: torch.Generator, vocab: int, micro_batch: int, sequence_length: int, device: torch.device, count: int
) -> list[dict[str, torch.Tensor]]:
    """`count` random batches, all on `device` before any step is timed (one optimizer step's micro-batches)."""
    return [synthetic_batch(generator, vocab, micro_batch, sequence_length, device) for _ in range(count)]
