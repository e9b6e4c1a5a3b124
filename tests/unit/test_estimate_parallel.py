"""The memory model under tensor parallelism, Ulysses, TiledMLP and tiled logits: worked by hand, against
DeepSpeed's own estimators, and against what autograd keeps for a TiledMLP model. (What AutoTP and Ulysses
really leave on 2 gloo ranks: tests/integration/test_split_ranks.py.)
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import pytest
import torch

from tests.unit.test_activations import CONFIGS, saved_bytes
from tests.unit.test_estimate import GPT2_SMALL, gpu
from tuner.activations import Split, activation_bytes, layer_activation_bytes, logits_bytes, mlp_tile_bytes
from tuner.estimate import MemoryKnobs, estimate, model_states
from tuner.estimate_parallel import all_to_all_bytes, output_tied, tp_largest_layer, tp_parameters
from tuner.parallel import logits_tile_shards, mlp_tile_shards
from tuner.points import Point
from tuner.workload.hf_causal_lm import model_shape

LLAMA3_8B: dict[str, Any] = {
    "model_type": "llama", "hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32,
    "num_attention_heads": 32, "num_key_value_heads": 8, "vocab_size": 128256, "rope_theta": 500000.0,
    "max_position_embeddings": 131072,
}  # fmt: skip
FLASH_LLAMA = dataclasses.replace(
    GPT2_SMALL, hidden_size=2048, intermediate_size=8192, num_heads=32, num_kv_heads=8, gated_mlp=True,
    mlp_saved=4, norm_fp32=True, attention="sdpa", attention_dropout=False, hidden_dropout=False,
)  # fmt: skip


@pytest.fixture(scope="module")
def llama8b() -> Any:
    return model_shape(LLAMA3_8B)


def test_autotp_splits_every_block_matrix_and_the_output_projection(llama8b: Any) -> None:
    """Llama 3 8B by hand: per block q, o 4096^2, k, v 4096 x 1024, MLP 3 x 4096 x 14336; the untied lm_head
    4096 x 128256 split by vocabulary; the embedding, the norms whole."""
    block = 2 * 4096**2 + 2 * 4096 * 1024 + 3 * 4096 * 14336
    head = 128256 * 4096
    assert llama8b.num_parameters == 8_030_261_248 and not output_tied(llama8b)
    whole = llama8b.num_parameters - 32 * block - head  # embedding, 65 norms
    assert whole == 128256 * 4096 + 65 * 4096
    for tp in (1, 2, 4, 8):
        assert tp_parameters(llama8b, tp) == whole + (32 * block + head) // tp
    assert tp_parameters(llama8b, 8) == 1_463_685_120
    assert tp_largest_layer(llama8b, 8) == head  # the input embedding stays whole


def test_a_tied_embedding_is_split_with_its_output_projection() -> None:
    shape = model_shape({**CONFIGS["llama GQA"], "tie_word_embeddings": True})
    assert output_tied(shape)
    sharded = 2 * (2 * 256 * 256 + 2 * 256 * 64 + 3 * 256 * 688) + 4096 * 256  # 2 blocks, the shared embedding
    assert tp_parameters(shape, 2) == shape.num_parameters - sharded // 2 == 1_217_792  # what AutoTP left (probe)
    assert tp_largest_layer(shape, 2) == 4096 * 256 // 2


@pytest.mark.parametrize("tp", [2, 4, 8])
@pytest.mark.parametrize("ranks", [8, 16])
@pytest.mark.parametrize("offload", [False, True])
def test_zero2_under_tp_equals_deepspeeds_estimator_on_a_ranks_shard(
    llama8b: Any, tp: int, ranks: int, offload: bool
) -> None:
    """ZeRO partitions a rank's tensor-parallel shard over the ranks / tp of its data-parallel group."""
    from deepspeed.runtime.zero.stage_1_and_2 import estimate_zero2_model_states_mem_needs

    shard = tp_parameters(llama8b, tp)
    _, ds_device = estimate_zero2_model_states_mem_needs(shard, num_gpus_per_node=ranks // tp, cpu_offload=offload)
    est = estimate(llama8b, Point(1, 2, "cpu" if offload else "none", tensor_parallel_size=tp), gpu(ranks))
    assert est.model_state_bytes == pytest.approx(ds_device, abs=1)


@pytest.mark.parametrize("tp", [2, 8])
def test_zero3_under_tp_equals_deepspeeds_estimator_on_a_ranks_shard(llama8b: Any, tp: int) -> None:
    from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs

    shard, largest = tp_parameters(llama8b, tp), tp_largest_layer(llama8b, tp)
    _, ds_device, _ = estimate_zero3_model_states_mem_needs(
        shard, largest, num_gpus_per_node=16 // tp, cpu_offload=False, cpu_offload_params=False
    )
    est = estimate(llama8b, Point(1, 3, tensor_parallel_size=tp), gpu(16))
    assert est.model_state_bytes == pytest.approx(ds_device, abs=1)


def test_ulysses_splits_no_parameter_and_zero_keeps_all_ranks(llama8b: Any) -> None:
    """Ulysses' ZeRO group is sequence x data: all ranks, as without it."""
    for stage in (1, 2, 3):
        plain = estimate(llama8b, Point(1, stage), gpu(8))
        ulysses = estimate(llama8b, Point(1, stage, sequence_parallel_size=4), gpu(8))
        assert ulysses.model_state_bytes == plain.model_state_bytes
    knobs = MemoryKnobs.of(Point(1, 2, tensor_parallel_size=2))
    states = model_states(tp_parameters(llama8b, 2), 0, knobs, gpu(4))
    assert estimate(llama8b, Point(1, 2, tensor_parallel_size=2), gpu(8)).model_state_bytes == sum(
        states.device.values()
    )


@pytest.mark.parametrize("t", [1, 2, 4, 8])
def test_activations_under_tp_are_korthikantis_formula(t: int) -> None:
    """Eager attention, a fused GeLU, 1-byte dropout masks: s*b*h*(10 + 24/t + 5*a*s/(h*t)) (section 4.2.1)."""
    s, b, h, a = 1024, 4, 768, 12
    per_layer = layer_activation_bytes(GPT2_SMALL, s, b, 2, "cuda", split=Split(tp=t))
    assert per_layer == pytest.approx(s * b * h * (10 + 24 / t + 5 * a * s / (h * t)))


@pytest.mark.parametrize("sp", [2, 4, 8])
def test_ulysses_divides_activations_by_sp_while_key_value_heads_go_round(sp: int) -> None:
    """With sp <= the 8 key-value heads a rank keeps exactly a seq / sp layer; past them the key-value heads
    are replicated (each rank one head of the whole sequence)."""
    seq, b = 32768, 1
    assert layer_activation_bytes(FLASH_LLAMA, seq, b, 2, "cuda", split=Split(sp=sp)) == layer_activation_bytes(
        FLASH_LLAMA, seq // sp, b, 2, "cuda"
    )
    over = dataclasses.replace(FLASH_LLAMA, num_kv_heads=1)
    extra = 2 * (seq // sp) * b * 2048 * (sp - 1) / 32 * 2  # k and v: sp heads of 64 where 1 would do
    assert layer_activation_bytes(over, seq, b, 2, "cuda", split=Split(sp=sp)) == pytest.approx(
        layer_activation_bytes(over, seq // sp, b, 2, "cuda") + extra
    )
    # one layer's exchange: send and receive copies of q, k, v and the output, seq / sp tokens each
    assert all_to_all_bytes(FLASH_LLAMA, seq, b, 2, sp) == 2 * (seq // sp) * (2 * 2048 + 2 * 512) * 2
    assert all_to_all_bytes(FLASH_LLAMA, seq, b, 2, 1) == 0


def test_tiled_mlp_keeps_one_tile_of_the_mlp() -> None:
    """32k tokens, hidden 2048: 16 tiles of 2048 tokens; the layers keep none of the MLP's 4 intermediates."""
    seq, b = 32768, 1
    assert mlp_tile_shards(seq, 2048) == 16 and mlp_tile_shards(100, 2048) == 1
    tile = mlp_tile_bytes(FLASH_LLAMA, seq, b, 2, Split(tiled_mlp=True))
    assert tile == 4 * 2048 * 8192 * 2
    whole = activation_bytes(FLASH_LLAMA, seq, b, 2, False)
    tiled = activation_bytes(FLASH_LLAMA, seq, b, 2, False, split=Split(tiled_mlp=True))
    assert whole - tiled == pytest.approx(12 * 4 * seq * 8192 * 2 - tile)
    under_sp = mlp_tile_bytes(FLASH_LLAMA, seq, b, 2, Split(sp=4, tiled_mlp=True))
    assert under_sp == tile  # a rank's 8192 tokens in 4 tiles of 2048


def test_tiled_logits_keep_one_tile_and_the_hidden_states_gradient(llama8b: Any) -> None:
    seq, b, vocab = 32768, 1, 128256
    whole = logits_bytes(llama8b, seq, b, 2)
    assert whole == seq * vocab * (4 + 4 + 2)
    shards = logits_tile_shards(b, seq, vocab)
    assert shards == math.ceil(seq * vocab * 4 / 2**30) == 16  # about 1 GiB of fp32 logits each
    tiled = logits_bytes(llama8b, seq, b, 2, Split(tiled_logits=True))
    assert tiled == (seq // 16) * vocab * 10 + seq * 4096 * 2
    assert logits_bytes(llama8b, seq, b, 2, Split(sp=8)) == whole / 8
    assert logits_bytes(llama8b, seq, b, 2, Split(tp=8)) == whole  # an untied head gathers the logits whole


def test_tied_logits_stay_split_by_vocabulary_under_tp() -> None:
    tied = model_shape({**CONFIGS["llama GQA"], "tie_word_embeddings": True})
    assert logits_bytes(tied, 128, 4, 2, Split(tp=2)) == logits_bytes(tied, 128, 4, 2) / 2


def test_a_points_own_sequence_length_replaces_the_setups(llama8b: Any) -> None:
    knobs = MemoryKnobs.of(Point(1, 3, sequence_length=8192, tiled_mlp=True, sequence_parallel_size=2))
    assert (knobs.sequence_length, knobs.sequence_parallel, knobs.tiled_mlp) == (8192, 2, True)
    assert knobs.tensor_parallel == 1 and not knobs.tiled_logits
    own = estimate(llama8b, Point(1, 3, sequence_length=8192), gpu(8))
    fixed = estimate(llama8b, Point(1, 3), dataclasses.replace(gpu(8), sequence_length=8192))
    assert own.parts == fixed.parts and own.flops_per_token == fixed.flops_per_token
    assert estimate(llama8b, Point(1, 3, sequence_length=2048), gpu(8)).device_bytes < own.device_bytes


def test_each_split_lowers_the_32k_peak_of_llama_8b(llama8b: Any) -> None:
    setup = dataclasses.replace(gpu(8), sequence_length=32768)
    base = estimate(llama8b, Point(1, 2, activation_checkpointing=True), setup).device_bytes
    splits = ({"tensor_parallel_size": 8}, {"sequence_parallel_size": 8}, {"tiled_mlp": True}, {"tiled_logits": True})
    for knob in splits:
        assert estimate(llama8b, Point(1, 2, activation_checkpointing=True, **knob), setup).device_bytes < base, knob


def test_tiled_mlp_saves_only_its_input_in_a_real_llama(monkeypatch: pytest.MonkeyPatch) -> None:
    """DeepSpeed's TiledMLP patched into transformers' LlamaMLP, tiles from tuner.parallel: autograd keeps
    what the model predicts (less the tile alive in the backward pass, which the forward's hook cannot see)."""
    from deepspeed.runtime.sequence_parallel.ulysses_sp import TiledMLP
    from transformers.models.llama import modeling_llama

    def tiled_forward(self: Any, x: torch.Tensor) -> torch.Tensor:
        def mlp(module: Any, part: torch.Tensor) -> torch.Tensor:
            return module.down_proj(module.act_fn(module.gate_proj(part)) * module.up_proj(part))

        params = [self.gate_proj.weight, self.up_proj.weight, self.down_proj.weight]
        return TiledMLP.apply(mlp, self, x, mlp_tile_shards(x.shape[-2], x.shape[-1]), params)

    monkeypatch.setattr(modeling_llama.LlamaMLP, "forward", tiled_forward)
    config = CONFIGS["llama GQA"]
    shape = model_shape(config)
    seq, micro = 512, 2  # hidden 256: 2 tiles
    split = Split(tiled_mlp=True)
    predicted = activation_bytes(shape, seq, micro, 2, False, "cpu", split) + seq * micro * shape.vocab_size * 4
    predicted -= mlp_tile_bytes(shape, seq, micro, 2, split)  # alive only in the backward pass
    measured = saved_bytes(config, seq, micro, checkpointing=False)
    assert predicted == pytest.approx(measured, rel=0.03), f"{predicted / measured - 1:+.1%}"
