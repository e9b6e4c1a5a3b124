"""Trials overrule the memory model: what fitted keeps points, what ran out rules points out (pure)."""

from __future__ import annotations

import pytest

from tuner.estimate import Setup, estimate
from tuner.evidence import Evidence
from tuner.orders import learned_direction as stage_direction
from tuner.orders import needs_at_least
from tuner.plan import Budget, decide
from tuner.points import Point
from tuner.workload.hf_causal_lm import model_shape

CKPT = {"activation_checkpointing": True}


def test_the_stage_direction_is_read_from_a_fitted_and_an_out_of_memory_trial_that_differ_only_in_stage() -> None:
    assert stage_direction([Point(8, 0)], [Point(8, 1)]) == 1  # small model on CPU: ZeRO's buffers win
    assert stage_direction([Point(8, 3)], [Point(8, 0)]) == -1  # large model: partitioning wins
    assert stage_direction([Point(8, 0)], [Point(16, 1)]) == 0  # differ in more than the stage: unknown
    assert stage_direction([Point(8, 0), Point(4, 3)], [Point(8, 1), Point(4, 0)]) == 0  # mixed: unknown
    assert stage_direction([Point(8, 0)], [Point(8, 1, "cpu")]) == 0  # offload differs where it counts
    assert stage_direction([Point(8, 0)], [Point(8, 1, "cpu")], on_device=False) == 1


def test_needs_at_least_orders_only_the_known_axes() -> None:
    assert needs_at_least(Point(8, 1), Point(4, 1, **CKPT), direction=0)
    assert not needs_at_least(Point(4, 1), Point(8, 1), direction=0)
    assert not needs_at_least(Point(8, 2), Point(8, 1), direction=0)  # stage order unknown
    assert needs_at_least(Point(8, 2), Point(8, 1), direction=1)
    assert needs_at_least(Point(8, 0), Point(8, 1), direction=-1)
    assert not needs_at_least(Point(8, 1, "cpu"), Point(8, 1), direction=0)  # offload moves states off the GPU
    assert needs_at_least(Point(8, 1, "cpu"), Point(8, 1), direction=0, on_device=False)


def test_a_point_needing_at_least_what_ran_out_is_ruled_out_and_the_rest_are_not() -> None:
    # The CPU landscape of benchmarks/results: mb8 z0 fitted, mb8 z1 ran out.
    evidence = Evidence(fitted=((Point(8, 0), 0.58),), ran_out=((Point(8, 1), 0.58),), offload_counts=False)
    assert evidence.direction == 1
    for point in (Point(8, 2), Point(8, 3), Point(8, 1, "cpu"), Point(16, 2)):
        witness = evidence.ran_out_witness(point, 0.58)
        assert witness is not None and witness[0] == Point(8, 1) and "ran out of memory" in witness[1]
    for point in (Point(4, 1), Point(8, 1, **CKPT), Point(4, 3)):
        assert evidence.ran_out_witness(point, 0.5) is None
    assert evidence.fitted_witness(Point(8, 0, **CKPT)) == Point(8, 0)
    assert evidence.fitted_witness(Point(8, 1)) is None  # the learned direction: z1 needs more than z0


def test_the_model_orders_stages_only_at_the_same_micro_batch_and_checkpointing() -> None:
    ran_out = ((Point(16, 0), 0.69),)
    evidence = Evidence(ran_out=ran_out, offload_counts=False)
    assert evidence.ran_out_witness(Point(16, 2), 0.69) is not None  # predicted as much: ruled out
    assert evidence.ran_out_witness(Point(16, 3), 0.60) is None  # predicted well below: tried
    # Predicted above, but a different micro-batch and checkpointing: the model's order is not trusted there.
    assert Evidence(ran_out=((Point(16, 1, **CKPT), 0.55),)).ran_out_witness(Point(8, 0), 0.56) is None
    # A point at the same micro-batch predicted at least as high fitted: the prediction proves nothing.
    mixed = Evidence(fitted=((Point(16, 1), 0.70),), ran_out=ran_out, offload_counts=False)
    assert mixed.ran_out_witness(Point(16, 2), 0.69) is None


