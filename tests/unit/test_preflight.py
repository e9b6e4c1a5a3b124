"""The base config's keys the tuned keys replace: one warning each, from `tuner plan` and `tuner search`."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from tuner.cli import app
from tuner.errors import SpaceError
from tuner.preflight import base_config_overrides
from tuner.space import parse_space

REPLACED = {
    "train_batch_size": 64,
    "train_micro_batch_size_per_gpu": 4,
    "gradient_accumulation_steps": 2,
    "zero_optimization": {"stage": 2, "offload_optimizer": {"device": "cpu"}, "overlap_comm": True},
    "bf16": {"enabled": True},
    "gradient_clipping": 1.0,
}
WARNINGS = [
    "training.base_config.train_batch_size=64 is replaced by training.global_batch_size (8)",
    "training.base_config.train_micro_batch_size_per_gpu=4 is replaced by space.micro_batch_size (1, 2)",
    "training.base_config.gradient_accumulation_steps=2 is replaced by the accumulation each point implies: "
    "training.global_batch_size / (micro-batch x hardware.gpus_per_trial 1)",
    "training.base_config.zero_optimization.stage=2 is replaced by space.zero_stage (0, 1, 2, 3)",
    'training.base_config.zero_optimization.offload_optimizer={"device": "cpu"} is replaced by '
    "space.offload_optimizer (none)",
    "training.base_config.bf16.enabled=true is replaced by training.precision (bf16)",
]


def test_each_replaced_key_is_one_line_naming_what_replaces_it(space_doc: Callable[..., dict[str, Any]]) -> None:
    space = parse_space(space_doc(training={"global_batch_size": 8, "base_config": REPLACED}), default_study="t")
    assert base_config_overrides(space) == WARNINGS
    kept = {"gradient_clipping": 1.0, "zero_optimization": {"overlap_comm": True}, "optimizer": {"type": "AdamW"}}
    plain = parse_space(space_doc(training={"global_batch_size": 8, "base_config": kept}), default_study="t")
    assert base_config_overrides(plain) == []


@pytest.mark.parametrize("command", ["plan", "search"])
def test_plan_and_search_print_each_warning_once_on_stderr(
    command: str,
    space_doc: Callable[..., dict[str, Any]],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(tmp_path)

    def stop(*_: Any, checked: Callable[[], None] | None = None, **__: Any) -> None:
        if checked is not None:  # search's checks end while Ray starts: its warnings come once they passed
            checked()
        raise SpaceError("stopped", "here, before Ray")

    monkeypatch.setattr("tuner.search.run_search", stop)
    doc = space_doc(training={"global_batch_size": 8, "base_config": REPLACED}, hardware={"accelerator": "cpu"})
    (tmp_path / "space.yaml").write_text(yaml.safe_dump(doc))
    result = CliRunner().invoke(app, [command, "space.yaml"])
    lines = result.stderr.strip().splitlines()
    assert [line.removeprefix("warning: ") for line in lines if line.startswith("warning: ")] == WARNINGS
    assert len(lines) == len(WARNINGS) + (command == "search"), result.stderr  # search: the stop above
    assert result.exit_code == (0 if command == "plan" else 2), result.output
