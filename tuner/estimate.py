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
- Buffers: DeepSpeed's gradient bucket (reduce_bucket_size, twice with overlap_comm) and, for stage 3,
  the prefetch bucket; allocated whole on a GPU, touched only as far as the model fills them on CPU.
- The rank's runtime: on a GPU torch.cuda.max_memory_allocated leaves out the CUDA context, so 0; on CPU
  the measured figure is the process's resident set, which holds the interpreter, torch, DeepSpeed and
  transformers (`CPU_RUNTIME_GB`, measured on this project's CPU machine; trials record their own).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from tuner.flops import flops_per_token
from tuner.points import Point

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


def attention_kernel(shape: ModelShape, accelerator: str) -> str:
    """Which attention computation runs: flash (fused), the fp32 math fallback, or eager (unfused)."""
    if shape.attention == "eager":
        return "eager"
    if shape.attention == "sdpa" and shape.attention_dropout and accelerator == "cpu":
        return "math"  # PyTorch's CPU flash kernel has no dropout: SDPA falls back to fp32 math
    return "flash"


def layer_activation_bytes(
    shape: ModelShape, seq: int, micro: int, act_bytes: int, accelerator: str, first: bool = False
) -> float:
    """One transformer layer's saved activations for one micro-batch, tensor by tensor.

    Korthikanti et al.'s terms, with the sizes transformers' implementations keep (counted with
    torch.autograd.graph.saved_tensors_hooks, tests/unit/test_activations.py): norms keep their input (and
    an fp32 copy where RMSNorm upcasts); the QKV, output and first MLP projections their inputs; attention
    q, k, v and, fused, its output and log-sum-exp, or unfused the s x s scores; the MLP `mlp_saved`
    (s, b, intermediate) tensors; dropout one mask per element (1 byte on a GPU, the activation's dtype on CPU).
    A frozen base with adapters keeps only what its adapters need (module docstring).
    """
    s, b, h, p = float(seq), float(micro), float(shape.hidden_size), float(act_bytes)
    i, a = float(shape.intermediate_size), float(shape.num_heads)
    sbh = s * b * h
    sb_kv = s * b * h * shape.num_kv_heads / shape.num_heads
    mask = 1.0 if accelerator == "cuda" else p
    lora = shape.adapters
    # an RMSNorm's 16-bit input is kept for its weight's gradient; LayerNorm keeps its input either way
    norm = (0.0 if lora and shape.norm_fp32 else sbh * p) + (sbh * 4 if shape.norm_fp32 else 0.0)
    # QKV projection, output projection, first MLP projection(s); of a frozen base only the adapted ones
    linear_inputs = (len(set(lora.inputs) - {"down"}) if lora else 3) * sbh * p
    adapters = (lora.rank_outputs * s * b * p + lora.dropout_inputs * s * b * (p + 1.0)) if lora else 0.0
    kernel = attention_kernel(shape, accelerator)
    scores = a * s * s * b
    if kernel == "flash":
        attention = (sbh + 2 * sb_kv) * p + sbh * p + a * s * b * 4  # q, k, v; output; fp32 log-sum-exp
    elif kernel == "math":
        attention = (sbh + 2 * sb_kv) * 4 + 3 * scores * 4  # fp32 q, k, v; softmax, dropout mask and output
    else:
        dropout = scores * (mask + p) if shape.attention_dropout else 0.0
        attention = (sbh + 2 * sb_kv) * p + scores * p + dropout  # Korthikanti's 5as^2b with dropout
    mlp_saved = shape.mlp_saved - (1 if lora and "down" not in lora.inputs else 0)  # the down projection's input
    mlp = mlp_saved * s * b * i * p
    residual_masks = 2 * sbh * mask if shape.hidden_dropout else 0.0
    if first and lora:
        # the first layer's input needs no gradient (the embedding is frozen): its first norm keeps nothing, nor
        # does its attention when no adapter feeds q, k or v
        return norm + linear_inputs + (attention if "attention_input" in lora.inputs else 0.0) + mlp + adapters
    return 2 * norm + linear_inputs + attention + mlp + residual_masks + adapters


def activation_bytes(
    shape: ModelShape, seq: int, micro: int, act_bytes: int, checkpointing: bool, accelerator: str = "cuda"
) -> float:
    """All layers' saved activations; with full checkpointing, layer inputs plus one layer being recomputed."""
    layer = layer_activation_bytes(shape, seq, micro, act_bytes, accelerator)
    sbh = float(seq) * micro * shape.hidden_size * act_bytes
    frozen_rms = shape.adapters is not None and shape.norm_fp32  # its 16-bit input kept only for a trained weight
    final_norm = (0.0 if frozen_rms else sbh) + (float(seq) * micro * shape.hidden_size * 4 if shape.norm_fp32 else 0.0)
    mask = 1 if accelerator == "cuda" else act_bytes
    embedding_mask = float(seq) * micro * shape.hidden_size * mask if shape.hidden_dropout else 0.0
    outside = final_norm + embedding_mask
    if checkpointing:
        return shape.num_layers * sbh + layer + outside
    if shape.adapters:  # the first layer of a frozen base keeps less (layer_activation_bytes)
        first = layer_activation_bytes(shape, seq, micro, act_bytes, accelerator, first=True)
        return first + (shape.num_layers - 1) * layer + outside
    return shape.num_layers * layer + outside


def logits_bytes(shape: ModelShape, seq: int, micro: int, act_bytes: int) -> float:
    """The loss's peak over s x b x vocab: in the forward pass the logits, their fp32 upcast and the saved
    fp32 log-softmax (2 + 4 + 4 bytes in 16 bits); in the backward pass the saved log-softmax, its fp32
    gradient and the logits' gradient (4 + 4 + 4 in fp32, 4 + 4 + 2 in 16 bits)."""
    return float(seq) * micro * shape.vocab_size * (4 + 4 + act_bytes)


def buffer_bytes(shape: ModelShape, knobs: MemoryKnobs, setup: Setup) -> float:
    """DeepSpeed's communication buffers, whole on a GPU, on CPU only as far as the model fills them.

    Stage 0 flattens gradients into all-reduce buckets of up to allreduce_bucket_size elements; stages 1
    and 2 allocate a contiguous gradient bucket of reduce_bucket_size elements (a second one with
    overlap_comm); stage 3 its reduce bucket and the parameters it prefetches (prefetch_bucket_size). Gradient
    buckets fill only with trainable parameters' gradients.
    """
    n, t, p, bk = shape.num_parameters, shape.trainable_parameters, setup.param_bytes, setup.buckets

    def bucket(elements: int, filled_by: int) -> float:
        return float(elements if setup.accelerator == "cuda" else min(elements, filled_by)) * p

    if knobs.zero_stage == 0:
        return float(min(bk.allreduce_bucket_size, t)) * p if setup.ranks > 1 else 0.0
    if knobs.zero_stage in (1, 2):
        return bucket(bk.reduce_bucket_size, t) * (2 if bk.overlap_comm else 1)
    return bucket(bk.reduce_bucket_size, t) + bucket(bk.prefetch_bucket_size, n)


def build_bytes(shape: ModelShape, knobs: MemoryKnobs, setup: Setup) -> float:
    """Memory of the model as built before DeepSpeed casts and partitions it.

    On CPU every rank builds the fp32 model in its own memory (under zero.Init for stage 3: its fp32
    partition plus the layer being built). On a GPU the model is built on the host and DeepSpeed moves
    the cast 16-bit model onto the device whole, except under zero.Init.
    """
    n = float(shape.num_parameters)
    partitioned = knobs.zero_stage == 3 and setup.zero_init
    if setup.accelerator == "cpu":
        return 4 * n / setup.ranks + 4 * shape.largest_layer_parameters if partitioned else 4 * n
    return 0.0 if partitioned else setup.param_bytes * n


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
    """The predicted peak for one point. On CPU the device is host memory: offloaded states stay in the rank."""
    knobs = MemoryKnobs.of(point)
    setup = _with_point_buckets(setup, knobs)
    lora = shape.adapters
    states = model_states(
        shape.num_parameters, shape.largest_layer_parameters, knobs, setup,
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
    seq, micro = setup.sequence_length, knobs.micro_batch_size
    parts["activations"] = activation_bytes(shape, seq, micro, act, knobs.checkpointing, setup.accelerator)
    parts["logits"] = logits_bytes(shape, seq, micro, act)
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
