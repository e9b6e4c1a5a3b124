"""load_space / parse_space: the shipped spaces, defaults, file references and one-line errors."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from tuner.errors import SpaceError
from tuner.points import enumerate_points
from tuner.space import load_space, parse_space

REPO_ROOT = Path(__file__).parents[2]
SPACE_FILES = sorted((REPO_ROOT / "search_spaces").glob("*.yaml"))
QUICKSTART = REPO_ROOT / "search_spaces" / "quickstart-cpu.yaml"

Doc = Callable[..., dict[str, Any]]  # the `space_doc` fixture
Writer = Callable[..., Path]  # the `write_yaml` fixture
Edit = Callable[[dict[str, Any]], Any]  # a valid document in, a (bad) document or raw YAML text out


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


@pytest.mark.parametrize(
    ("search", "needle"),
    [
        ({"objective": []}, "at least one objective"),
        ({"objective": ["tokens_per_s", "tokens_per_s"]}, "listed twice"),
        ({"objective": ["tokens_per_s", "loss"]}, "'peak_mem_gb'"),
        ({"sampler": "guided", "objective": ["tokens_per_s", "peak_mem_gb"]}, "one speed objective"),
    ],
)
def test_bad_objective_lists_name_the_key(
    write_yaml: Writer, space_doc: Doc, search: dict[str, Any], needle: str
) -> None:
    with pytest.raises(SpaceError) as caught:
        load_space(write_yaml(space_doc(search=search)))
    assert str(caught.value).startswith("search.objective: ") and needle in str(caught.value)
    assert "\n" not in str(caught.value)


def test_early_stopping_is_on_but_for_grid_and_needs_one_speed_objective(write_yaml: Writer, space_doc: Doc) -> None:
    assert load_space(write_yaml(space_doc())).search.stops_early
    assert not load_space(write_yaml(space_doc(search={"sampler": "grid"}))).search.stops_early
    assert load_space(write_yaml(space_doc(search={"sampler": "grid", "early_stop": True}))).search.stops_early
    assert not load_space(write_yaml(space_doc(search={"objective": "peak_mem_gb"}))).search.stops_early
    with pytest.raises(SpaceError, match=r"^search\.early_stop: needs one speed objective"):
        load_space(write_yaml(space_doc(search={"objective": ["tokens_per_s", "peak_mem_gb"], "early_stop": True})))
    with pytest.raises(SpaceError, match=r"^search\.early_stop_margin"):
        load_space(write_yaml(space_doc(search={"early_stop_margin": 0})))


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
        pytest.param(
            "activation_checkpointing",
            True,
            [True],
        ),
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


@pytest.mark.parametrize(
    ("kwargs", "key"),
    [
        ({"storage": "redis://x"}, "--storage"),
        ({"storage": "tuner.sqlite3"}, "--storage"),
        ({"study": "  "}, "--study"),
    ],
)
def test_bad_overrides(write_yaml: Writer, space_doc: Doc, kwargs: dict[str, str], key: str) -> None:
    with pytest.raises(SpaceError) as info:
        load_space(write_yaml(space_doc()), **kwargs)
    assert info.value.key == key
    assert str(info.value).startswith(f"{key}: ")
    assert "\n" not in str(info.value)


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


def test_file_reference_that_is_not_a_mapping(tmp_path: Path, write_yaml: Writer, space_doc: Doc) -> None:
    (tmp_path / "list.json").write_text("[1, 2]")
    with pytest.raises(SpaceError) as info:
        load_space(write_yaml(space_doc(model={"config": "list.json"})))
    assert str(info.value).startswith("model.config: ")
    assert "\n" not in str(info.value)


def test_missing_space_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.yaml"
    with pytest.raises(SpaceError) as info:
        load_space(path)
    assert str(info.value).startswith(f"{path}: ")


# --- bad inputs: SpaceError, one line, naming the key ---------------------------------------------

PATH = "<the space file's path>"  # the key a YAML syntax error names


def _set(**top: Any) -> Edit:
    """Replace top-level keys."""
    return lambda doc: {**doc, **top}


def _with(section: str, **values: Any) -> Edit:
    """Set keys inside one section (created when absent)."""
    return lambda doc: {**doc, section: {**doc.get(section, {}), **values}}


def _without(section: str) -> Edit:
    return lambda doc: {key: value for key, value in doc.items() if key != section}


def _model(**changes: Any) -> Edit:
    """Change the inline model config; a value of None removes the key."""

    def edit(doc: dict[str, Any]) -> dict[str, Any]:
        config = {**doc["model"]["config"], **changes}
        return {**doc, "model": {"config": {k: v for k, v in config.items() if v is not None}}}

    return edit


def _text(text: str) -> Edit:
    return lambda doc: text


BAD_INPUTS: list[tuple[str, Edit, str]] = [
    ("yaml-syntax-error", _text("model: [unclosed\ndata: {\n"), PATH),
    ("top-level-list", _text("- model\n- data\n"), "(top level)"),
    ("top-level-scalar", _text("just a string\n"), "(top level)"),
    ("empty-file", _text(""), "(top level)"),
    ("unknown-top-level-key", _set(foo=1), "foo"),
    ("unknown-key-in-space", _with("space", foo=[1]), "space.foo"),
    ("unknown-key-in-training", _with("training", learning_rate=0.1), "training.learning_rate"),
    ("sequence-length-string", _with("data", sequence_length="long"), "data.sequence_length"),
    ("sequence-length-zero", _with("data", sequence_length=0), "data.sequence_length"),
    ("sequence-length-fraction", _with("data", sequence_length=1.5), "data.sequence_length"),
    ("global-batch-negative", _with("training", global_batch_size=-4), "training.global_batch_size"),
    ("micro-batch-zero", _with("space", micro_batch_size=[0, 2]), "space.micro_batch_size"),
    ("micro-batch-negative", _with("space", micro_batch_size=-1), "space.micro_batch_size"),
    ("micro-batch-empty-list", _with("space", micro_batch_size=[]), "space.micro_batch_size"),
    ("micro-batch-duplicate", _with("space", micro_batch_size=[2, 4, 2]), "space.micro_batch_size"),
    ("micro-batch-missing", _set(space={"zero_stage": [0]}), "space.micro_batch_size"),
    ("zero-stage-duplicate", _with("space", zero_stage=[1, 1]), "space.zero_stage"),
    ("zero-stage-4", _with("space", zero_stage=[0, 4]), "space.zero_stage"),
    ("zero-stage-string", _with("space", zero_stage=["1"]), "space.zero_stage"),
    ("offload-optimizer-nvme", _with("space", offload_optimizer="nvme"), "space.offload_optimizer"),
    ("offload-param-false", _with("space", offload_param=[False]), "space.offload_param"),
    ("activation-checkpointing-yes", _with("space", activation_checkpointing="yes"), "space.activation_checkpointing"),
    ("activation-checkpointing-int", _with("space", activation_checkpointing=[1]), "space.activation_checkpointing"),
    ("activation-checkpointing-empty", _with("space", activation_checkpointing=[]), "space.activation_checkpointing"),
    ("sampler-bayes", _with("search", sampler="bayes"), "search.sampler"),
    ("objective-loss", _with("search", objective="loss"), "search.objective"),
    ("max-trials-zero", _with("search", max_trials=0), "search.max_trials"),
    ("timeout-zero", _with("trial", timeout_s=0), "trial.timeout_s"),
    ("warmup-negative", _with("trial", warmup_steps=-1), "trial.warmup_steps"),
    ("measure-steps-zero", _with("trial", measure_steps=0), "trial.measure_steps"),
    ("storage-redis", _set(storage="redis://x"), "storage"),
    ("storage-not-a-url", _set(storage="tuner.sqlite3"), "storage"),
    ("study-blank", _set(study="   "), "study"),
    ("model-path-missing", _set(model={"config": "models/does-not-exist"}), "model.config"),
    ("model-type-unknown", _model(model_type="not_a_model"), "model.config.model_type"),
    ("model-type-missing", _model(model_type=None), "model.config.model_type"),
    ("model-section-missing", _without("model"), "model"),
    ("precision-int8", _with("training", precision="int8"), "training.precision"),
    ("base-config-missing-file", _with("training", base_config="nope.json"), "training.base_config"),
    ("data-section-missing", _without("data"), "data"),
    ("space-section-missing", _without("space"), "space"),
    ("data-section-not-mapping", _set(data=5), "data"),
    ("gpus-per-trial-zero", _with("hardware", gpus_per_trial=0), "hardware.gpus_per_trial"),
    ("device-memory-zero", _with("hardware", device_memory_gb=0), "hardware.device_memory_gb"),
    ("host-memory-negative", _with("hardware", host_memory_gb=-1), "hardware.host_memory_gb"),
    ("prune-margin-negative", _with("search", prune_margin=-0.1), "search.prune_margin"),
    ("prune-margin-over-one", _with("search", prune_margin=2), "search.prune_margin"),
    ("prune-not-bool", _with("search", prune="sometimes"), "search.prune"),
    ("accelerator-tpu", _with("hardware", accelerator="tpu"), "hardware.accelerator"),
    ("data-source-hf", _with("data", source="hf"), "data.source"),
]


@pytest.mark.parametrize(("edit", "key"), [pytest.param(e, k, id=i) for i, e, k in BAD_INPUTS])
def test_bad_input_is_one_line_naming_the_key(write_yaml: Writer, space_doc: Doc, edit: Edit, key: str) -> None:
    path = write_yaml(edit(space_doc()))
    key = str(path) if key == PATH else key
    with pytest.raises(SpaceError) as info:
        load_space(path)
    text = str(info.value)
    assert "\n" not in text
    # A list item's error names its index after the key (space.zero_stage.1: ...).
    assert re.match(rf"{re.escape(key)}(\.\d+)?: ", text), text
    assert text.startswith(f"{info.value.key}: ")
    assert info.value.message.strip()


# --- defects found by these tests and fixed: they stay as regression tests -----


def test_duplicate_after_coercion_float_is_rejected(write_yaml: Writer, space_doc: Doc) -> None:
    with pytest.raises(SpaceError, match=r"^space\.micro_batch_size"):
        load_space(write_yaml(_with("space", micro_batch_size=[2, 2.0])(space_doc())))


def test_duplicate_after_coercion_bool_is_rejected(write_yaml: Writer, space_doc: Doc) -> None:
    with pytest.raises(SpaceError, match=r"^space\.zero_stage"):
        load_space(write_yaml(_with("space", zero_stage=[1, True])(space_doc())))


def test_boolean_micro_batch_size_is_rejected(write_yaml: Writer, space_doc: Doc) -> None:
    with pytest.raises(SpaceError, match=r"^space\.micro_batch_size"):
        load_space(write_yaml(_with("space", micro_batch_size=True)(space_doc())))


def test_model_config_wrong_type_names_the_key(write_yaml: Writer, space_doc: Doc) -> None:
    with pytest.raises(SpaceError) as info:
        load_space(write_yaml(space_doc(model={"config": 5})))
    assert info.value.key == "model.config"


@pytest.mark.parametrize("value", [False, 1, None])
def test_scalar_activation_checkpointing(write_yaml: Writer, space_doc: Doc, value: Any) -> None:
    path = write_yaml(_with("space", activation_checkpointing=value)(space_doc()))
    if value is False:
        assert load_space(path).space.activation_checkpointing == [False]
    else:
        with pytest.raises(SpaceError, match=r"^space\.activation_checkpointing"):
            load_space(path)


def test_measurement_keys(space_doc: Doc) -> None:
    plain = parse_space(space_doc(), default_study="t")
    assert (plain.trial.max_cv, plain.trial.measure_cap, plain.hardware.peak_tflops) == (0.05, 15, None)
    given = parse_space(
        space_doc(trial={"measure_steps": 4, "max_measure_steps": 4}, hardware={"peak_tflops": 312}),
        default_study="t",
    )
    assert (given.trial.measure_cap, given.hardware.peak_tflops) == (4, 312.0)
    for trial, key in (
        ({"measure_steps": 5, "max_measure_steps": 2}, "trial.max_measure_steps: must be at least measure_steps"),
        ({"max_cv": 0}, "trial.max_cv"),
    ):
        with pytest.raises(SpaceError, match=f"^{re.escape(key)}"):
            parse_space(space_doc(trial=trial), default_study="t")
    with pytest.raises(SpaceError, match=r"^hardware\.peak_tflops"):
        parse_space(space_doc(hardware={"peak_tflops": -1}), default_study="t")
