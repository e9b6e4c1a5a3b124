"""Shared fixtures: a tiny model and the one-time build of DeepSpeed's CPU ops."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]
TINY_GPT2: dict[str, Any] = {
    "model_type": "gpt2",
    "n_layer": 2,
    "n_embd": 64,
    "n_head": 4,
    "n_positions": 128,
    "vocab_size": 512,
}

WORDS = [
    "the", "a", "cat", "dog", "sat", "ran", "on", "under", "mat", "log", "red", "blue", "big", "small", "and", "then",
]  # fmt: skip


def tokenizer_json(words: list[str] = WORDS, first_id: int = 3) -> str:
    """A word-level tokenizer (the `tokenizers` library's JSON): <unk> 0, <eos> 1, <pad> 2, `words` from `first_id`."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {"<unk>": 0, "<eos>": 1, "<pad>": 2, **{word: first_id + i for i, word in enumerate(words)}}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    return str(tokenizer.to_str())


def write_tokenizer(folder: Path) -> Path:
    """The word-level tokenizer saved as transformers saves one (EOS <eos>, padding <pad>): built here, not fetched."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer.from_str(tokenizer_json())
    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, eos_token="<eos>", pad_token="<pad>", unk_token="<unk>"
    )
    wrapped.save_pretrained(str(folder))
    return folder


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Folders mark their tests, so `-m "not integration and not e2e"` selects the fast suite."""
    for item in items:
        parts = Path(str(item.fspath)).parts
        for marker in ("integration", "e2e"):
            if marker in parts:
                item.add_marker(getattr(pytest.mark, marker))


@pytest.fixture(scope="session")
def cpu_ops(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Compile DeepSpeed's shm-comm and cpu_adam ops once (cached across runs), as `tuner search` does."""
    from tuner.trial.ops import prebuild_ops

    problem = prebuild_ops("cpu", ["deepspeed_shm_comm", "cpu_adam"], tmp_path_factory.mktemp("ops") / "prebuild.log")
    assert problem is None, problem


@pytest.fixture
def no_ray_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep a test's own Ray session from attaching to another one."""
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
