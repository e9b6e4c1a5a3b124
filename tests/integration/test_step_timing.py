"""Composed step timing on real DeepSpeed ranks (2 CPU ranks, gloo): the same step time as timing whole steps.

At 8 accumulation micro-steps a composed sample runs 5 of them (the first, 3 middle, the boundary with the
optimizer step), the boundary set by hand. Its step time must agree with whole steps within the noise of
this shared machine (generous: 30%); both trials record how their figures were taken.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from tests.conftest import TINY_GPT2
from tuner.points import Point
from tuner.search import ds_configs_for, trial_spec
from tuner.space import parse_space
from tuner.trial.launch import run_trial
from tuner.trial.spec import TrialSpec

MICRO, ACCUM, RANKS, SEQ = 2, 8, 2, 128


def spec_for(stage: int, step_timing: str) -> TrialSpec:
    space = parse_space(
        {
            "model": {"config": TINY_GPT2},
            "data": {"sequence_length": SEQ},
            "training": {"global_batch_size": MICRO * ACCUM * RANKS, "precision": "bf16"},
            "hardware": {"gpus_per_trial": RANKS},
            "space": {"micro_batch_size": [MICRO], "zero_stage": [stage]},
            "trial": {"warmup_steps": 2, "measure_steps": 3, "max_cv": 0.1, "step_timing": step_timing},
        },
        default_study="timing",
    )
    point = Point(MICRO, stage)
    return trial_spec(space, point, ds_configs_for(space, (point,), "cpu")[point])


@pytest.mark.parametrize("stage", [0, 3])
def test_a_composed_step_matches_whole_steps(stage: int, tmp_path: Path, cpu_ops: None) -> None:
    whole_spec, composed_spec = spec_for(stage, "whole"), spec_for(stage, "composed")
    assert whole_spec.grad_accum == ACCUM
    whole = run_trial(whole_spec, tmp_path / "whole", ranks=RANKS, accelerator="cpu", timeout_s=300)
    composed = run_trial(composed_spec, tmp_path / "composed", ranks=RANKS, accelerator="cpu", timeout_s=300)
    for result in (whole, composed):
        assert result.ok, (result.failure_category, result.failure_reason, result.log_tail)
    assert whole.step_timing == "whole" and whole.user_attrs()["step_timing"] == "whole"
    assert composed.step_timing == "composed" and composed.user_attrs()["step_timing"] == "composed"
    w, c = whole.figures, composed.figures
    assert c["step_time_s"] == pytest.approx(w["step_time_s"], rel=0.3)
    # the parts a composed step is made of; whole steps have none
    parts = [c[f"{name}_micro_step_s"] for name in ("first", "middle", "boundary")]
    assert all(p > 0 for p in parts) and "middle_micro_step_s" not in w
    assert c["step_time_s"] == pytest.approx(parts[0] + (ACCUM - 2) * parts[1] + parts[2], rel=0.5)  # medians
    assert 1 <= c["warmup_steps"] <= 2 and 1 <= w["warmup_steps"] <= 2
    assert math.isfinite(c["final_loss"]) and 4.0 < c["final_loss"] < 8.0  # the optimizer stepped at the boundary
