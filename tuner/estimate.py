"""Memory model (pure): predicted peak memory per device for a point, from the architecture alone.

Sources, so each term can be checked:
- Model states (Rajbhandari et al. 2020, ZeRO, section 3, and DeepSpeed's own accounting): mixed
  precision Adam keeps 2-byte parameters and gradients plus 12 bytes of fp32 master weights and moments per
  parameter; fp32 training 4 + 4 + 8. DeepSpeed's ZeRO optimizers also keep an fp32 gradient partition
  (4 bytes per partitioned parameter), which is why `estimate_zero2_model_states_mem_needs` reads
  2 + 18/G bytes and `estimate_zero3_model_states_mem_needs` 18/G + 4 x the largest layer; the figures
  here equal those for the same options (tests/unit/test_estimate.py). Stage 0 with 16-bit parameters
  runs DeepSpeed's fp16/bf16 optimizer wrapper (fp32 master weights and an fp32 gradient copy, unpartitioned);
  stage 1 keeps the 16-bit gradients whole and partitions the rest.
- Offload (ZeRO-Offload, Ren et al. 2021): optimizer offload moves master weights, moments and fp32
  gradients to host memory; parameter offload (stage 3) moves the 16-bit partition too. Host figures
  follow DeepSpeed's estimators: the larger of loading the model (4 bytes per parameter per rank, or only
  the largest layer under zero.Init) and the offloaded states, times its 1.5 buffer factor.
- ZeRO++ (Wang et al. 2023): hpZ keeps a secondary copy of the 16-bit parameters partitioned within groups
  of zero_hpz_partition_size ranks, p x N / hpz bytes more per rank; qwZ gathers a layer in int8 (its
  parameter count in bytes) before dequantizing it. qgZ's 4-bit gradient buffers are not counted (a bucket
  in 4 bits).
- Activations per layer (Korthikanti et al. 2022, "Reducing Activation Recomputation", section 4.1):
  s*b*h*(34 + 5*a*s/h) bytes for a GPT layer in 16 bits, written out term by term below so that gated MLPs
  (Llama), grouped-query attention, unfused activation functions (GPT-2's gelu_new keeps 4 tensors where
  a fused GeLU keeps 1), fp32 RMSNorm copies and dropout-free models follow. Fused or flash attention
  (PyTorch SDPA, the default in transformers) keeps no s*s matrix: the 5*a*s/h term drops to the output
  and a log-sum-exp. Full checkpointing keeps each layer's input (s*b*h) plus one layer's activations
  while it is recomputed.
- A frozen base with LoRA adapters (Hu et al. 2021, peft): the base keeps only its weights, in the
  training precision (2 bytes bf16/fp16, 4 fp32; whole at stages 0-2, partitioned at stage 3); gradients,
  fp32 gradient copies, master weights and moments exist only for the trainable (adapter) parameters and
  partition by stage as above; DeepSpeed's buckets fill only with trainable gradients. A frozen linear
  layer keeps no input for a weight gradient and a frozen RMSNorm only its fp32 copy, so a layer keeps
  the inputs of its adapted linear layers only, plus lora_A's s*b*r outputs and, with LoRA dropout, each
  adapted layer's dropped input copy and mask (tuner/workload/adapters.py; checked against autograd's
  saved tensors). The first layer's input, which needs no gradient at all, is counted like the others.
- Logits and loss: s*b*vocab in the model's precision, its fp32 upcast and saved log-softmax
  (transformers' loss), and their gradients during backward.
- Tensor parallelism (DeepSpeed AutoTP; which layers it splits: tuner.estimate_parallel): the split layers'
  parameters, gradients and optimizer states / tp, ZeRO over ranks / tp. Activations as Korthikanti et
  al. section 4.2.1 give them for tensor parallelism without sequence parallelism, s*b*h*(10 + 24/t +
  5*a*s/(h*t)): the norms, the dropout masks and the inputs of the QKV and first MLP projections stay
  whole on every rank; attention (q, k, v, scores, output), the output projection's input and the MLP's
  intermediate tensors are split. An untied lm_head gathers whole logits; a tied one keeps them split.
- Ulysses sequence parallelism: every activation on seq / sp tokens (attention's all-sequence, heads / sp
  tensors hold as many elements, but key-value heads are replicated when sp exceeds them), plus one layer's
  all-to-all buffers; parameters whole, ZeRO over all ranks (its sequence x data group).
- TiledMLP (deepspeed/runtime/sequence_parallel/ulysses_sp.py:955): the forward runs under no_grad and saves
  only the MLP's input (:1013, :1017); the backward recomputes one tile at a time, so of the MLP's
  intermediate tensors one tile of ceil(seq / hidden) (tuner.parallel.mlp_tile_shards) is alive at once.
- Tiled logits (TiledFusedLogitsLoss, ulysses_sp.py:1079): logits and loss computed and back-propagated in
  tiles inside the forward pass: one tile's logits (tuner.parallel.logits_tile_shards) plus the hidden
  states' gradient (:1173) instead of all the logits.
- Buffers: DeepSpeed's gradient bucket (reduce_bucket_size, twice with overlap_comm) and, for stage 3,
  the prefetch bucket; allocated whole on a GPU, touched only as far as the model fills them on CPU.
- The rank's runtime: on a GPU torch.cuda.max_memory_allocated leaves out the CUDA context, so 0; on CPU
  the measured figure is the process's resident set, which holds the interpreter, torch, DeepSpeed and
  transformers (`CPU_RUNTIME_GB`, measured on this project's CPU machine; trials record their own).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from tuner.activations import Split, activation_bytes, attention_kernel, layer_activation_bytes, logits_bytes
from tuner.estimate_parallel import all_to_all_bytes, tp_largest_layer, tp_parameters
from tuner.flops import flops_per_token
from tuner.points import Point

# activations live in tuner.activations; these names stay importable from here
__all__ = [
    "GB", "PARTS", "Adapters", "Buckets", "Estimate", "MemoryKnobs", "ModelShape", "ModelStates", "Setup", "Split",
    "activation_bytes", "attention_kernel", "buffer_bytes", "build_bytes", "estimate", "host_bytes",
    "layer_activation_bytes", "logits_bytes", "model_states",
]  # fmt: skip

GB = 1024**3
# A CPU rank's resident memory with a negligible model: interpreter, torch, DeepSpeed, transformers and the
# training step's own workspaces (the quick-start's 0.7M-parameter model peaked at 0.41-0.51 GB per rank)
CPU_RUNTIME_GB = 0.45
FRAGMENTATION = 0.05  # caching-allocator (GPU) or malloc (CPU) slack over live tensors
HOST_BUFFER_FACTOR = 1.5  # DeepSpeed's estimators' additional_buffer_factor for host memory
PARTS = ("runtime", "parameters", "gradients", "optimizer_states", "activations", "logits", "buffers")


@dataclass(frozen=True)
class Adapters:
    """LoRA adapters on a frozen base (peft), counted on the meta device with the adapters attached."""

    method: str  # lora
    rank: int
    trainable_parameters: int  # the adapters' parameters: the only ones with gradients and optimizer states
    largest_trainable_layer: int  # the largest module's own trainable parameters (ZeRO-3's gathered gradients)
    inputs: tuple[str, ...]  # the linear inputs adapted layers read, kept for backward (a frozen layer keeps
    # none): attention_input (q, k, v), attention_output, mlp_input (s x b x h each), down (s x b x intermediate)
    rank_outputs: int  # per layer, the adapted layers' ranks summed: lora_A's (s, b, r) outputs lora_B keeps
    dropout_inputs: int  # per layer, the adapted layers' in_features summed when LoRA dropout copies inputs
    target_modules: tuple[str, ...] = ()


@dataclass(frozen=True)
class ModelShape:
    """What the memory and FLOPs model needs to know about an architecture, counted on the meta device."""

    model_type: str
    num_parameters: int
    embedding_parameters: int
    largest_layer_parameters: int  # the largest module's own parameters (DeepSpeed's model_to_params)
    block_parameters: int  # one transformer block
    matmul_parameters: int
    num_layers: int
    hidden_size: int
    intermediate_size: int
    num_heads: int
    num_kv_heads: int
    vocab_size: int
    gated_mlp: bool
    mlp_saved: int  # (seq, batch, intermediate) tensors the MLP keeps for backward, down-projection input included
    norm_fp32: bool  # RMSNorm that upcasts keeps an fp32 copy of its input
    attention: str  # transformers' attn_implementation: sdpa, flash_attention_2, eager, ...
    attention_dropout: bool
    hidden_dropout: bool
    adapters: Adapters | None = None  # LoRA on a frozen base; None: every parameter trains

    @property
    def trainable_parameters(self) -> int:
        return self.adapters.trainable_parameters if self.adapters else self.num_parameters

    @property
    def trainable_matmul_parameters(self) -> int:
        """Parameters whose weight gradients are matrix multiplies: all matmul parameters, or the adapters."""
        return self.adapters.trainable_parameters if self.adapters else self.matmul_parameters


@dataclass(frozen=True)
class MemoryKnobs:
    """The knob values the memory model reads, typed: the one place it takes them from a point."""

    micro_batch_size: int
    zero_stage: int
    optimizer_offloaded: bool
    params_offloaded: bool
    checkpointing: bool
    hpz_partition_size: int = 1  # ZeRO++ hpZ: ranks per secondary parameter partition
    quantized_weights: bool = False  # ZeRO++ qwZ
    reduce_bucket_size: int | None = None  # the communication knobs the point sets (None: the setup's)
    prefetch_bucket_size: int | None = None
    overlap_comm: bool | None = None
    tensor_parallel: int = 1  # AutoTP's tensor_parallel_size
    sequence_parallel: int = 1  # Ulysses' sequence_parallel_size
    tiled_mlp: bool = False
    tiled_logits: bool = False
    sequence_length: int | None = None  # the point's own (data.sequence_length listed); None: the setup's

    @classmethod
    def of(cls, point: Point) -> MemoryKnobs:
        v = point.values()
        return cls(
            micro_batch_size=int(v["micro_batch_size"]),
            zero_stage=int(v["zero_stage"]),
            optimizer_offloaded=v["offload_optimizer"] != "none",
            params_offloaded=v["offload_param"] != "none",
            checkpointing=bool(v["activation_checkpointing"]),
            hpz_partition_size=int(v.get("zero_hpz_partition_size") or 1),
            quantized_weights=bool(v.get("zero_quantized_weights")),
            reduce_bucket_size=v.get("reduce_bucket_size"),
            prefetch_bucket_size=v.get("stage3_prefetch_bucket_size"),
            overlap_comm=v.get("overlap_comm"),
            tensor_parallel=int(v.get("tensor_parallel_size") or 1),
            sequence_parallel=int(v.get("sequence_parallel_size") or 1),
            tiled_mlp=bool(v.get("tiled_mlp")),
            tiled_logits=bool(v.get("tiled_logits")),
            sequence_length=v.get("sequence_length"),
        )


@dataclass(frozen=True)
class Buckets:
    """DeepSpeed's communication buffer sizes in elements (its defaults, or the base config's)."""

    reduce_bucket_size: int = 500_000_000
    allreduce_bucket_size: int = 500_000_000
    prefetch_bucket_size: int = 50_000_000
    overlap_comm: bool | None = None  # DeepSpeed's default: on for stage 3 only

    @classmethod
    def from_config(cls, ds_config: dict[str, Any]) -> Buckets:
        """The sizes a base ds_config sets, DeepSpeed's defaults for the rest."""
        zero = ds_config.get("zero_optimization") or {}
        default = cls()
        return cls(
            reduce_bucket_size=int(zero.get("reduce_bucket_size", default.reduce_bucket_size)),
            allreduce_bucket_size=int(ds_config.get("allreduce_bucket_size", default.allreduce_bucket_size)),
            prefetch_bucket_size=int(
                zero.get("stage3_prefetch_bucket_size", zero.get("prefetch_bucket_size", default.prefetch_bucket_size))
            ),
            overlap_comm=zero.get("overlap_comm"),
        )


