"""`tuner search` start-up: what is left to run beside Ray, what is not imported, and what still is checked."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tuner import devices
from tuner.devices import detect_accelerator
from tuner.errors import SpaceError
from tuner.space import check_model_config, load_space, model_check_deferred

REPO = Path(__file__).resolve().parents[2]


def test_no_gpu_device_file_means_cpu_without_asking_torch(
    space_doc: Callable[..., dict[str, Any]], write_yaml: Callable[..., Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch

    space = load_space(write_yaml(space_doc()))
    asked: list[bool] = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: asked.append(True) or True)
    monkeypatch.setattr(devices, "GPU_DEVICE_FILES", ("no-such-device",))
    assert detect_accelerator(space) == "cpu" and asked == []
    monkeypatch.setattr(devices, "GPU_DEVICE_FILES", ("null",))  # a device file that exists: torch decides
    assert detect_accelerator(space) == "cuda" and asked == [True]


def test_the_model_check_left_for_later_still_names_the_key(
    space_doc: Callable[..., dict[str, Any]], write_yaml: Callable[..., Path], tiny_gpt2: dict[str, Any]
) -> None:
    """Heads not dividing the hidden size: transformers refuses it; search finds it while Ray starts."""
    path = write_yaml(space_doc(model={"config": {**tiny_gpt2, "n_head": 3}}))
    with pytest.raises(SpaceError, match=r"^model\.config"):
        load_space(path)
    space = load_space(path, check_model=False)  # the schema's checks only: no transformers
    assert model_check_deferred(space)
    with pytest.raises(SpaceError, match=r"^model\.config"):
        check_model_config(space)


def test_each_trials_ray_worker_imports_neither_optuna_nor_the_search() -> None:
    """Tune imports the trainable's module in every trial's worker: it stays free of the search's imports."""
    heavy = "{'optuna', 'tuner.search', 'sqlalchemy'}"
    code = f"import sys, tuner.trial.trainable; print(sorted({heavy} & set(sys.modules)))"
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"
