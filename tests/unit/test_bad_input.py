"""Bad input through the real CLI (in process): exit code 2, one line naming the key and what is allowed,
and nothing written: no store, no run folder, no export. The end-to-end tests run a few of these through
the installed console script as well (tests/e2e/test_cli.py)."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from tests.conftest import TINY_GPT2
from tuner.cli import app

GOOD: dict[str, Any] = {
    "study": "bad-input",
    "model": {"config": TINY_GPT2},
    "data": {"sequence_length": 64},
    "training": {"global_batch_size": 8, "precision": "fp32"},
    "hardware": {"gpus_per_trial": 2},
    "space": {"micro_batch_size": [1, 2], "zero_stage": [0, 3]},
    "search": {"sampler": "grid"},
    "trial": {"warmup_steps": 1, "measure_steps": 2, "timeout_s": 60},
}


def edit(path: str, value: Any) -> dict[str, Any]:
    """GOOD with the dotted `path` set to `value` (or removed, for the marker DROP)."""
    raw = copy.deepcopy(GOOD)
    *parents, last = path.split(".")
    node = raw
    for key in parents:
        node = node.setdefault(key, {})
    if value is DROP:
        node.pop(last, None)
    else:
        node[last] = value
    return raw


DROP = object()
UNREACHABLE = "postgresql://nobody@127.0.0.1:1/n"
CASES: list[tuple[str, Any, str]] = [
    ("colour", "blue", "colour: unknown key"),
    ("space.foo", [1], "space.foo: unknown key"),
    ("hardware.gpus_per_trial", "two", "hardware.gpus_per_trial"),
    ("hardware.gpus_per_trial", 0, "hardware.gpus_per_trial"),
    ("training.global_batch_size", -8, "training.global_batch_size"),
    ("data.sequence_length", 0, "data.sequence_length"),
    ("space.micro_batch_size", [], "space.micro_batch_size"),
    ("space.micro_batch_size", [2, 2], "space.micro_batch_size: value 2 is listed twice"),
    ("space.micro_batch_size", [0], "space.micro_batch_size"),
    ("space.micro_batch_size", DROP, "space.micro_batch_size"),
    ("space.zero_stage", [4], "space.zero_stage"),
    ("space.activation_checkpointing", ["yes"], "space.activation_checkpointing"),
    ("space", {"micro_batch_size": [2], "zero_stage": [1, 2], "offload_param": ["cpu"]}, "space: no valid point"),
    ("space.offload_optimizer", ["nvme"], "space.offload_optimizer"),
    ("training.global_batch_size", 7, "space: no valid point"),
    ("training.precision", "fp8", "training.precision"),
    ("model.config", "no/such/folder", "model.config: no such file"),
    ("model.config", {"model_type": "no-such-architecture"}, "model.config"),
    ("trial.timeout_s", 0, "trial.timeout_s"),
    ("trial.measure_steps", -1, "trial.measure_steps"),
    ("search.sampler", "bayes", "search.sampler"),
    ("search.objective", "speed", "search.objective"),
    ("search.max_trials", 0, "search.max_trials"),
    ("search.prune_margin", 2, "search.prune_margin"),
    ("storage", "mongodb://127.0.0.1/x", "storage"),
    ("storage", "postgresql://nobody@127.0.0.1:1/none", "storage: cannot open storage"),
    ("study", "../escape", "study: must be at most 128 characters"),
    ("hardware.device_memory_gb", -1, "hardware.device_memory_gb"),
    ("hardware.nodes_per_trial", 3, "hardware.nodes_per_trial: must divide gpus_per_trial (2)"),
    ("hardware.ray_resources", {"GPU": 1}, "hardware.ray_resources: 'GPU' is set by gpus_per_trial"),
]


@pytest.fixture
def runner(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> CliRunner:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("TUNER_STORAGE", raising=False)

    def no_trials(*_: Any, **__: Any) -> None:
        raise AssertionError("bad input reached the trials")

    monkeypatch.setattr("tuner.search.prebuild_everywhere", no_trials)  # a case that slips through fails fast
    return CliRunner()


def assert_rejected(result: Any, message: str, tmp_path: Path, keep: tuple[str, ...] = ("space.yaml",)) -> None:
    assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {message}"), result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(keep), "bad input must write nothing"


@pytest.mark.parametrize(("path", "value", "message"), CASES, ids=[f"{c[0]}={c[1]!r}"[:40] for c in CASES])
def test_a_bad_space_is_exit_2_with_one_line_and_nothing_written(
    path: str, value: Any, message: str, runner: CliRunner, tmp_path: Path
) -> None:
    (tmp_path / "space.yaml").write_text(yaml.safe_dump(edit(path, value)))
    assert_rejected(runner.invoke(app, ["search", "space.yaml"]), message, tmp_path)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("model:\n  config: [unclosed\n", "space: YAML syntax error at line"),
        ("", "space"),
        ("- just\n- a list\n", "space"),
    ],
)
def test_a_file_that_is_not_a_space_is_rejected(text: str, message: str, runner: CliRunner, tmp_path: Path) -> None:
    (tmp_path / "space.yaml").write_text(text)
    result = runner.invoke(app, ["search", "space.yaml"])
    assert result.exit_code == 2 and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["space.yaml"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["search", "missing.yaml"], "missing.yaml: no such space file"),
        (["search", "space.yaml", "--study", "a/b"], "--study: must be at most 128 characters"),
        (["search", "space.yaml", "--storage", "sqlite3:/x"], "--storage"),
        (["search", "space.yaml", "--address", "127.0.0.1:1"], "--address: no Ray cluster answers at 127.0.0.1:1"),
        (["results", "--study", "x", "--storage", "nosuch://x"], "--storage"),
        (["export", "--study", "x", "--output", "o.json", "--storage", UNREACHABLE], "--storage: cannot open storage"),
    ],
)
def test_bad_command_line_values_are_rejected(args: list[str], message: str, runner: CliRunner, tmp_path: Path) -> None:
    (tmp_path / "space.yaml").write_text(yaml.safe_dump(GOOD))
    assert_rejected(runner.invoke(app, args), message, tmp_path)


def test_the_good_space_is_accepted_by_plan(runner: CliRunner, tmp_path: Path) -> None:
    """The suite's base space is valid, so each case above fails for its own key alone."""
    (tmp_path / "space.yaml").write_text(yaml.safe_dump(GOOD))
    result = runner.invoke(app, ["plan", "space.yaml", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["summary"]["to_run"] == 4
