"""The knob registry: every knob declared once, and everything else reading the declarations (pure)."""

from __future__ import annotations

import pickle
from typing import Any

import pytest

from tests.conftest import REPO
from tuner.knobs import COMM, KNOBS, MAIN, family_label, invalid_reason
from tuner.points import Point
from tuner.space import SpaceSection


def test_every_knob_is_a_space_key_with_its_declared_default() -> None:
    section = SpaceSection.model_validate({"micro_batch_size": [1]})
    assert list(SpaceSection.model_fields) == [k.name for k in KNOBS]
    for k in KNOBS:
        expected = list(k.default) if k.default is not None else ([1] if k.scale else None)
        assert getattr(section, k.name) == expected, k.name
        assert SpaceSection.model_fields[k.name].description == k.help


def test_a_point_reads_its_knobs_by_name_and_labels_itself_from_the_declarations() -> None:
    point = Point(8, 3, "cpu", "cpu", True)
    assert (point.micro_batch_size, point.zero_stage, point.offload_param) == (8, 3, "cpu")
    assert point.label() == "mb8 z3 opt=cpu param=cpu ckpt"
    assert Point(4, 0).label() == "mb4 z0"  # neutral values unlabelled, but the stage always shown
    tuned = Point(4, 3).with_knob("stage3_prefetch_bucket_size", 8).with_knob("overlap_comm", True)
    assert tuned.label() == "mb4 z3 overlap_comm=true stage3_prefetch_bucket_size=8"
    assert tuned.main() == Point(4, 3) and dict(tuned.comm) == {"overlap_comm": True, "stage3_prefetch_bucket_size": 8}
    assert Point.from_params(tuned.params()) == tuned and "comm_stage3_prefetch_bucket_size" in tuned.params()
    assert pickle.loads(pickle.dumps(tuned)) == tuned and hash(tuned) == hash(Point.from_params(tuned.params()))
    assert sorted([Point(8, 1), Point(2, 3), Point(2, 0)]) == [Point(2, 0), Point(2, 3), Point(8, 1)]
    with pytest.raises(AttributeError):
        point.zero_stage = 1  # type: ignore[misc]
    with pytest.raises(TypeError, match="not a knob"):
        Point(4, 0, pipeline_parallel=2)
    assert family_label(point.values()) == "z3 opt=cpu param=cpu ckpt"


@pytest.mark.parametrize(
    ("values", "ranks", "reason"),
    [
        ({"offload_param": "cpu", "zero_stage": 2}, 2, "offload_param needs zero_stage 3"),
        ({"offload_optimizer": "cpu", "zero_stage": 0}, 2, "offload_optimizer needs zero_stage 1 or higher"),
        ({"allgather_bucket_size": 10, "zero_stage": 3}, 2, "allgather_bucket_size needs zero_stage 1 or 2"),
    ],
)
def test_validity_comes_from_each_knobs_stages_and_rank_rule(
    values: dict[str, Any], ranks: int, reason: str | None
) -> None:
    assert invalid_reason(values, ranks) == reason


def test_no_module_but_the_registry_and_the_memory_model_names_a_knob_like_offload_param() -> None:
    """Issue 15's measure of 'one knob, one place': the other modules read the declarations."""
    users = sorted(p.name for p in (REPO / "tuner").rglob("*.py") if "offload_param" in p.read_text())
    assert users == ["estimate.py", "knobs.py"]
    assert len(MAIN) + len(COMM) == len(KNOBS)