@dataclass(frozen=True)
class Setup:
    """Everything besides the point that decides memory: job shape, precision, device kind."""

    ranks: int
    sequence_length: int
    precision: str
    accelerator: str  # "cuda" or "cpu"
    ranks_per_node: int | None = None  # default: all ranks on one node
    zero_init: bool = True  # stage 3 builds the model already partitioned (deepspeed.zero.Init)
    buckets: Buckets = field(default_factory=Buckets)
    runtime_gb: float | None = None  # default: 0 on a GPU, CPU_RUNTIME_GB on CPU

    @property
    def param_bytes(self) -> int:
        return 4 if self.precision == "fp32" else 2

    @property
    def per_node(self) -> int:
        return min(self.ranks_per_node or self.ranks, self.ranks)


@dataclass(frozen=True)
class Estimate:
    """Predicted peak bytes per device by part, host bytes per node for offload, and FLOPs per token."""

    parts: dict[str, float]
    build_bytes: float  # the model as built before DeepSpeed partitions or casts it
    fragmentation_bytes: float
    host_bytes: float
    flops_per_token: float

    @property
    def device_bytes(self) -> float:
        """The peak: the runtime plus the larger of building the model and a training step, plus slack."""
        train = sum(v for k, v in self.parts.items() if k != "runtime")
        return self.parts["runtime"] + max(train, self.build_bytes) + self.fragmentation_bytes

    @property
    def model_state_bytes(self) -> float:
        """Parameters, gradients and optimizer states on the device: what DeepSpeed's estimators report."""
        return self.parts["parameters"] + self.parts["gradients"] + self.parts["optimizer_states"]

    @property
    def device_gb(self) -> float:
        return self.device_bytes / GB

    @property
    def host_gb(self) -> float:
        return self.host_bytes / GB


