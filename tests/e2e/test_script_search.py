"""The user's own scripts searched end to end through the CLI: the three shipped examples (plain PyTorch,
DeepSpeed-autotuner style, Hugging Face Trainer), and the winner's export training the same script, unchanged.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import optuna
import pytest

from tests.conftest import REPO
from tests.e2e.test_cli import free_port, tuner

SPACES = {
    "script-torch-cpu": "torch_lm.py",
    "script-dsautotuner-cpu": "ds_autotuner_style.py",
    "script-hf-trainer-cpu": "hf_trainer.py",
}


@pytest.mark.parametrize("name", list(SPACES))
def test_a_shipped_script_space_searches_its_script_unchanged(name: str, tmp_path: Path, cpu_ops: None) -> None:
    url = f"sqlite:///{tmp_path / 'scripts.sqlite3'}"
    extra = ["--max-trials", "1"] if name == "script-hf-trainer-cpu" else []  # Trainer's start-up is the slow part
    done = tuner("search", str(REPO / "search_spaces" / f"{name}.yaml"), "--storage", url, *extra, cwd=tmp_path)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    study = optuna.load_study(study_name=name, storage=url)
    trials = study.get_trials()
    assert trials and all(t.state.name == "COMPLETE" for t in trials), [
        t.user_attrs.get("failure_reason") for t in trials
    ]
    for t in trials:
        assert t.user_attrs["samples_per_s"] > 0 and t.user_attrs["measured_steps"] >= 3
        assert t.user_attrs["num_parameters"] > 0 and t.user_attrs["peak_mem_gb"] > 0
    script = study.user_attrs["script"]
    assert script["path"] == str(REPO / "examples" / "scripts" / SPACES[name]) and len(script["sha256"]) == 64
    assert any("{" in arg for arg in script["args"])  # the template, as written
    if name == "script-torch-cpu":
        export_and_train(url, name, tmp_path)


def export_and_train(url: str, name: str, tmp_path: Path) -> None:
    """The winner exported, and the command export prints trains the same script, unchanged, to its end."""
    out = tmp_path / "export" / "ds_config.json"
    exported = tuner("export", "--study", name, "--storage", url, "--output", str(out), cwd=tmp_path)
    assert exported.returncode == 0, exported.stderr
    prov = json.loads(out.with_name("ds_config.provenance.json").read_text())
    command = prov["script"]["command"]
    assert prov["script"]["changed_since_measured"] is False and command[:3] == ["deepspeed", "--num_gpus", "2"]
    assert shlex.join(command) in exported.stdout and str(out) in command
    runner = [sys.executable, "-m", "deepspeed.launcher.runner", "--master_port", str(free_port())]
    train = subprocess.run(
        [*runner, *command[1:]], cwd=tmp_path, env={**os.environ, "DS_ACCELERATOR": "cpu"},
        capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert train.returncode == 0, train.stdout[-3000:] + train.stderr[-3000:]
    assert "trained 40 steps on 2 rank(s)" in train.stdout
