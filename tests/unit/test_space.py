"""load_space / parse_space: the shipped spaces, defaults and file references (bad input: test_bad_input.py)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from tuner.points import enumerate_points
from tuner.space import load_space, parse_space

REPO_ROOT = Path(__file__).parents[2]
SPACE_FILES = sorted((REPO_ROOT / "search_spaces").glob("*.yaml"))
QUICKSTART = REPO_ROOT / "search_spaces" / "quickstart-cpu.yaml"

Doc = Callable[..., dict[str, Any]]  # the `space_doc` fixture
Writer = Callable[..., Path]  # the `write_yaml` fixture


# --- the shipped search spaces ------------------------------------------------------------------


def test_search_spaces_folder_holds_the_quickstart() -> None:
    assert QUICKSTART in SPACE_FILES


@pytest.mark.parametrize("path", SPACE_FILES, ids=lambda p: p.name)
def test_shipped_space_loads_with_a_valid_point(path: Path) -> None:
    space = load_space(path)
    assert space.study == path.stem
    assert isinstance(space.model_config_dict, dict)
    assert enumerate_points(space).valid, f"{path.name} has no valid point"


def test_quickstart_has_at_least_twelve_valid_points() -> None:
    enum = enumerate_points(load_space(QUICKSTART))
    assert len(enum.valid) >= 12
    assert len(set(enum.valid)) == len(enum.valid)


# --- defaults, scalars and overrides ------------------------------------------------------------


def test_defaults(write_yaml: Writer, space_doc: Doc) -> None:
    space = load_space(write_yaml(space_doc(), name="my-study.yaml"))
    assert space.study == "my-study"
    assert space.storage is None
    assert space.search.sampler == "guided"
    assert space.search.objective == "tokens_per_s"
    assert space.direction == "maximize"
    assert space.search.max_trials is None
    assert space.training.precision == "bf16"
    assert space.training.base_config is None
    assert space.base_config_dict == {}
    assert space.hardware.gpus_per_trial == 1
    assert space.hardware.accelerator == "auto"
    assert space.space.zero_stage == [0, 1, 2, 3]
    assert space.space.offload_optimizer == ["none"]
    assert space.space.offload_param == ["none"]
    assert space.space.activation_checkpointing == [False]


def test_a_list_of_objectives_is_a_pareto_search_with_tpe_by_default(write_yaml: Writer, space_doc: Doc) -> None:
    space = load_space(write_yaml(space_doc(search={"objective": ["tokens_per_s", "peak_mem_gb"]})))
    assert space.objectives == ("tokens_per_s", "peak_mem_gb")
    assert space.directions == ["maximize", "minimize"]
    assert space.direction == "maximize"
    assert space.search.sampler == "tpe"
    one = load_space(write_yaml(space_doc(search={"objective": ["step_time_s"]})))
    assert one.search.objective == "step_time_s" and one.search.sampler == "guided" and one.direction == "minimize"
    memory = load_space(write_yaml(space_doc(search={"objective": "peak_mem_gb"})))
    assert memory.search.sampler == "tpe"


def test_early_stopping_is_on_but_for_grid_and_off_without_a_speed_objective(
    write_yaml: Writer, space_doc: Doc
) -> None:
    assert load_space(write_yaml(space_doc())).search.stops_early
    assert not load_space(write_yaml(space_doc(search={"sampler": "grid"}))).search.stops_early
    assert load_space(write_yaml(space_doc(search={"sampler": "grid", "early_stop": True}))).search.stops_early
    assert not load_space(write_yaml(space_doc(search={"objective": "peak_mem_gb"}))).search.stops_early


def test_parse_space_default_study_and_explicit_study(space_doc: Doc) -> None:
    assert parse_space(space_doc(), default_study="t").study == "t"
    assert parse_space({**space_doc(), "study": "named"}, default_study="t").study == "named"


@pytest.mark.parametrize(
    ("objective", "direction"),
    [
        ("tokens_per_s", "maximize"),
        ("samples_per_s", "maximize"),
        ("step_time_s", "minimize"),
        ("peak_mem_gb", "minimize"),
    ],
)
def test_objective_direction(space_doc: Doc, objective: str, direction: str) -> None:
    space = parse_space(space_doc(search={"objective": objective}), default_study="t")
    assert space.direction == direction


@pytest.mark.parametrize(
    ("key", "scalar", "as_list"),
    [
        ("micro_batch_size", 4, [4]),
        ("zero_stage", 2, [2]),
        ("offload_optimizer", "cpu", ["cpu"]),
        ("offload_param", "none", ["none"]),
        ("activation_checkpointing", True, [True]),
        ("activation_checkpointing", False, [False]),
    ],
)
def test_scalar_space_value_becomes_one_element_list(
    write_yaml: Writer, space_doc: Doc, key: str, scalar: Any, as_list: list[Any]
) -> None:
    raw = space_doc(space={"micro_batch_size": [1, 2], key: scalar})
    assert getattr(load_space(write_yaml(raw)).space, key) == as_list


def test_study_and_storage_overrides(write_yaml: Writer, space_doc: Doc) -> None:
    path = write_yaml({**space_doc(), "study": "in-file", "storage": "sqlite:///in-file.db"})
    plain = load_space(path)
    assert (plain.study, plain.storage) == ("in-file", "sqlite:///in-file.db")
    overridden = load_space(path, study="from-flag", storage="postgresql+psycopg2://u@host/db")
    assert overridden.study == "from-flag"
    assert overridden.storage == "postgresql+psycopg2://u@host/db"
    only_study = load_space(path, study="s2")
    assert (only_study.study, only_study.storage) == ("s2", "sqlite:///in-file.db")


# --- files named by the space, resolved relative to the YAML's folder ----------------------------


@pytest.fixture
def elsewhere(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Run from a folder unrelated to the space file, so relative paths must resolve against the YAML."""
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    return cwd