@dataclass(frozen=True)
class ModelStates:
    """Bytes per rank on the device and on the host for parameters, gradients and optimizer states."""

    device: dict[str, float]
    host_per_rank: float


def model_states(
    num_params: int,
    largest_layer: int,
    knobs: MemoryKnobs,
    setup: Setup,
    trainable: int | None = None,
    largest_trainable: int | None = None,
) -> ModelStates:
    """Per-rank model states by ZeRO stage, precision and offload (see the module docstring for sources).

    `trainable` (default: all `num_params`) have gradients and optimizer states; the rest are frozen weights.
    """
    n, g, p = float(num_params), float(setup.ranks), float(setup.param_bytes)
    t = float(num_params if trainable is None else trainable)
    mixed = p < 4
    stage = knobs.zero_stage
    host = 0.0
    if stage == 0:
        # fp16/bf16 wrapper: fp32 master weights and an fp32 gradient copy at step; plain torch optimizer in fp32
        params, grads, optim = p * n, p * t + (4 * t if mixed else 0.0), 8 * t + (4 * t if mixed else 0.0)
    elif stage in (1, 2):
        # ZeRO optimizer: 16-bit gradients whole (stage 1) or partitioned (stage 2), an fp32 gradient partition
        params = p * n
        grads = (p * t if stage == 1 else p * t / g) + 4 * t / g
        optim = 12 * t / g
        if knobs.optimizer_offloaded:
            host = 4 * t / g + optim  # fp32 gradient partition, master weights and moments
            grads, optim = (p * t if stage == 1 else 0.0), 0.0
    else:
        gathered = p * largest_layer  # one gathered layer's 16-bit parameters ...
        gathered_grads = p * (largest_layer if largest_trainable is None else largest_trainable)  # ... and gradients
        params = p * n / g + gathered
        grads = 4 * t / g + gathered_grads
        optim = 12 * t / g
        if knobs.optimizer_offloaded:
            host = 4 * t / g + optim
            grads, optim = gathered_grads, 0.0
        if knobs.params_offloaded:
            host += p * n / g
            params = gathered
        if knobs.hpz_partition_size > 1:
            # hpZ keeps a secondary copy of the 16-bit parameters partitioned over its group, on the device
            params += p * n / knobs.hpz_partition_size
        if knobs.quantized_weights:
            params += 1.0 * largest_layer  # qwZ gathers a layer in int8 before it is dequantized
    return ModelStates({"parameters": params, "gradients": grads, "optimizer_states": optim}, host)


