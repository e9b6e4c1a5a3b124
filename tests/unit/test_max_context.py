"""`tuner plan --max-context`'s search (tuner.max_context): families, the bisection, the answer's edges."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from tests.unit.test_estimate import gpu
from tests.unit.test_estimate_parallel import LLAMA3_8B
from tuner.max_context import STEP, families, longest, max_context
from tuner.plan import Budget, decide
from tuner.points import Point
from tuner.workload.hf_causal_lm import model_shape


@pytest.fixture(scope="module")
def llama8b() -> Any:
    return model_shape(LLAMA3_8B)


def test_bisection_finds_the_end_of_a_prefix() -> None:
    calls: list[int] = []

    def fits(k: int) -> bool:
        calls.append(k)
        return k <= 37

    assert longest(fits, 2048) == 37 and len(calls) <= 12
    assert longest(lambda k: False, 2048) == 0
    assert longest(lambda k: True, 2048) == 2048


def test_a_family_is_a_point_at_micro_batch_1_without_its_length() -> None:
    points = [Point(mb, 2, sequence_length=s, sequence_parallel_size=sp) for mb in (1, 2, 4) for s in (512, 1024)
              for sp in (1, 2)]  # fmt: skip
    assert families(points) == [Point(1, 2), Point(1, 2, sequence_parallel_size=2)]


def test_each_family_gets_the_longest_length_within_the_budget(llama8b: Any) -> None:
    budget = Budget(80.0, margin=0.10, overhead_gb=1.0)
    points = [Point(1, 3, activation_checkpointing=True, **extra) for extra in
              ({}, {"sequence_parallel_size": 8}, {"tensor_parallel_size": 8}, {"tiled_logits": True})]  # fmt: skip
    answers = max_context(llama8b, gpu(8), points, budget, max_positions=131072)
    assert len(answers) == 4
    assert [a.longest for a in answers] == sorted((a.longest for a in answers), reverse=True)
    for answer in answers:
        assert answer.longest is not None and answer.longest % STEP == 0
        assert answer.at_longest is not None and answer.at_longest.predicted_gb <= 79.0
        assert answer.with_margin is not None and answer.with_margin >= answer.longest
        if answer.over is not None:  # one step longer is over the budget itself
            assert answer.over.predicted_gb > 79.0 and answer.limit == "device memory"
            within_margin = decide(llama8b, gpu(8), answer.over.point, budget)
            assert within_margin.fits is (answer.with_margin > answer.longest)
        else:
            assert answer.longest == 131072 and answer.limit == "max_position_embeddings 131072"
    by_label = {a.family.label(): a for a in answers}
    assert by_label["mb1 z3 ckpt sp8"].longest == 131072  # Ulysses over 8 ranks: 16k tokens each
    assert by_label["mb1 z3 ckpt"].longest < 65536 < by_label["mb1 z3 ckpt tlog"].longest


def test_no_length_fits_when_the_model_states_do_not(llama8b: Any) -> None:
    (answer,) = max_context(llama8b, gpu(1), [Point(1, 0)], Budget(80.0), max_positions=8192)
    assert answer.longest is None and answer.at_longest is None and answer.power_of_two is None
    assert answer.over is not None and answer.over.point.sequence_length == STEP


def test_the_sequence_parallel_size_divides_every_length_tried(llama8b: Any) -> None:
    tiny = dataclasses.replace(llama8b, num_heads=128, num_kv_heads=128)
    (answer,) = max_context(tiny, gpu(128), [Point(1, 3, sequence_parallel_size=128)], Budget(80.0), 131072)
    assert answer.step == 128 and answer.longest is not None and answer.longest % 128 == 0
