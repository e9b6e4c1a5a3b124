"""The measured config, reshaped for the production job (pure): another world size, or Hugging Face Trainer.

The global batch is the contract: a job of N ranks keeps the tuned micro-batch and the tensor- and
sequence-parallel sizes, and recomputes gradient accumulation so that micro x accumulation x the
data-parallel ranks (N / (tp x sp)) is still the global batch. DeepSpeed's own `train_batch_size` counts
over the world its config check uses (tuner.parallel.deepspeed_world: all N under AutoTP, N / sp under
Ulysses). For Trainer and Accelerate the config keeps the concrete tuned values (no "auto"), and the
TrainingArguments that must match them are derived from the same config, because Trainer refuses a
DeepSpeed config that disagrees with its arguments.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

from tuner.errors import SpaceError
from tuner.knobs import BY_NAME, MAIN
from tuner.parallel import SP, TP, data_parallel, deepspeed_world, sizes
from tuner.points import Point


def parallel_values(config: dict[str, Any]) -> dict[str, int]:
    """The tensor- and sequence-parallel sizes a ds_config sets, read where their knobs write them (1: unset)."""
    out = {}
    for name in (TP, SP):
        value = _param(config, *BY_NAME[name].paths[0])
        out[name] = int(value) if isinstance(value, int) and value > 0 else 1
    return out


def zero_group(values: Mapping[str, Any], ranks: int) -> int:
    """The ranks ZeRO partitions over: the data-parallel group under AutoTP (ranks / tp), the sequence x data
    group under Ulysses (all of them): deepspeed/utils/groups.py _get_sequence_data_parallel_group, which
    the engine hands ZeRO as its dp_process_group (runtime/engine.py)."""
    return ranks // sizes(values)[0]


def measured_global_batch(config: dict[str, Any]) -> int:
    """The samples per optimizer step a measured config trains: its train_batch_size, over tp under AutoTP
    (DeepSpeed counts a tensor-parallel group's ranks, which see the same samples, in its batch)."""
    return int(config["train_batch_size"]) // sizes(parallel_values(config))[0]


def world_sizes_that_divide(global_batch: int, micro: int, upto: int = 1024, group: int = 1) -> list[int]:
    """World sizes that keep `global_batch` with micro-batch `micro` (accumulation a whole number), each a
    multiple of `group` ranks (tp x sp) whose data-parallel share divides the batch."""
    if global_batch % micro:
        return []
    return [n for n in range(group, upto + 1, group) if (global_batch // micro) % (n // group) == 0]


def for_world_size(config: dict[str, Any], world_size: int, measured_ranks: int) -> tuple[dict[str, Any], list[str]]:
    """`config` for a job of `world_size` ranks at the same global and micro batch and the same tensor- and
    sequence-parallel sizes, and notes for the user."""
    if world_size < 1:
        raise SpaceError("--world-size", f"must be at least 1, got {world_size}")
    out = copy.deepcopy(config)
    values = parallel_values(config)
    tp, sp = sizes(values)
    group = tp * sp
    global_batch, micro = measured_global_batch(config), int(config["train_micro_batch_size_per_gpu"])
    fits = world_sizes_that_divide(global_batch, micro, upto=max(64, world_size), group=group)
    if world_size % group:
        raise SpaceError(
            "--world-size",
            f"{world_size} ranks do not split into groups of tensor_parallel_size {tp} x sequence_parallel_size "
            f"{sp} = {group} ranks; world sizes that do and keep the global batch {global_batch}: "
            f"{', '.join(map(str, fits)) or 'none'}",
        )
    dp = data_parallel(values, world_size)
    if global_batch % (micro * dp):
        ranks = f"{world_size} ranks" if group == 1 else f"{dp} data-parallel ranks ({world_size} / {group})"
        raise SpaceError(
            "--world-size",
            f"{ranks} x micro-batch {micro} does not divide the global batch {global_batch}; "
            f"world sizes that do: {', '.join(map(str, fits)) or 'none'}",
        )
    accum = global_batch // (micro * dp)
    out["gradient_accumulation_steps"] = accum
    out["train_batch_size"] = micro * accum * deepspeed_world(values, world_size)
    notes = []
    stage = int((config.get("zero_optimization") or {}).get("stage", 0))
    if world_size != measured_ranks:
        kept = (
            f" over {dp} data-parallel ranks (tensor_parallel_size {tp} and sequence_parallel_size {sp} kept)"
            if group > 1
            else ""
        )
        notes.append(
            f"measured on {measured_ranks} rank(s); written for {world_size}: gradient accumulation "
            f"{config['gradient_accumulation_steps']} -> {accum} keeps the global batch {global_batch}{kept}"
        )
    before, after = zero_group(values, measured_ranks), zero_group(values, world_size)
    if stage and after > before:
        notes.append(
            f"ZeRO stage {stage} partitions over {after} ranks instead of {before}, so memory per "
            "device only falls; throughput per device was measured at the smaller scale and may differ"
        )
    elif stage and after < before:
        notes.append(
            f"ZeRO stage {stage} partitions over fewer ranks than measured ({after} < {before}): "
            "memory per device rises and this config may not fit; measure it at this size first"
        )
    return out, notes


def _param(config: dict[str, Any], *path: str) -> Any:
    node: Any = config
    for key in path:
        if not isinstance(node, dict) or key not in node:
            return None
        node = node[key]
    return node


def hf_training_args(config: dict[str, Any], config_path: str, point: Point | None = None) -> dict[str, Any]:
    """The TrainingArguments that match `config` (Trainer checks each of these against it).

    The knobs Trainer has an argument for (tuner.knobs `hf_argument`: the micro-batch, checkpointing) take
    the trial's values; without the point, the config's.
    """
    args: dict[str, Any] = {
        "deepspeed": config_path,
        "per_device_train_batch_size": int(config["train_micro_batch_size_per_gpu"]),
        "gradient_accumulation_steps": int(config["gradient_accumulation_steps"]),
        "gradient_checkpointing": "activation_checkpointing" in config,
        "bf16": bool(_param(config, "bf16", "enabled")),
        "fp16": bool(_param(config, "fp16", "enabled")),
    }
    for k in MAIN:
        if point is not None and k.hf_argument:
            args[k.hf_argument] = getattr(point, k.name)
    params = _param(config, "optimizer", "params") or {}
    if "lr" in params:
        args["learning_rate"] = params["lr"]
    betas = params.get("betas")
    if isinstance(betas, (list, tuple)) and len(betas) == 2:
        args["adam_beta1"], args["adam_beta2"] = betas
    if "eps" in params:
        args["adam_epsilon"] = params["eps"]
    if "weight_decay" in params:
        args["weight_decay"] = params["weight_decay"]
    if "gradient_clipping" in config:
        args["max_grad_norm"] = config["gradient_clipping"]
    return args


def hf_config(config: dict[str, Any], world_size: int) -> tuple[dict[str, Any], list[str]]:
    """`config` (for `world_size` ranks) as Trainer and Accelerate take it: concrete values; the learning-rate
    schedule is Trainer's; under Ulysses the batch as Trainer checks it (see `hf_parallel`)."""
    out = copy.deepcopy(config)
    notes = []
    if out.pop("scheduler", None) is not None:
        notes.append(
            "the DeepSpeed scheduler section is left out: Trainer's lr_scheduler_type and warmup_steps set the "
            "schedule (a schedule does not change throughput or memory)"
        )
    if "activation_checkpointing" in out:
        notes.append("gradient_checkpointing=True makes Trainer enable activation checkpointing in the model")
    if sizes(parallel_values(out))[1] > 1:
        # transformers' HfTrainerDeepSpeedConfig.trainer_config_process checks train_batch_size against
        # world_size x per-device batch x accumulation over all ranks; Accelerate's _prepare_deepspeed then sets
        # it to micro x accumulation x ParallelismConfig.data_parallel_size, DeepSpeed's world under Ulysses.
        out["train_batch_size"] = int(out["train_micro_batch_size_per_gpu"]) * int(
            out["gradient_accumulation_steps"]
        ) * world_size  # fmt: skip
    return out, notes


def _ranks_note(tp: int, world_size: int) -> str:
    dp = world_size // tp
    return (
        f"feed the {tp} consecutive ranks of each tensor-parallel group the same batches: shard the data over the "
        f"{dp} data-parallel ranks only (data-parallel rank = rank // {tp}; e.g. DistributedSampler(dataset, "
        f"num_replicas={dp}, rank=rank // {tp})); DeepSpeed compares the first batch across the group and stops "
        "with 'Data inconsistency within the TP group' otherwise (runtime/engine.py)"
    )


def script_parallel(
    values: dict[str, Any], world_size: int, micro: int, sequence_length: int | None, attention: str | None
) -> list[str]:
    """What a DeepSpeed-launched training script must do itself for tensor or sequence parallelism.

    AutoTP needs only the config (deepspeed.initialize shards the model) and consistent data; Ulysses needs
    the script to register its attention with transformers, pass the returned mpu to deepspeed.initialize and
    shard each batch along the sequence (deepspeed/runtime/sequence_parallel/ulysses_sp.py, DeepSpeed 0.19).
    """
    tp, sp = sizes(values)
    notes = []
    if tp > 1:
        notes.append(
            f"tensor_parallel_size {tp} (AutoTP): hand deepspeed.initialize the whole model, which it shards over "
            f"each tensor-parallel group; {_ranks_note(tp, world_size)}"
        )
    if sp > 1:
        length = (
            f"seq_length={sequence_length}, seq_length_is_variable=False"
            if sequence_length
            else "seq_length_is_variable=True"
        )
        attn = repr(attention or "sdpa")
        notes.append(
            f"sequence_parallel_size {sp} (Ulysses): build the model with attn_implementation={attn} (sdpa or flash "
            "attention; Ulysses refuses eager), then before deepspeed.initialize register it: mpu = "
            "UlyssesSPAttentionHF.register_with_transformers(model_name_or_path=model, "
            f"core_attn_implementation={attn}, sequence_parallel_size={sp}, micro_batch_size={micro}, {length}) "
            "(from deepspeed.runtime.sequence_parallel.ulysses_sp), and pass mpu=mpu to deepspeed.initialize; wrap "
            "the DataLoader (sharded over all ranks, as usual) in UlyssesSPDataLoaderAdapter(dl, "
            "sp_rank=mpu.get_sequence_parallel_rank(), sp_group=mpu.get_sequence_parallel_group(), "
            "sp_world_size=mpu.get_sequence_parallel_world_size(), device=engine.device) with position_ids in "
            "every batch: each rank then gets its sequence shard of input_ids, position_ids and shift_labels; "
            "compute the loss from shift_labels and average it over the sequence-parallel group, weighted by each "
            "rank's tokens that count (labels != -100)"
        )
    return notes


def hf_parallel(
    values: dict[str, Any], world_size: int, sequence_length: int | None, attention: str | None
) -> tuple[dict[str, Any] | None, list[str]]:
    """What Trainer and Accelerate need for tensor or sequence parallelism: Accelerate's ParallelismConfig
    arguments (None when none is needed) and notes.

    Read in transformers 5.24 and accelerate 1.15: Trainer hands a config with tensor_parallel.autotp_size to
    deepspeed.tp_model_init (transformers/integrations/deepspeed.py deepspeed_init), and Accelerate builds a
    "tp" device mesh from it before preparing the DataLoader, whose shards then follow the data-parallel rank
    (accelerate/accelerator.py _prepare_deepspeed, data_loader.py prepare_data_loader). Ulysses comes from
    TrainingArguments(parallelism_config=ParallelismConfig(sp_backend="deepspeed", ...)): Accelerate registers
    the attention, passes its mpu to deepspeed.initialize and wraps the DataLoader in
    UlyssesSPDataLoaderAdapter; Trainer averages the loss over the sequence-parallel group
    (deepspeed_sp_compute_loss).
    """
    tp, sp = sizes(values)
    notes = []
    if tp > 1:
        notes.append(
            f"tensor_parallel.autotp_size {tp}: Trainer shards the model with deepspeed.tp_model_init from this "
            "config and Accelerate feeds each tensor-parallel group the same batches (transformers 5.24, "
            "accelerate 1.15); no TrainingArguments to add. A script of your own that prepares its DataLoader "
            f"apart from Accelerate must {_ranks_note(tp, world_size)}"
        )
    if sp == 1:
        return None, notes
    attn = attention or "sdpa"
    handler = {
        "sp_seq_length": sequence_length,
        "sp_seq_length_is_variable": sequence_length is None,
        "sp_attn_implementation": attn,
    }
    parallelism = {"sp_backend": "deepspeed", "sp_size": sp, "dp_shard_size": world_size // sp, "sp_handler": handler}
    notes.append(
        f"sequence_parallel_size {sp} (Ulysses): add TrainingArguments(parallelism_config="
        f"{parallelism_config_code(parallelism)}) (both classes from accelerate.utils, accelerate 1.12 or later; an "
        "object, so it is not in the .training_args.json: the provenance's hf_parallelism_config holds its "
        "arguments); Accelerate then registers Ulysses, passes its mpu to deepspeed.initialize and "
        "wraps the DataLoader in UlyssesSPDataLoaderAdapter, and Trainer averages the loss over the "
        f"sequence-parallel ranks. Build the model with attn_implementation={attn!r} and put position_ids in every "
        "batch (the data collator): the adapter refuses batches without them. train_batch_size is written as "
        f"Trainer checks it (micro x accumulation x all {world_size} ranks); Accelerate sets it to micro x "
        f"accumulation x dp_shard_size {world_size // sp} before deepspeed.initialize, as DeepSpeed counts it"
    )
    return parallelism, notes


def parallelism_config_code(kwargs: dict[str, Any]) -> str:
    """Accelerate's ParallelismConfig for Trainer's `parallelism_config` argument (Ulysses), as one expression;
    both classes come from accelerate.utils."""
    handler = ", ".join(f"{key}={value!r}" for key, value in kwargs["sp_handler"].items())
    rest = "".join(f"{key}={value!r}, " for key, value in kwargs.items() if key != "sp_handler")
    return f"ParallelismConfig({rest}sp_handler=DeepSpeedSequenceParallelConfig({handler}))"


def training_args_code(args: dict[str, Any]) -> str:
    """The TrainingArguments call to paste into a training script."""
    lines = [f"    {key}={value!r}," for key, value in args.items()]
    return "TrainingArguments(\n    output_dir='out',\n" + "\n".join(lines) + "\n)"


def lora_config_code(kwargs: dict[str, Any]) -> str:
    """The peft wrapping to paste before Trainer (or deepspeed.initialize): the trials' LoRA adapters."""
    lines = [f"    {key}={value!r}," for key, value in kwargs.items()]
    head = "from peft import LoraConfig, get_peft_model\n\nmodel = get_peft_model(model, LoraConfig(\n"
    return head + "\n".join(lines) + "\n))"
