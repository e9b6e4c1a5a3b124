"""The user's own script as a trial (no Ray): measured through its engine, and every way it can go wrong.

Each script is written here, run unchanged by the trial's ranks (torchrun, gloo on CPU) through the shim,
and must end COMPLETE or FAIL with a category and a reason that says what happened, with no rank left.
"""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import pytest

from tests.integration.test_trials import processes_of
from tuner.points import Point
from tuner.result import TrialResult
from tuner.search import ds_configs_for, trial_spec
from tuner.space import parse_space
from tuner.trial.launch import run_trial

RANKS = 2
TRAIN = """
import argparse, json, deepspeed, torch
parser = argparse.ArgumentParser()
parser.add_argument("--config")
parser.add_argument("--micro", type=int)
parser.add_argument("--steps", type=int, default=100)
args = parser.parse_args()
model = torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.ReLU(), torch.nn.Linear(64, 1))
{before}
engine, _, _, _ = deepspeed.initialize(model=model, model_parameters=model.parameters(), config=args.config)
accum = json.load(open(args.config))["gradient_accumulation_steps"]
for _ in range(args.steps * accum):
    x = torch.randn(args.micro, 32)
    loss = engine(x).pow(2).mean()
    engine.backward(loss)
    engine.step()
print("script finished its own steps")
"""


def run_script(tmp_path: Path, body: str, steps: int = 100, **trial: Any) -> TrialResult:
    script = tmp_path / "train.py"
    script.write_text(textwrap.dedent(body))
    space = parse_space(
        {
            "workload": {"script": str(script), "args": ["--config", "{ds_config}", "--micro", "{micro_batch_size}",
                                                         "--steps", str(steps)]},
            "training": {"global_batch_size": 8, "precision": "fp32"},
            "hardware": {"gpus_per_trial": RANKS},
            "space": {"micro_batch_size": [2]},
            "search": {"objective": "samples_per_s"},
            "trial": {"warmup_steps": 1, "measure_steps": 3, "max_cv": 1.0, **trial},
        },
        default_study="scripts",
    )  # fmt: skip
    point = Point(2, 0)
    spec = trial_spec(space, point, ds_configs_for(space, (point,), "cpu")[point])
    return run_trial(spec, tmp_path / "trial", ranks=RANKS, accelerator="cpu", timeout_s=180)


def test_a_script_is_measured_through_its_engine_and_ended_after_the_measured_steps(tmp_path: Path) -> None:
    # capped at 3: the stopping rule may ask for more when a step on this shared machine is slow (timings vary)
    result = run_script(tmp_path, TRAIN.replace("{before}", ""), max_measure_steps=3)
    assert result.ok, (result.failure_category, result.failure_reason, result.log_tail[-2000:])
    f = result.figures
    assert f["measured_steps"] == 3 and f["samples_per_s"] > 0 and "tokens_per_s" not in f  # no sequence length
    assert f["num_parameters"] == 32 * 64 + 64 + 64 + 1 and f["peak_mem_gb"] > 0
    log = (tmp_path / "trial" / "trial.log").read_text()
    assert "script finished its own steps" not in log  # ended after the measured steps, not the script's 100
    assert not processes_of(tmp_path / "trial")


@pytest.mark.parametrize(
    ("body", "category", "says"),
    [
        (TRAIN.replace("{before}", "raise RuntimeError('no data here')"), "crash", "no data here"),
        ("print('a script that never trains')\n", "launch_error", "without calling deepspeed.initialize"),
        (TRAIN.replace("{before}", "args.steps = 1"), "crash", "after 1 optimizer step(s), before the 4"),
        (TRAIN.replace("{before}", "args.config = {'train_batch_size': 3, 'train_micro_batch_size_per_gpu': 2}"),
         "invalid_config", "Gradient accumulation steps"),
    ],
    ids=["raises-before-initialize", "never-initializes", "exits-early", "config-rejected"],
)  # fmt: skip
def test_a_script_that_cannot_be_measured_fails_saying_why_and_leaves_no_rank(
    tmp_path: Path, body: str, category: str, says: str
) -> None:
    result = run_script(tmp_path, body)
    assert result.failure_category == category, (result.failure_reason, result.log_tail[-2000:])
    assert result.failure_reason is not None and says in result.failure_reason
    assert not processes_of(tmp_path / "trial")