def test_decide_rules_out_with_no_margin_on_evidence_and_keeps_on_a_fit() -> None:
    config = {"model_type": "gpt2", "n_layer": 4, "n_embd": 128, "n_head": 4, "n_positions": 128, "vocab_size": 2048}
    shape = model_shape(config)
    setup = Setup(ranks=2, sequence_length=128, precision="fp32", accelerator="cpu")
    point = Point(8, 2)
    need = estimate(shape, point, setup).device_gb
    budget = Budget(device_gb=need * 2, margin=0.2)  # the model alone says it fits easily
    assert decide(shape, setup, point, budget).fits is True
    evidence = Evidence(fitted=((Point(8, 0), need),), ran_out=((Point(8, 1), need),), offload_counts=False)
    planned = decide(shape, setup, point, budget, evidence=evidence)
    assert planned.fits is False and planned.reason is not None and "mb8 z1 ran out" in planned.reason
    both = Evidence(fitted=((Point(16, 2), need),), ran_out=((Point(8, 1), need),), offload_counts=False)
    assert decide(shape, setup, point, budget, evidence=both).fits is True  # a fit that needs more wins
    assert decide(shape, setup, point, Budget(None), evidence=evidence).fits is None  # no budget, no verdict


TP2, SP2 = {"tensor_parallel_size": 2}, {"sequence_parallel_size": 2}


def test_tp_and_sp_are_ordered_by_memory_tp_only_where_zero_partitions_nothing() -> None:
    """More tp or sp shards a layer's work, so needs less memory at the same micro-batch; but AutoTP's ranks
    leave ZeRO's partition group, so at ZeRO 1-3 tp2 can need more than tp1 (tuner.orders)."""
    assert needs_at_least(Point(8, 0), Point(8, 0, **TP2), direction=0)
    assert not needs_at_least(Point(8, 0, **TP2), Point(8, 0), direction=0)
    assert not needs_at_least(Point(16, 0, **TP2), Point(8, 0), direction=0)  # less tp on one axis: unknown
    for stage in (1, 2, 3):
        assert not needs_at_least(Point(8, stage), Point(8, stage, **TP2), direction=0)
        assert not needs_at_least(Point(8, stage, **TP2), Point(8, stage), direction=0)
        assert needs_at_least(Point(8, stage), Point(8, stage, **SP2), direction=0)  # Ulysses stays in ZeRO's group
        assert not needs_at_least(Point(8, stage, **SP2), Point(8, stage), direction=0)


def test_a_tp1_point_that_fitted_keeps_its_tp2_twin_and_a_tp2_that_ran_out_rules_tp1_out_at_stage_0() -> None:
    fitted = Evidence(fitted=((Point(8, 0), 0.5),))
    assert fitted.fitted_witness(Point(8, 0, **TP2)) == Point(8, 0)
    assert fitted.fitted_witness(Point(8, 0, **SP2)) == Point(8, 0)
    ran_out = Evidence(ran_out=((Point(8, 0, **TP2), 0.5),))
    assert ran_out.ran_out_witness(Point(8, 0), 0.6) is not None
    assert Evidence(ran_out=((Point(8, 3, **TP2), 0.5),)).ran_out_witness(Point(8, 3), 0.4) is None


@pytest.mark.parametrize("knob", ["tiled_mlp", "tiled_logits", "activation_checkpointing"])
def test_tiling_saves_memory_as_checkpointing_does(knob: str) -> None:
    on = {knob: True}
    assert needs_at_least(Point(8, 1), Point(8, 1, **on), direction=0)
    assert not needs_at_least(Point(8, 1, **on), Point(8, 1), direction=0)
    assert Evidence(fitted=((Point(8, 1), 0.5),)).fitted_witness(Point(8, 1, **on)) == Point(8, 1)
    assert Evidence(ran_out=((Point(8, 1, **on), 0.5),)).ran_out_witness(Point(8, 1), 0.4) is not None


def test_a_longer_sequence_needs_at_least_what_a_shorter_one_did() -> None:
    short, long = Point(8, 1, sequence_length=1024), Point(8, 1, sequence_length=4096)
    assert needs_at_least(long, short, direction=0) and not needs_at_least(short, long, direction=0)
    assert Evidence(ran_out=((short, 0.5),)).ran_out_witness(long, 0.4) is not None