def test_model_config_as_folder(tmp_path: Path, elsewhere: Path, space_doc: Doc, tiny_gpt2: dict[str, Any]) -> None:
    model_dir = tmp_path / "spaces" / "models" / "tiny"
    model_dir.mkdir(parents=True)
    (model_dir / "config.json").write_text(json.dumps(tiny_gpt2))
    path = tmp_path / "spaces" / "s.yaml"
    path.write_text(yaml.safe_dump(space_doc(model={"config": "models/tiny"})))
    assert load_space(path).model_config_dict == tiny_gpt2


def test_model_config_as_json_file(tmp_path: Path, elsewhere: Path, space_doc: Doc, tiny_gpt2: dict[str, Any]) -> None:
    (tmp_path / "tiny.json").write_text(json.dumps(tiny_gpt2))
    (tmp_path / "spaces").mkdir()
    path = tmp_path / "spaces" / "s.yaml"
    path.write_text(yaml.safe_dump(space_doc(model={"config": "../tiny.json"})))
    assert load_space(path).model_config_dict == tiny_gpt2


def test_model_config_as_absolute_path(
    tmp_path: Path, write_yaml: Writer, space_doc: Doc, tiny_gpt2: dict[str, Any]
) -> None:
    config = tmp_path / "abs" / "config.json"
    config.parent.mkdir()
    config.write_text(json.dumps(tiny_gpt2))
    assert load_space(write_yaml(space_doc(model={"config": str(config)}))).model_config_dict == tiny_gpt2


def test_base_config_as_file_and_folder(tmp_path: Path, elsewhere: Path, space_doc: Doc) -> None:
    base = {"optimizer": {"type": "Adam", "params": {"lr": 0.001}}, "gradient_clipping": 0.5}
    (tmp_path / "ds").mkdir()
    (tmp_path / "ds" / "ds_config.json").write_text(json.dumps(base))
    (tmp_path / "base.json").write_text(json.dumps(base))
    for name, ref in (("file", "base.json"), ("folder", "ds")):
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump(space_doc(training={"global_batch_size": 8, "base_config": ref})))
        assert load_space(path).base_config_dict == base, ref


def test_inline_base_config(write_yaml: Writer, space_doc: Doc) -> None:
    base = {"gradient_clipping": 1.0}
    space = load_space(write_yaml(space_doc(training={"global_batch_size": 8, "base_config": base})))
    assert space.base_config_dict == base
    space.base_config_dict["mutated"] = True
    assert space.base_config_dict == base


def test_measurement_keys(space_doc: Doc) -> None:
    plain = parse_space(space_doc(), default_study="t")
    assert (plain.trial.max_cv, plain.trial.measure_cap, plain.hardware.peak_tflops) == (0.05, 15, None)
    given = parse_space(
        space_doc(trial={"measure_steps": 4, "max_measure_steps": 4}, hardware={"peak_tflops": 312}),
        default_study="t",
    )
    assert (given.trial.measure_cap, given.hardware.peak_tflops) == (4, 312.0)
