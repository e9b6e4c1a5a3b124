"""Shared fixtures for the pure unit tests: a small valid space document and a YAML writer.

Test modules take these as fixtures rather than importing this file: `conftest` is not a unique
module name (tests/conftest.py exists too), so `from conftest import ...` would depend on load order.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

TINY_GPT2: dict[str, Any] = {
    "model_type": "gpt2",
    "n_layer": 1,
    "n_embd": 32,
    "n_head": 2,
    "n_positions": 64,
    "vocab_size": 128,
}


def _minimal_raw(**sections: Any) -> dict[str, Any]:
    raw: dict[str, Any] = {
        "model": {"config": copy.deepcopy(TINY_GPT2)},
        "data": {"sequence_length": 32},
        "training": {"global_batch_size": 8},
        "space": {"micro_batch_size": [1, 2]},
    }
    raw.update(copy.deepcopy(sections))
    return raw


@pytest.fixture
def tiny_gpt2() -> dict[str, Any]:
    """An inline transformers config small enough to validate instantly."""
    return copy.deepcopy(TINY_GPT2)


@pytest.fixture
def space_doc() -> Callable[..., dict[str, Any]]:
    """Factory for the smallest valid space document; keyword arguments replace whole top-level sections."""
    return _minimal_raw


@pytest.fixture
def write_yaml(tmp_path: Path) -> Callable[..., Path]:
    """Write a document (a mapping, or raw text) to tmp_path and return its path."""

    def write(doc: Any, name: str = "space.yaml") -> Path:
        path = tmp_path / name
        path.write_text(doc if isinstance(doc, str) else yaml.safe_dump(doc, sort_keys=False))
        return path

    return write
