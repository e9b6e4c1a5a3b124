"""The built-in trial under AutoTP, Ulysses and the tiled knobs: real DeepSpeed on 2 gloo CPU ranks.

Every trial starts from the same seeded tiny Llama and trains its first optimizer step on the same samples
(tuner.workload.layout), so its first loss must be the tp 1 / sp 1 trial's up to rounding: a trial that ran
the wrong samples, the wrong slices or a wrong loss would differ in the third digit.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tuner.points import Point
from tuner.result import TrialResult
from tuner.search import ds_configs_for, trial_spec
from tuner.space import parse_space
from tuner.trial.launch import run_trial

RANKS, GLOBAL, SEQ = 2, 4, 64
LLAMA = {
    "model_type": "llama", "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
    "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 512, "max_position_embeddings": 256,
}  # fmt: skip
# fp32: the first losses agree to rounding (bf16 would round the sliced and the whole computation apart)
REL = 1e-5


def spec_for(point: Point, precision: str = "fp32") -> Any:
    space = parse_space(
        {
            "model": {"config": LLAMA},
            "data": {"sequence_length": SEQ},
            "training": {"global_batch_size": GLOBAL, "precision": precision},
            "hardware": {"gpus_per_trial": RANKS},
            "space": {"micro_batch_size": [point.micro_batch_size]},
            "trial": {"warmup_steps": 1, "measure_steps": 2, "max_cv": 5.0},
        },
        default_study="integration",
    )
    return trial_spec(space, point, ds_configs_for(space, (point,), "cpu")[point])


def run(point: Point, tmp_path: Path, name: str) -> TrialResult:
    result = run_trial(spec_for(point), tmp_path / name, ranks=RANKS, accelerator="cpu", timeout_s=240)
    assert result.ok, (name, result.failure_category, result.failure_reason, result.log_tail)
    return result


POINTS = {
    "tp2": Point(1, 1, tensor_parallel_size=2),
    "sp2": Point(1, 1, sequence_parallel_size=2),
    "sp2 checkpointed": Point(1, 1, sequence_parallel_size=2, activation_checkpointing=True),
    "tiled_mlp": Point(1, 1, tiled_mlp=True),
    "tiled_logits": Point(1, 1, tiled_logits=True),
    "sp2 tiled": Point(1, 1, sequence_parallel_size=2, tiled_mlp=True, tiled_logits=True),
}


@pytest.fixture(scope="module")
def baseline(tmp_path_factory: pytest.TempPathFactory, cpu_ops: None) -> TrialResult:
    """The tp 1 / sp 1 trial at ZeRO 1: every other trial's first loss is compared with its."""
    return run(Point(1, 1), tmp_path_factory.mktemp("base"), "base")


@pytest.mark.parametrize("name", list(POINTS))
def test_a_split_trial_completes_with_the_first_loss_of_tp1(
    name: str, baseline: TrialResult, tmp_path: Path, cpu_ops: None
) -> None:
    result = run(POINTS[name], tmp_path, name)
    first, base = result.figures["first_loss"], baseline.figures["first_loss"]
    assert first == pytest.approx(base, rel=REL), f"{name}: {first} vs {base} ({first / base - 1:+.2e})"
    # the later steps train the same model on the same samples: the gradients are right, not only the loss
    assert result.figures["final_loss"] == pytest.approx(baseline.figures["final_loss"], rel=1e-3)
    assert result.figures["first_loss"] != pytest.approx(result.figures["final_loss"], rel=1e-4)  # it trained