def buffer_bytes(shape: ModelShape, knobs: MemoryKnobs, setup: Setup) -> float:
    """DeepSpeed's communication buffers, whole on a GPU, on CPU only as far as the model fills them.

    Stage 0 flattens gradients into all-reduce buckets of up to allreduce_bucket_size elements; stages 1
    and 2 allocate a contiguous gradient bucket of reduce_bucket_size elements (a second one with
    overlap_comm); stage 3 its reduce bucket and the parameters it prefetches (prefetch_bucket_size). Gradient
    buckets fill only with trainable parameters' gradients, a rank's share of them under tensor parallelism.
    Ulysses adds one layer's all-to-all buffers (tuner.estimate_parallel.all_to_all_bytes).
    """
    tp = knobs.tensor_parallel
    n = tp_parameters(shape, tp)
    t = shape.trainable_parameters if shape.adapters else n
    p, bk = setup.param_bytes, setup.buckets
    seq = knobs.sequence_length or setup.sequence_length
    exchange = all_to_all_bytes(shape, seq, knobs.micro_batch_size, p, knobs.sequence_parallel)

    def bucket(elements: int, filled_by: int) -> float:
        return float(elements if setup.accelerator == "cuda" else min(elements, filled_by)) * p

    if knobs.zero_stage == 0:
        return (float(min(bk.allreduce_bucket_size, t)) * p if setup.ranks // tp > 1 else 0.0) + exchange
    if knobs.zero_stage in (1, 2):
        return bucket(bk.reduce_bucket_size, t) * (2 if bk.overlap_comm else 1) + exchange
    return bucket(bk.reduce_bucket_size, t) + bucket(bk.prefetch_bucket_size, n) + exchange


def build_bytes(shape: ModelShape, knobs: MemoryKnobs, setup: Setup) -> float:
    """Memory of the model as built before DeepSpeed casts and partitions it.

    On CPU every rank builds the fp32 model in its own memory (under zero.Init for stage 3: its fp32
    partition plus the layer being built), whole also under tensor parallelism (AutoTP splits a model
    handed over whole). On a GPU the model is built on the host and DeepSpeed moves the cast 16-bit model
    (a rank's shards under AutoTP) onto the device, except under zero.Init.
    """
    n = float(shape.num_parameters)
    partitioned = knobs.zero_stage == 3 and setup.zero_init
    if setup.accelerator == "cpu":
        return 4 * n / setup.ranks + 4 * shape.largest_layer_parameters if partitioned else 4 * n
    # AutoTP moves only a rank's shards and the whole layers onto the device (module_inject/layers.py `move`)
    return 0.0 if partitioned else setup.param_bytes * tp_parameters(shape, knobs.tensor_parallel)


def host_bytes(shape: ModelShape, knobs: MemoryKnobs, setup: Setup, offloaded_per_rank: float) -> float:
    """Host memory per node: the larger of loading the model and the offloaded states, with DeepSpeed's 1.5x."""
    partitioned = knobs.zero_stage == 3 and setup.zero_init
    load = 4.0 * (shape.largest_layer_parameters if partitioned else shape.num_parameters) * setup.per_node
    return max(load, offloaded_per_rank * setup.per_node) * HOST_BUFFER_FACTOR


def _with_point_buckets(setup: Setup, knobs: MemoryKnobs) -> Setup:
    """The setup with the point's own communication knobs (tuner.comm) in place of the base config's."""
    changes: dict[str, Any] = {}
    for field_name in ("reduce_bucket_size", "prefetch_bucket_size", "overlap_comm"):
        value = getattr(knobs, field_name)
        if value is not None:
            changes[field_name] = value
    return replace(setup, buckets=replace(setup.buckets, **changes)) if changes else setup


def estimate(shape: ModelShape, point: Point, setup: Setup) -> Estimate:
    """The predicted peak for one point. On CPU the device is host memory: offloaded states stay in the rank.

    Tensor parallelism leaves a rank its share of the parameters (tuner.estimate_parallel) and ZeRO the
    ranks / tp of its data-parallel group; Ulysses leaves ZeRO all ranks. The point's own sequence length
    (data.sequence_length listed) replaces the setup's.
    """
    knobs = MemoryKnobs.of(point)
    setup = _with_point_buckets(setup, knobs)
    lora = shape.adapters
    tp = knobs.tensor_parallel
    states = model_states(
        tp_parameters(shape, tp), tp_largest_layer(shape, tp), knobs, replace(setup, ranks=max(1, setup.ranks // tp)),
        trainable=lora.trainable_parameters if lora else None,
        largest_trainable=lora.largest_trainable_layer if lora else None,
    )  # fmt: skip
    act = setup.param_bytes  # activations in the training precision (DeepSpeed casts the model)
    parts = {"runtime": 0.0, **states.device}
    if setup.accelerator == "cpu":
        parts["runtime"] = CPU_RUNTIME_GB * GB if setup.runtime_gb is None else setup.runtime_gb * GB
        parts["optimizer_states"] += states.host_per_rank  # "offloaded" to the same memory
    elif setup.runtime_gb is not None:
        parts["runtime"] = setup.runtime_gb * GB
    seq, micro = knobs.sequence_length or setup.sequence_length, knobs.micro_batch_size
    split = Split(tp, knobs.sequence_parallel, knobs.tiled_mlp, knobs.tiled_logits)
    parts["activations"] = activation_bytes(shape, seq, micro, act, knobs.checkpointing, setup.accelerator, split)
    parts["logits"] = logits_bytes(shape, seq, micro, act, split)
    parts["buffers"] = buffer_bytes(shape, knobs, setup)
    train = sum(v for k, v in parts.items() if k != "runtime")
    built = build_bytes(shape, knobs, setup)
    flops = flops_per_token(
        shape.matmul_parameters, shape.num_layers, shape.hidden_size, seq, knobs.checkpointing,
        trainable_matmul_params=shape.trainable_matmul_parameters,
    )  # fmt: skip
    return Estimate(
        parts=parts,
        build_bytes=built,
        fragmentation_bytes=FRAGMENTATION * max(train, built),
        host_bytes=host_bytes(shape, knobs, setup, states.host_per_rank),
        flops_per_token=flops.model,
    )
