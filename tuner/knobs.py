"""The knobs a search tunes, each declared once (pure).

A declaration says all the rest of the tool needs about a knob: its YAML key (also its Optuna parameter),
type, allowed values and default list, its short label in tables (`mb8 z3 opt=cpu ckpt`), which ZeRO stages
read it and what else it needs of the point and the rank count, how it writes the ds_config (or the
workload), whether the main search or the communication phase tunes it, and the orderings the search rules
read (tuner.orders): `memory` (which value needs more device memory when nothing else changes) and `work`
(which value adds work to a step). Points, the space schema, labels, the results and report columns and
families, guided, the out-of-memory evidence, calibration families, the communication phase, export and
`--format hf` read these declarations instead of naming knobs. A new knob is one entry in KNOBS, plus its
term in the memory model (tuner.estimate reads knob values through one typed accessor).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from tuner.parallel import Context, sp_problem, tp_problem

Phase = Literal["main", "comm"]
Memory = Literal["more", "less", "same", "learned", "none"]  # the larger value needs ... device memory
Work = Literal["adds", "more", "same", "zero_stage", "none"]  # the larger value ... work to a step
Writer = Callable[[dict[str, Any], Any, str], None]  # (ds_config, value, accelerator)
Rule = Callable[[Any, Mapping[str, Any], Context], "str | None"]  # (value, the point's values, context)


def _zero(config: dict[str, Any]) -> dict[str, Any]:
    zero = config.setdefault("zero_optimization", {})
    assert isinstance(zero, dict), "zero_optimization is a section"
    return zero


def _zero_key(key: str) -> Writer:
    def write(config: dict[str, Any], value: Any, accelerator: str) -> None:
        _zero(config)[key] = value

    return write


def _offload(key: str) -> Writer:
    def write(config: dict[str, Any], value: Any, accelerator: str) -> None:
        if value != "none":  # pinned host memory speeds up GPU<->CPU copies; it means nothing on CPU
            _zero(config)[key] = {"device": value, "pin_memory": accelerator == "cuda"}

    return write


def _micro(config: dict[str, Any], value: Any, accelerator: str) -> None:
    config["train_micro_batch_size_per_gpu"] = value  # accumulation and the global batch: tuner.dsconfig


def _checkpointing(config: dict[str, Any], value: Any, accelerator: str) -> None:
    # DeepSpeed's section configures deepspeed.checkpointing; the model must still turn recomputation on
    # (transformers: model.gradient_checkpointing_enable()), which the workload does for trials.
    if value:
        section = config.setdefault("activation_checkpointing", {})
        section.update({"partition_activations": False, "contiguous_memory_optimization": False})
    else:
        config.pop("activation_checkpointing", None)


def _divides_ranks(value: Any, values: Mapping[str, Any], ctx: Context) -> str | None:
    if ctx.ranks % value:
        return f"zero_hpz_partition_size {value} does not divide the {ctx.ranks} ranks"
    return None


def _tensor_parallel(config: dict[str, Any], value: Any, accelerator: str) -> None:
    if value > 1:  # DeepSpeed's AutoTP training: the model handed over whole, its linear layers sharded
        config.setdefault("tensor_parallel", {})["autotp_size"] = value
    else:
        config.pop("tensor_parallel", None)


def _sequence_parallel(config: dict[str, Any], value: Any, accelerator: str) -> None:
    if value > 1:  # Ulysses: the engine learns it from the mpu the workload registers; kept for the export
        config["sequence_parallel_size"] = value
    else:
        config.pop("sequence_parallel_size", None)


def _workload_only(config: dict[str, Any], value: Any, accelerator: str) -> None:
    """Knobs the workload applies (the model's code, the data): nothing in the ds_config."""


@dataclass(frozen=True)
class Knob:
    """One tuned setting: everything the points, the search rules, the store and export need to know."""

    name: str
    kind: type  # int, bool or str
    help: str
    write: Writer
    phase: Phase = "main"
    choices: tuple[Any, ...] | None = None  # allowed values; None: integers from `minimum`
    minimum: int = 1
    default: tuple[Any, ...] | None = None  # the list when the YAML leaves the knob out; None: not searched
    neutral: Any = None  # the value that changes nothing (no label, the value outside `stages`)
    short: str = ""  # the label's prefix: mb8, z3, opt=cpu; a bool's label is `short` when true
    always: bool = False  # labelled even at its neutral value (z0)
    stages: tuple[int, ...] = (0, 1, 2, 3)  # ZeRO stages whose DeepSpeed code reads it
    rule: Rule | None = None  # what the value needs of the other knobs, the ranks and the model (tuner.parallel)
    section: str = "space"  # where the YAML lists it: space, or data (data.sequence_length as a list)
    optional: bool = False  # a main knob a point leaves out at its neutral value (old stores stay readable)
    paths: tuple[tuple[str, ...], ...] = ()  # the ds_config keys it replaces (a base config's are dropped)
    memory: Memory = "none"
    work: Work = "none"
    device_only: bool = False  # moves work or memory off the device: nothing moves on a CPU-only machine
    code_path: bool = False  # picks another DeepSpeed code path: a family of its own for calibration
    scale: bool = False  # the axis along which throughput rises until memory runs out (guided's families)
    cpu_kernel: bool = True  # False: DeepSpeed's CPU accelerator has no kernel for a non-neutral value
    workload_note: str = ""  # what the production job must do itself when the knob is on (export says so)
    hf_argument: str | None = None  # the Hugging Face TrainingArguments field that must match it

    def label(self, value: Any) -> str:
        """The short label of `value` in a point's name; empty where the value changes nothing."""
        if self.kind is int and isinstance(value, float) and value.is_integer():
            value = int(value)  # a table column with a gap holds floats
        if self.phase == "comm":
            return f"{self.name}={str(value).lower() if isinstance(value, bool) else value}"
        if self.kind is bool:
            return self.short if value else ""
        if value == self.neutral and not self.always:
            return ""
        return f"{self.short}{value}"


KNOBS: tuple[Knob, ...] = (
    Knob(
        "micro_batch_size", int, "Samples per rank per micro-step; accumulation keeps the global batch.",
        _micro, default=None, short="mb", always=True, memory="more", work="same", scale=True,
        paths=(("train_micro_batch_size_per_gpu",),),
        hf_argument="per_device_train_batch_size",
    ),
    Knob(
        "zero_stage", int, "ZeRO stage: 0 data parallel, 1 optimizer states, 2 + gradients, 3 + parameters.",
        _zero_key("stage"), choices=(0, 1, 2, 3), default=(0, 1, 2, 3), neutral=0, short="z", always=True,
        paths=(("zero_optimization", "stage"),), memory="learned", work="zero_stage", code_path=True,
    ),
    Knob(
        "offload_optimizer", str, "Optimizer states and their step on the CPU (ZeRO-Offload); ZeRO 1+.",
        _offload("offload_optimizer"), choices=("none", "cpu"), default=("none",), neutral="none", short="opt=",
        stages=(1, 2, 3), paths=(("zero_optimization", "offload_optimizer"),), memory="same", work="adds",
        device_only=True, code_path=True,
    ),
    Knob(
        "offload_param", str, "Parameters on the CPU between uses (ZeRO-Infinity); ZeRO 3.",
        _offload("offload_param"), choices=("none", "cpu"), default=("none",), neutral="none", short="param=",
        stages=(3,), paths=(("zero_optimization", "offload_param"),), memory="same", work="adds", device_only=True,
        code_path=True,
    ),
    Knob(
        "activation_checkpointing", bool, "Recompute each layer's activations in the backward pass.",
        _checkpointing, choices=(False, True), default=(False,), neutral=False, short="ckpt", memory="less",
        work="adds", hf_argument="gradient_checkpointing",
        workload_note="Enable activation checkpointing in the model (transformers: "
        "model.gradient_checkpointing_enable())",
    ),
    Knob(
        "tensor_parallel_size", int, "AutoTP: ranks each layer's linear layers are sharded over (within a node).",
        _tensor_parallel, default=(1,), neutral=1, short="tp", paths=(("tensor_parallel", "autotp_size"),),
        rule=tp_problem, optional=True, memory="less", work="more", code_path=True,
    ),
    Knob(
        "sequence_parallel_size", int, "Ulysses: ranks each sample's sequence is split over (HF models, sdpa).",
        _sequence_parallel, default=(1,), neutral=1, short="sp", paths=(("sequence_parallel_size",),),
        rule=sp_problem, optional=True, memory="less", work="more", code_path=True,
    ),
    Knob(
        "tiled_mlp", bool, "DeepSpeed's TiledMLP: each layer's MLP computed in sequence tiles (long sequences).",
        _workload_only, choices=(False, True), default=(False,), neutral=False, short="tmlp", optional=True,
        memory="less", work="adds",
        workload_note="Tile the MLP: DeepSpeed's TiledMLP (deepspeed/runtime/sequence_parallel/ulysses_sp.py) in "
        "the model's MLP forward",
    ),
    Knob(
        "tiled_logits", bool, "DeepSpeed's TiledFusedLogitsLoss: logits and loss computed in sequence tiles.",
        _workload_only, choices=(False, True), default=(False,), neutral=False, short="tlog", optional=True,
        memory="less", work="adds",
        workload_note="Compute logits and loss in tiles: DeepSpeed's TiledFusedLogitsLoss over the final hidden "
        "states",
    ),
    Knob(
        "sequence_length", int, "Tokens per sample, searched when data.sequence_length lists several.",
        _workload_only, short="s", always=True, section="data", optional=True, memory="more", work="same",
    ),
    # The communication phase: searched one knob at a time at the best main point (tuner.comm); unset means
    # DeepSpeed's default or the base config's value. Stages: which ZeRO code reads it (deepspeed/runtime/zero).
    Knob("overlap_comm", bool, "Overlap gradient reduction with the backward pass.", _zero_key("overlap_comm"),
         phase="comm", choices=(False, True), stages=(1, 2, 3)),
    Knob("contiguous_gradients", bool, "Copy gradients into one contiguous buffer as they are produced.",
         _zero_key("contiguous_gradients"), phase="comm", choices=(False, True), stages=(1, 2, 3)),
    Knob("reduce_bucket_size", int, "Elements reduced at a time.", _zero_key("reduce_bucket_size"),
         phase="comm", stages=(1, 2, 3)),
    Knob("allgather_bucket_size", int, "Elements all-gathered at a time (ZeRO 1-2).",
         _zero_key("allgather_bucket_size"), phase="comm", stages=(1, 2)),
    Knob("stage3_prefetch_bucket_size", int, "Parameter elements ZeRO-3 prefetches ahead of use.",
         _zero_key("stage3_prefetch_bucket_size"), phase="comm", stages=(3,)),
    Knob("stage3_param_persistence_threshold", int, "Parameters this small stay whole on every rank.",
         _zero_key("stage3_param_persistence_threshold"), phase="comm", minimum=0, stages=(3,)),
    # ZeRO++ (DeepSpeed's ZeRO++ tutorial): quantized weight all-gathers (qwZ), quantized gradient
    # reduce-scatter (qgZ), and a secondary copy of the parameters partitioned within groups of
    # zero_hpz_partition_size ranks (hpZ, a node's GPUs), so the forward's all-gathers stay in the node.
    Knob("zero_quantized_weights", bool, "qwZ: all-gather ZeRO-3 weights in int8.",
         _zero_key("zero_quantized_weights"), phase="comm", choices=(False, True), neutral=False,
         stages=(3,), cpu_kernel=False),
    Knob("zero_quantized_gradients", bool, "qgZ: reduce-scatter gradients in int4 (all-to-all).",
         _zero_key("zero_quantized_gradients"), phase="comm", choices=(False, True), neutral=False,
         stages=(3,), cpu_kernel=False),
    Knob("zero_hpz_partition_size", int, "hpZ: ranks per secondary parameter partition (1: off).",
         _zero_key("zero_hpz_partition_size"), phase="comm", neutral=1, stages=(3,), rule=_divides_ranks),
)  # fmt: skip

BY_NAME: dict[str, Knob] = {knob.name: knob for knob in KNOBS}
# DeepSpeed's zero_optimization sections the offload knobs write; the optimizer's decides which Adam runs
OFFLOAD_SECTIONS: tuple[str, ...] = tuple(path[-1] for k in KNOBS if k.device_only for path in k.paths)
OPTIMIZER_OFFLOAD: str = "offload_optimizer"
MAIN: tuple[Knob, ...] = tuple(k for k in KNOBS if k.phase == "main")
COMM: tuple[Knob, ...] = tuple(k for k in KNOBS if k.phase == "comm")
MAIN_NAMES: tuple[str, ...] = tuple(k.name for k in MAIN)
COMM_NAMES: tuple[str, ...] = tuple(k.name for k in COMM)
SCALE: Knob = next(k for k in MAIN if k.scale)


def knob(name: str) -> Knob:
    """The declaration of `name` (KeyError for a name that is not a knob)."""
    return BY_NAME[name]


def stage_problem(name: str, value: Any, stage: int) -> str | None:
    """Why a non-neutral `value` of knob `name` cannot be used at ZeRO `stage`, or None."""
    k = BY_NAME[name]
    if stage in k.stages or value == k.neutral:
        return None
    if len(k.stages) == 1:
        return f"{name} needs zero_stage {k.stages[0]}"
    if k.stages[-1] == 3:
        return f"{name} needs zero_stage {k.stages[0]} or higher"
    return f"{name} needs zero_stage {' or '.join(map(str, k.stages))}"


def invalid_reason(values: Mapping[str, Any], ctx: Context) -> str | None:
    """Why a point with these knob values can never run in `ctx` (the batch aside), or None."""
    stage = int(values.get("zero_stage", 0))
    # the narrowest rule first: parameter offload (ZeRO 3 only) is named before optimizer offload (ZeRO 1+)
    for name, value in sorted(values.items(), key=lambda kv: len(BY_NAME[kv[0]].stages)):
        k = BY_NAME[name]
        problem = stage_problem(name, value, stage) or (k.rule(value, values, ctx) if k.rule else None)
        if problem:
            return problem
    return None


def family_key(values: Mapping[str, Any]) -> tuple[Any, ...]:
    """The main knobs but the scale (micro-batch): a family's throughput rises with the scale knob."""
    return tuple(values.get(k.name, k.neutral) for k in MAIN if not k.scale)


def code_path_key(values: Mapping[str, Any]) -> tuple[Any, ...]:
    """The knobs that pick DeepSpeed's code path (ZeRO stage, offload): calibration's families."""
    return tuple(values.get(k.name, k.neutral) for k in MAIN if k.code_path)


def family_label(values: Mapping[str, Any]) -> str:
    """A family in words for plots: `z3 opt=cpu ckpt`."""
    return " ".join(text for k in MAIN if not k.scale and k.name in values and (text := k.label(values[k.name])))


def unsupported_on(values: Mapping[str, Any], accelerator: str) -> list[str]:
    """The knobs set to a value DeepSpeed has no kernel for on `accelerator` (cpu), as `name=value`."""
    if accelerator != "cpu":
        return []
    return [
        f"{name}={str(value).lower()}"
        for name, value in values.items()
        if not BY_NAME[name].cpu_kernel and value != BY_NAME[name].neutral
    ]
