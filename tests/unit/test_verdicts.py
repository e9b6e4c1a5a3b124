"""tuner.verdicts: answers kept between runs, keyed by their inputs and the installation."""

from __future__ import annotations

from pathlib import Path

import pytest

from tuner import verdicts
from tuner.estimate import Adapters, ModelShape

SHAPE = ModelShape(
    model_type="llama", num_parameters=1000, embedding_parameters=100, largest_layer_parameters=50,
    block_parameters=400, matmul_parameters=800, num_layers=2, hidden_size=64, intermediate_size=128, num_heads=4,
    num_kv_heads=2, vocab_size=100, gated_mlp=True, mlp_saved=4, norm_fp32=True, attention="sdpa",
    attention_dropout=False, hidden_dropout=False,
    adapters=Adapters("lora", 4, 10, 5, ("attention_input",), 8, 0, ("q_proj", "v_proj")),
)  # fmt: skip


@pytest.fixture(autouse=True)
def cache_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.delenv(verdicts.OFF, raising=False)
    return tmp_path


def test_a_kept_answer_is_read_back_under_the_same_inputs_only() -> None:
    name = verdicts.key("checks", {"space": {"a": 1}})
    assert verdicts.read(name) is None
    verdicts.write(name, {"passed": True})
    assert verdicts.read(verdicts.key("checks", {"space": {"a": 1}})) == {"passed": True}
    assert verdicts.read(verdicts.key("checks", {"space": {"a": 2}})) is None
    assert verdicts.key("shape", {"space": {"a": 1}}) != name


def test_the_key_changes_with_a_library_version(monkeypatch: pytest.MonkeyPatch) -> None:
    name = verdicts.key("checks", {"x": 1})
    verdicts._installation.cache_clear()
    monkeypatch.setattr(verdicts, "installed_version", lambda package: "0.0-other")
    try:
        assert verdicts.key("checks", {"x": 1}) != name
    finally:
        verdicts._installation.cache_clear()


def test_a_shape_round_trips_with_its_adapters() -> None:
    name = verdicts.key("shape", {"config": {"model_type": "llama"}})
    verdicts.write(name, verdicts.shape_answer(SHAPE))
    assert verdicts.shape_of(verdicts.read(name)) == SHAPE


def test_a_damaged_or_foreign_file_is_no_answer(cache_home: Path) -> None:
    name = verdicts.key("shape", {"config": 1})
    verdicts.folder().mkdir(parents=True)
    (verdicts.folder() / name).write_text("{not json")
    assert verdicts.read(name) is None
    (verdicts.folder() / name).write_text('{"shape": {"model_type": "llama"}}')  # an older layout
    assert verdicts.shape_of(verdicts.read(name)) is None


def test_turned_off_nothing_is_read_or_written(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(verdicts.OFF, "0")
    name = verdicts.key("checks", {"y": 1})
    verdicts.write(name, {"passed": True})
    assert not verdicts.folder().exists()
    assert verdicts.read(name) is None


def test_an_unwritable_cache_only_costs_time(cache_home: Path) -> None:
    (cache_home / "tuner").write_text("a file where the folder would be")
    verdicts.write(verdicts.key("checks", {"z": 1}), {"passed": True})  # no exception
    assert verdicts.read(verdicts.key("checks", {"z": 1})) is None
