"""What one rank holds of a model split by DeepSpeed's AutoTP or Ulysses (pure), for tuner.estimate.

Read from DeepSpeed 0.19.8 and transformers 5.24 (paths under site-packages) and checked on 2 gloo CPU ranks
(tests/integration/test_split_ranks.py):
- AutoTP training takes the model's Hugging Face tp_plan where it has one (deepspeed/runtime/engine.py:1055
  `_get_hf_tp_plan`, converted by module_inject/tp_plan_converter.py): Llama's shards q, k, v, gate and up
  by output columns and o and down by input rows (transformers/models/llama/configuration_llama.py:48), so
  every weight matrix of a block is split over tp ranks. Column-parallel layers split their bias too
  (module_inject/layers.py:1025), row-parallel ones keep it whole (layers.py:907); norms stay whole.
- The output projection: an untied lm_head is `colwise_gather_output` (modeling_llama.py:414), split over
  the vocabulary with its logits gathered whole on every rank; the input embedding stays whole. A tied one
  (transformers/distributed/mixin.py:94 adds `embed_tokens: embedding_rowwise` to every plan) makes
  DeepSpeed shard the shared weight by vocabulary and keep the logits split, with a vocabulary-parallel loss
  (engine.py:1122-1126 `has_tied_vocab_head`, layers.py:1083 VocabParallelLinear, :1099 VocabParallelEmbedding).
- Models without a plan go through AutoTP's name heuristics; GPT-2 is refused outright
  (module_inject/auto_tp.py:293 `unsupported`), so GPT-2 style c_attn/c_proj/c_fc are never sharded in training.
- ZeRO partitions over the data-parallel group: AutoTP builds a (dp, tp) mesh (utils/groups.py:202
  `_init_tp_mesh_device`, ranks / tp), and the ZeRO optimizers take `seq_data_parallel_group`
  (engine.py:2164, 2626, 2683, 2768), which under Ulysses is sp x dp = all ranks
  (runtime/sequence_parallel/parallel_state_sp.py:42, utils/groups.py:911). So ZeRO's group is ranks / tp.
- Ulysses (runtime/sequence_parallel/ulysses_sp.py): each rank holds seq / sp tokens outside attention; the
  all-to-all (:194, :222) hands attention all the sequence for heads / sp, replicating key-value heads when
  sp exceeds them (:131-138), so the attention's q, k, v and output hold as many elements as seq / sp tokens
  of all heads, except the replicated key-value heads. Parameters are not split.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tuner.estimate import ModelShape


def block_matrices(shape: ModelShape) -> int:
    """One block's weight matrices AutoTP splits: q and o (h x h), k and v (h x h x kv/heads), the MLP's
    two (or, gated, three) h x intermediate. Assumes head_dim = hidden / heads; never more than the block."""
    h, i = shape.hidden_size, shape.intermediate_size
    attention = 2 * h * h + 2 * h * (h * shape.num_kv_heads // shape.num_heads)
    mlp = (3 if shape.gated_mlp else 2) * h * i
    return min(attention + mlp, shape.block_parameters)


def output_tied(shape: ModelShape) -> bool:
    """Whether the output projection shares the input embedding's weight (model_facts counts it in matmul)."""
    return shape.matmul_parameters - (shape.num_parameters - shape.embedding_parameters) >= shape.vocab_size


def tp_sharded_parameters(shape: ModelShape) -> int:
    """Parameters AutoTP splits over the tensor-parallel ranks: every block's matrices and the output
    projection (an untied lm_head, or the tied embedding it shares)."""
    return shape.num_layers * block_matrices(shape) + shape.vocab_size * shape.hidden_size


def tp_parameters(shape: ModelShape, tp: int) -> int:
    """Parameters one rank holds under tensor_parallel_size `tp`: the split ones / tp, the rest whole."""
    if tp == 1:
        return shape.num_parameters
    sharded = tp_sharded_parameters(shape)
    return shape.num_parameters - sharded + -(-sharded // tp)


def tp_largest_layer(shape: ModelShape, tp: int) -> int:
    """The largest module's own parameters on one rank (ZeRO-3 gathers it whole): a whole untied input
    embedding, or the largest split layer / tp."""
    if tp == 1:
        return shape.largest_layer_parameters
    split = -(-shape.largest_layer_parameters // tp)
    whole_embedding = 0 if output_tied(shape) else shape.vocab_size * shape.hidden_size
    return max(split, min(whole_embedding, shape.largest_layer_parameters))


def ulysses_kv_heads(shape: ModelShape, sp: int) -> int:
    """Key-value heads attention sees, summed over the sp ranks: sp when Ulysses replicates them (sp > kv)."""
    return max(shape.num_kv_heads, sp) if sp > 1 else shape.num_kv_heads


def all_to_all_bytes(shape: ModelShape, seq: int, micro: int, act_bytes: int, sp: int) -> float:
    """Ulysses' exchange buffers for one layer, alive around its attention: a contiguous send copy and the
    received copy of q, k, v (before) and of the output (after), each the size of seq / sp tokens."""
    if sp == 1:
        return 0.0
    tokens = float(seq) / sp * micro
    h = float(shape.hidden_size)
    kv = h * ulysses_kv_heads(shape, sp) / shape.num_heads
    return 2 * tokens * (2 * h + 2 * kv) * act_bytes
