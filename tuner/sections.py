"""The sections of a search-space file (pydantic models): model, data, training, hardware, space, search, trial.

`space:` is generated from the knob registry (tuner.knobs): one list per knob, with the element type, the
allowed values and the default list its declaration gives. tuner.space assembles the sections into `Space`
and reads the file.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    ValidationInfo,
    create_model,
    field_validator,
    model_validator,
)

from tuner.knobs import BY_NAME, COMM, KNOBS, Knob


def _as_list(value: Any) -> list[Any]:
    """Accept a scalar as a one-element list; reject empty lists."""
    if not isinstance(value, list):
        value = [value]
    if not value:
        raise ValueError("must list at least one value")
    return value


def _path_or_mapping(value: Any) -> Any:
    if value is not None and not isinstance(value, (str, dict)):
        raise ValueError("must be a path or a mapping")
    return value


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class PeftSection(_Section):
    """Parameter-efficient fine-tuning with the peft library: the base model frozen, adapters trained."""

    method: Literal["lora"] = Field("lora", description="lora (LoRA, Hu et al. 2021): the only method for now.")
    r: PositiveInt = Field(8, description="The adapters' rank (peft's LoraConfig r).")
    alpha: PositiveInt = Field(8, description="The scaling numerator (lora_alpha): updates scale by alpha / r.")
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="Dropout on the adapters' input (lora_dropout).")
    target_modules: list[str] | Literal["all-linear"] | None = Field(
        None,
        description="Module names (or name suffixes) to adapt, e.g. [q_proj, v_proj]; all-linear; default: "
        "peft's default for the architecture. Each must match a module of the model.",
    )

    @field_validator("target_modules")
    @classmethod
    def _some_modules(cls, value: list[str] | str | None) -> list[str] | str | None:
        if isinstance(value, list):
            if not value:
                raise ValueError("must list at least one module name")
            if len(set(value)) < len(value):
                raise ValueError("lists a module name twice")
        return value


def _flash_installed(value: str | None) -> str | None:
    """flash_attention_2 needs the flash_attn package (and a GPU); say so now rather than in every trial."""
    import importlib.util

    if value == "flash_attention_2" and importlib.util.find_spec("flash_attn") is None:
        raise ValueError("flash_attention_2 needs the flash_attn package, which is not installed; use sdpa or eager")
    return value


class ModelSection(_Section):
    config: str | dict[str, Any] = Field(
        description="A local folder or config.json path, or an inline mapping with model_type and its fields."
    )
    attn_implementation: Literal["sdpa", "eager", "flash_attention_2"] | None = Field(
        None, description="transformers' attention implementation; default: transformers' own (sdpa where supported)."
    )
    peft: PeftSection | None = Field(
        None, description="Train adapters on a frozen base (peft) instead of every weight."
    )

    _config = field_validator("config", mode="before")(_path_or_mapping)
    _flash = field_validator("attn_implementation")(_flash_installed)

    def options(self) -> dict[str, Any]:
        """What the workload builds besides the architecture (attention kernel, adapters): JSON for the ranks."""
        out: dict[str, Any] = {}
        if self.attn_implementation is not None:
            out["attn_implementation"] = self.attn_implementation
        if self.peft is not None:
            out["peft"] = self.peft.model_dump(mode="json")
        return out


class WorkloadSection(_Section):
    """The user's own training script, run unchanged under the trial's ranks (tuner.workload.script)."""

    script: str = Field(description="The training script, relative to the space file; run under torchrun.")
    args: list[str] = Field(
        default_factory=list,
        description="Its arguments; {placeholders} are filled in per trial, each as one argument (no shell).",
    )
    env: dict[str, str] = Field(default_factory=dict, description="Environment variables for its ranks.")

    @field_validator("args", mode="before")
    @classmethod
    def _args_are_text(cls, value: Any) -> Any:
        if isinstance(value, list):  # YAML reads 8 and true as numbers and booleans: they are arguments
            return [str(v).lower() if isinstance(v, bool) else str(v) for v in value]
        return value

    @field_validator("args")
    @classmethod
    def _placeholders(cls, value: list[str]) -> list[str]:
        from tuner.workload.script import args_problem

        problem = args_problem(value)
        if problem:
            raise ValueError(problem)
        return value


TOKEN_FILES = (".bin", ".npy")  # one stream of token ids; the other sources hold documents


def _source_kind(info: ValidationInfo) -> str:
    """synthetic, tokens (a .bin/.npy stream) or documents (JSONL, Parquet, a datasets folder), by its name."""
    source = str(info.data.get("source", "synthetic"))
    return "synthetic" if source == "synthetic" else "tokens" if source.lower().endswith(TOKEN_FILES) else "documents"


class DataSection(_Section):
    """Where a trial's tokens come from. Every source gives the same shapes, so the plan does not change."""

    sequence_length: PositiveInt | list[PositiveInt] | None = Field(
        None,
        description="Tokens per sample (required for the built-in workload; for a script, tokens/s needs it); "
        "a list searches each length as a knob (training.keep_fixed says what stays fixed).",
    )

    @field_validator("sequence_length")
    @classmethod
    def _lengths(cls, value: int | list[int] | None) -> int | list[int] | None:
        if isinstance(value, list):
            if not value:
                raise ValueError("must list at least one length")
            if len(set(value)) != len(value):
                raise ValueError("a length is listed twice")
            return value[0] if len(value) == 1 else sorted(value)
        return value

    @property
    def lengths(self) -> list[int]:
        """Every length the space trains at (none for a script that states none)."""
        value = self.sequence_length
        return [] if value is None else list(value) if isinstance(value, list) else [value]

    @property
    def fixed_length(self) -> int | None:
        """The one length when the space does not search it."""
        return self.sequence_length if isinstance(self.sequence_length, int) else None

    source: str = Field(
        "synthetic",
        min_length=1,
        description="synthetic (random token ids), or a local dataset, relative to the space file: a token file "
        "(.bin, .npy), a JSONL or Parquet file of token ids or text, or a folder datasets' save_to_disk wrote. "
        "Nothing is downloaded.",
    )
    tokenizer: str | None = Field(
        None, description="A local tokenizer folder or tokenizer.json, for text (transformers' AutoTokenizer, offline)."
    )
    packing: bool = Field(
        True,
        description="true: documents joined with an EOS between them and cut into sequence_length windows; false: "
        "one sample per document, truncated and padded to sequence_length (labels -100 on padding). Same shapes.",
    )
    field: str | None = Field(None, description="The column to read: default input_ids when present, else text.")
    dtype: Literal["uint16", "uint32"] | None = Field(
        None, description=".bin token files: uint16 (GPT-2, nanoGPT; the default) or uint32; .npy carries its own."
    )

    @property
    def synthetic(self) -> bool:
        return self.source == "synthetic"

    @field_validator("tokenizer", "field")
    @classmethod
    def _documents_only(cls, value: str | None, info: ValidationInfo) -> str | None:
        kind = _source_kind(info)
        if value is not None and kind != "documents":
            held = "random token ids" if kind == "synthetic" else "token ids already"
            raise ValueError(f"applies to JSONL, Parquet or datasets sources only: data.source holds {held}")
        return value

    @field_validator("packing")
    @classmethod
    def _padding_needs_documents(cls, value: bool, info: ValidationInfo) -> bool:
        kind = _source_kind(info)
        if not value and kind != "documents":
            held = "random token ids" if kind == "synthetic" else "one stream of token ids, always packed"
            raise ValueError(f"false (one sample per document) needs documents: data.source holds {held}")
        return value

    @field_validator("dtype")
    @classmethod
    def _bin_only(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is not None and not str(info.data.get("source", "")).lower().endswith(".bin"):
            raise ValueError("applies to .bin token files only (.npy files carry their dtype)")
        return value


class TrainingSection(_Section):
    global_batch_size: PositiveInt = Field(
        description="Samples per optimizer step, fixed across the space (at the shortest data.sequence_length)."
    )
    keep_fixed: Literal["samples", "tokens"] = Field(
        "samples",
        description="With several data.sequence_length: samples keeps global_batch_size samples at every length; "
        "tokens keeps its tokens at the shortest length (fewer samples at longer ones).",
    )
    precision: Literal["bf16", "fp16", "fp32"] = "bf16"
    base_config: str | dict[str, Any] | None = Field(
        None, description="The rest of the DeepSpeed config (optimizer, scheduler, ...): a path or a mapping."
    )

    _base = field_validator("base_config", mode="before")(_path_or_mapping)


class HardwareSection(_Section):
    gpus_per_trial: PositiveInt = Field(1, description="Ranks per trial; CPU processes over gloo without GPUs.")
    nodes_per_trial: PositiveInt = Field(
        1,
        description="Ray nodes one trial's ranks span (gpus_per_trial / nodes_per_trial on each), to measure "
        "a configuration with inter-node communication; needs a Ray cluster (--address).",
    )
    ray_resources: dict[str, PositiveFloat] = Field(
        default_factory=dict,
        description="Extra Ray resources a trial holds on each of its nodes, to steer trials to a node type "
        "(a custom resource given to `ray start --resources`).",
    )
    device_memory_gb: PositiveFloat | None = Field(
        None,
        description="Memory budget per device in GB of 2**30 bytes (GiB, as torch and nvidia-smi count; a card "
        "sold as 80 GB may hold less than 80 of these): default the GPU's size, none on CPU. On a GPU it caps "
        "PyTorch's allocator at the budget less the CUDA context and NCCL buffers; points over it are pruned.",
    )
    host_memory_gb: PositiveFloat | None = Field(
        None, description="Host memory per node for offloaded states; offload points over it are pruned."
    )
    cpus_per_rank: PositiveInt | None = Field(
        None,
        description="CPU cores a trial holds per rank and each rank's OpenMP threads (CPU-Adam for offload runs "
        "on them); default on GPUs: the node's CPUs per GPU; on one CPU machine a trial holds all its cores.",
    )
    accelerator: Literal["auto", "cuda", "cpu"] = Field("auto", description="auto: cuda when a GPU is visible.")
    peak_tflops: PositiveFloat | None = Field(
        None, description="Peak TFLOP/s of one device at the training precision, for MFU (default: the GPU table)."
    )
    price_per_device_hour: PositiveFloat | None = Field(
        None,
        description="USD per device-hour (the cloud's price of one GPU): gives every trial usd_per_million_tokens "
        "and makes it an objective.",
    )
    price_per_node_hour: PositiveFloat | None = Field(
        None, description="USD per node-hour on top of the devices' price, per node a trial spans (nodes_per_trial)."
    )

    @field_validator("nodes_per_trial")
    @classmethod
    def _nodes_divide_ranks(cls, value: int, info: ValidationInfo) -> int:
        ranks = info.data.get("gpus_per_trial")
        if ranks is not None and ranks % value:
            raise ValueError(f"must divide gpus_per_trial ({ranks}): each node runs the same number of ranks")
        return value

    @field_validator("ray_resources")
    @classmethod
    def _custom_resources_only(cls, value: dict[str, float]) -> dict[str, float]:
        for name in value:
            if name.upper() in ("CPU", "GPU", "MEMORY", "OBJECT_STORE_MEMORY"):
                raise ValueError(
                    f"{name!r} is Ray's own (gpus_per_trial and cpus_per_rank set CPU and GPU); only custom "
                    "resource names are allowed"
                )
        return value

    @property
    def ranks_per_node(self) -> int:
        return self.gpus_per_trial // self.nodes_per_trial

    @property
    def usd_per_hour(self) -> float | None:
        """What one trial's devices and nodes cost an hour (tuner.cost), or None when no price is given."""
        from tuner.cost import hourly_price

        return hourly_price(
            self.price_per_device_hour, self.price_per_node_hour, self.gpus_per_trial, self.nodes_per_trial
        )


def _knob_field(k: Knob) -> tuple[Any, Any]:
    """The pydantic field of a knob's list: its element type from the declaration, its default list."""
    element: Any
    if k.choices is not None:
        element = Literal[k.choices]
    elif k.kind is int:
        element = (
            PositiveInt if k.minimum == 1 else NonNegativeInt if k.minimum == 0 else Annotated[int, Field(ge=k.minimum)]
        )
    else:
        element = k.kind
    if k.default is None and k.phase == "main":
        return list[element], Field(description=k.help)  # required
    default = list(k.default) if k.default is not None else None
    annotation = list[element] if default is not None else list[element] | None
    return annotation, Field(default, description=k.help)


class _SpaceBase(_Section):
    """Each knob of tuner.knobs as a list of values to search (a single value is a one-element list)."""

    @field_validator("*", mode="before")
    @classmethod
    def _lists(cls, value: Any, info: ValidationInfo) -> Any:
        k = BY_NAME[str(info.field_name)]
        if value is None and k.phase == "comm":
            return None
        value = _as_list(value)
        is_bool = [isinstance(item, bool) for item in value]
        if k.kind is bool and not all(is_bool):
            raise ValueError("must be true or false (or a list of them)")
        if k.kind is int and any(is_bool):
            raise ValueError("must be integers, not true/false")
        return value

    @field_validator("*", mode="after")
    @classmethod
    def _unique(cls, value: list[Any] | None) -> list[Any] | None:
        items = value or []
        for index, item in enumerate(items):
            if item in items[:index]:
                raise ValueError(f"value {item!r} is listed twice")
        return value

    def values_of(self, name: str) -> list[Any]:
        """The listed values of knob `name` (its neutral value alone when a communication knob is unset)."""
        values = getattr(self, name)
        return list(values) if values is not None else [BY_NAME[name].neutral]

    def comm_lists(self) -> dict[str, list[Any]]:
        """The communication knobs the space lists, by name, in the registry's order."""
        return {k.name: list(values) for k in COMM if (values := getattr(self, k.name)) is not None}


SpaceSection = create_model(  # type: ignore[call-overload]
    "SpaceSection", __base__=_SpaceBase, **{k.name: _knob_field(k) for k in KNOBS if k.section == "space"}
)


ObjectiveName = Literal["tokens_per_s", "samples_per_s", "step_time_s", "peak_mem_gb", "usd_per_million_tokens"]
# Cost ranks like step time within a study (a fixed price and device count: cost is proportional to 1/throughput).
SPEED_OBJECTIVES = ("tokens_per_s", "samples_per_s", "step_time_s", "usd_per_million_tokens")


def _default_sampler(data: Any) -> Any:
    """guided for one speed objective (its rules are about speed); Optuna's TPE for a Pareto front or memory."""
    if isinstance(data, dict) and data.get("sampler") is None:
        objective = data.get("objective", "tokens_per_s")
        several = isinstance(objective, list) and len(objective) > 1
        speed = (objective[0] if isinstance(objective, list) and objective else objective) in SPEED_OBJECTIVES
        data = {**data, "sampler": "tpe" if several or not speed else "guided"}
    return data


class SearchSection(_Section):
    sampler: Literal["grid", "random", "tpe", "guided"] = Field(
        "guided", description="Default: guided for one speed objective, tpe for a list of objectives or memory."
    )
    max_trials: PositiveInt | None = Field(None, description="Most trials to launch; default: every valid point.")
    objective: ObjectiveName | list[ObjectiveName] = Field(
        "tokens_per_s", description="One figure, or a list for a Pareto front, e.g. [tokens_per_s, peak_mem_gb]."
    )
    seed: int = 0

    _sampler_default = model_validator(mode="before")(_default_sampler)

    @field_validator("objective")
    @classmethod
    def _objectives(cls, value: str | list[str], info: ValidationInfo) -> str | list[str]:
        names = [value] if isinstance(value, str) else list(value)
        if not names:
            raise ValueError("must name at least one objective")
        for index, name in enumerate(names):
            if name in names[:index]:
                raise ValueError(f"objective {name!r} is listed twice")
        if info.data.get("sampler") == "guided" and (len(names) > 1 or names[0] not in SPEED_OBJECTIVES):
            raise ValueError(
                "the guided sampler needs one speed objective: tokens_per_s, samples_per_s, step_time_s or "
                "usd_per_million_tokens "
                "(for a list of objectives use tpe, random or grid)"
            )
        return names[0] if len(names) == 1 else names

    @property
    def objectives(self) -> tuple[str, ...]:
        """The objectives in order; the first one ranks trials where a single best is needed."""
        return (self.objective,) if isinstance(self.objective, str) else tuple(self.objective)

    early_stop: bool | None = Field(
        None,
        description="Stop a trial once every step it timed (at least 2) is slower than the best trial's step "
        "time by early_stop_margin; it is recorded COMPLETE with stopped_early. Default: on, off for grid; "
        "only with one speed objective.",
    )
    early_stop_margin: PositiveFloat = Field(
        0.25, description="How much slower than the best counts as clearly slower."
    )

    @field_validator("early_stop")
    @classmethod
    def _early_stop_needs_speed(cls, value: bool | None, info: ValidationInfo) -> bool | None:
        objective = info.data.get("objective")
        speed = isinstance(objective, str) and objective in SPEED_OBJECTIVES
        if value and not speed:
            raise ValueError(
                "needs one speed objective: a slower trial can still be on a Pareto front or win on memory"
            )
        return value

    @property
    def stops_early(self) -> bool:
        """Whether clearly slower trials stop early: as set, else on for every sampler but grid (ground truth)."""
        speed = isinstance(self.objective, str) and self.objective in SPEED_OBJECTIVES
        return speed and (self.early_stop if self.early_stop is not None else self.sampler != "grid")

    remeasure_within: float = Field(
        0.10,
        ge=0.0,
        le=1.0,
        description="guided: before stopping, measure once more the points (at most 3) within this fraction of "
        "the best, and rank points by their mean; one measurement varied by up to 23% between runs on a shared "
        "2-core machine (benchmarks/results). 0 turns it off.",
    )

    prune: bool = Field(True, description="Skip points the memory model predicts not to fit (recorded as PRUNED).")
    prune_margin: float | None = Field(
        None,
        ge=0.0,
        le=1.0,
        description="Prune only when the predicted peak exceeds the budget by this fraction (default: 0.10 on "
        "GPUs, 0.20 on CPU, where the calibrated model's error reached 19% in benchmarks/results).",
    )


class TrialSection(_Section):
    """How long a trial measures, and when it gives up."""

    warmup_steps: int = Field(
        2, ge=0, description="Most untimed steps: the first one, then any while step times still fall (0: none)."
    )
    measure_steps: PositiveInt = Field(3, description="Timed optimizer steps (at least).")
    max_cv: PositiveFloat = Field(
        0.05, description="Half-width of the median step time's 95% interval, relative, above which more are timed."
    )
    max_measure_steps: PositiveInt | None = Field(
        None, description="Most timed steps while the interval stays wide (default 15, or 3 x measure_steps); noisy."
    )
    step_timing: Literal["auto", "whole", "composed"] = Field(
        "auto",
        description="whole: time every micro-step of a step; composed: time the first, 3 middle and the boundary "
        "micro-step and compose the step; auto: composed from 16 accumulation micro-steps per step.",
    )
    timeout_s: PositiveFloat = Field(600.0, description="Wall-clock limit of one trial, all ranks.")

    @field_validator("max_measure_steps")
    @classmethod
    def _cap_covers_target(cls, value: int | None, info: ValidationInfo) -> int | None:
        target = info.data.get("measure_steps")
        if value is not None and target is not None and value < target:
            raise ValueError(f"must be at least measure_steps ({target})")
        return value

    @property
    def measure_cap(self) -> int:
        """The most steps a noisy trial measures."""
        return self.max_measure_steps or max(15, 3 * self.measure_steps)
