"""The search-space file: a pydantic schema, and `load_space` that reads and validates it.

The key names are a contract with users' YAML files: new keys may be added, none renamed.
`parse_space` is pure (a mapping in, a `Space` out); `load_space` is the edge that reads the YAML and
the files it names (a model's config.json, a base DeepSpeed config) relative to the YAML's folder.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, TypeVar, get_args

import yaml
from pydantic import (
    BaseModel,
    ValidationError,
    field_validator,
)

from tuner.errors import SpaceError
from tuner.knobs import BY_NAME
from tuner.parallel import Context
from tuner.sections import (  # re-exported: the whole schema is one import away
    DataSection,
    HardwareSection,
    ModelSection,
    SearchSection,
    SpaceSection,
    TrainingSection,
    TrialSection,
    WorkloadSection,
    _Section,
)

DEFAULT_STORAGE = "sqlite:///tuner.sqlite3"
OBJECTIVES: dict[str, Literal["maximize", "minimize"]] = {
    "tokens_per_s": "maximize",
    "samples_per_s": "maximize",
    "step_time_s": "minimize",
    "peak_mem_gb": "minimize",
    "usd_per_million_tokens": "minimize",
}
STORAGE_SCHEMES = ("sqlite", "postgresql", "mysql", "mariadb", "oracle", "mssql")

T = TypeVar("T")


def study_name_problem(name: str) -> str | None:
    """Why `name` cannot name a study, or None: it also names the study's log folder, so no path tricks."""
    if not name.strip():
        return "must not be empty"
    if len(name) > 128 or name.startswith(".") or re.search(r"[/\\\x00-\x1f]", name):
        return "must be at most 128 characters, without '/', '\\' or control characters, not starting with '.'"
    return None


class Space(_Section):
    """A validated search space; `model.config` and `training.base_config` are resolved to mappings."""

    study: str | None = None
    storage: str | None = None
    workload: WorkloadSection | None = None  # the user's own script; absent: the built-in causal LM
    model: ModelSection | None = None  # required for the built-in workload; for a script, it feeds the plan
    data: DataSection = DataSection()
    training: TrainingSection
    hardware: HardwareSection = HardwareSection()
    space: SpaceSection
    search: SearchSection = SearchSection()
    trial: TrialSection = TrialSection()

    @field_validator("study")
    @classmethod
    def _study_name(cls, value: str | None) -> str | None:
        problem = study_name_problem(value) if value is not None else None
        if problem:
            raise ValueError(problem)
        return value

    @property
    def script(self) -> str | None:
        """The user's training script (resolved to an absolute path by load_space), or None: built-in."""
        return self.workload.script if self.workload is not None else None

    @property
    def has_model(self) -> bool:
        """Whether the space describes its model's architecture (the memory model and FLOPs need it)."""
        return self.model is not None

    @property
    def plans_memory(self) -> bool:
        """Whether the memory model can predict this space: a described model and its sequence length."""
        return self.model is not None and bool(self.data.lengths)

    def knob_values(self, name: str) -> list[Any]:
        """The values the space lists for knob `name` (tuner.knobs): under `space:`, or data.sequence_length."""
        if BY_NAME[name].section == "data":  # searched only when several lengths are listed
            return list(self.data.lengths) if self.data.fixed_length is None and self.data.lengths else [None]
        return self.space.values_of(name)

    def context(self) -> Context:
        """What the parallelism rules judge a point against: the ranks, the model's heads, the sequence."""
        config = self.model_config_dict
        heads = config.get("num_attention_heads", config.get("n_head"))
        kv = config.get("num_key_value_heads") or heads
        return Context(
            ranks=self.hardware.gpus_per_trial,
            ranks_per_node=self.hardware.ranks_per_node,
            heads=heads if isinstance(heads, int) else None,
            kv_heads=kv if isinstance(kv, int) else None,
            sequence_length=self.data.fixed_length,
            attention=self.model.attn_implementation if self.model is not None else None,
            model_type=config.get("model_type") if isinstance(config.get("model_type"), str) else None,
        )

    def sequence_length_of(self, values: Mapping[str, Any]) -> int | None:
        """A point's sequence length: its own when the space searches lengths, else the space's."""
        return values.get("sequence_length") or self.data.fixed_length

    def global_batch_of(self, values: Mapping[str, Any]) -> int | None:
        """A point's samples per optimizer step; None when keeping the tokens fixed leaves no whole sample."""
        batch, length = self.training.global_batch_size, values.get("sequence_length")
        if self.training.keep_fixed == "samples" or length is None:
            return batch
        tokens = batch * min(self.data.lengths)
        return tokens // length if tokens % length == 0 else None

    @property
    def model_config_dict(self) -> dict[str, Any]:
        """The model's architecture as a mapping; empty for a script without `model:`."""
        if self.model is None:
            return {}
        assert isinstance(self.model.config, dict), "load_space resolves model.config to a mapping"
        return self.model.config

    @property
    def base_config_dict(self) -> dict[str, Any]:
        assert not isinstance(self.training.base_config, str), "load_space resolves base_config"
        return dict(self.training.base_config or {})

    @property
    def objectives(self) -> tuple[str, ...]:
        return self.search.objectives

    @property
    def directions(self) -> list[Literal["maximize", "minimize"]]:
        """Optuna's direction of each objective."""
        return [OBJECTIVES[name] for name in self.objectives]

    @property
    def direction(self) -> Literal["maximize", "minimize"]:
        """The first objective's direction: it ranks trials where one best is needed."""
        return self.directions[0]


_UNION_TAG = re.compile(r"^(constrained-\w+|int|str|float|bool|none|list|dict)$|\[")


def _first_error(exc: ValidationError, model: type[BaseModel]) -> SpaceError:
    """Turn pydantic's report into one line naming the YAML key and what is allowed."""
    err = exc.errors()[0]
    loc = [str(part) for part in err["loc"] if not _UNION_TAG.search(str(part))]  # not pydantic's union tags
    key = ".".join(loc) or "(top level)"
    if err["type"] == "extra_forbidden":
        owner: Any = model
        for part in loc[:-1]:
            field = owner.model_fields.get(part)
            owner = field.annotation if field is not None else None
            owner = next((a for a in get_args(owner) if isinstance(a, type) and issubclass(a, BaseModel)), owner)
            if not (isinstance(owner, type) and issubclass(owner, BaseModel)):
                break
        allowed = ", ".join(owner.model_fields) if isinstance(owner, type) and issubclass(owner, BaseModel) else ""
        return SpaceError(key, f"unknown key; allowed here: {allowed}")
    if err["type"] == "missing":
        return SpaceError(key, "required key is missing")
    message = err["msg"].removeprefix("Value error, ")
    return SpaceError(key, f"{message} (got {err.get('input')!r})")


def _check_storage(url: str, key: str) -> None:
    scheme = url.split("://", 1)[0].split("+", 1)[0] if "://" in url else ""
    if scheme not in STORAGE_SCHEMES:
        raise SpaceError(key, f"an SQLAlchemy URL such as sqlite:///tuner.sqlite3 is allowed, not {url!r}")
    if scheme == "sqlite" and url.split("://", 1)[1].lstrip("/") in ("", ":memory:"):
        raise SpaceError(key, f"an in-memory SQLite store ({url}) is gone when tuner exits: name a file instead")


def _check_model_config(
    config: dict[str, Any], sequence_length: int | None, options: dict[str, Any] | None = None
) -> None:
    """The architecture must be one transformers can build offline, and accepts, for this sequence length."""
    from transformers import CONFIG_MAPPING

    from tuner.workload.hf_causal_lm import validate_model_config

    model_type = config.get("model_type")
    if not isinstance(model_type, str):
        raise SpaceError("model.config.model_type", "required: a transformers architecture such as gpt2 or llama")
    if model_type not in CONFIG_MAPPING:
        raise SpaceError("model.config.model_type", f"unknown architecture {model_type!r}; e.g. gpt2, llama, qwen2")
    validate_model_config(config, sequence_length, options)


def parse_space(raw: Any, default_study: str, check_model: bool = True) -> Space:
    """Validate a loaded YAML document; file references must already be resolved to mappings.

    `check_model=False` leaves model.config's check with transformers to `check_model_config` (seconds of
    imports, which `tuner search` runs while Ray starts).
    """
    if not isinstance(raw, dict):
        raise SpaceError("(top level)", "the file must be a mapping of sections (model, data, training, space, ...)")
    try:
        space = Space.model_validate(raw)
    except ValidationError as exc:
        raise _first_error(exc, Space) from None
    if space.study is None:
        space = space.model_copy(update={"study": default_study})
    if space.storage is not None:
        _check_storage(space.storage, "storage")
    _check_workload(space)
    _check_priced(space)
    if check_model:
        check_model_config(space)
    return space


def check_model_config(space: Space) -> None:
    """model.config checked with transformers: importing it and torch takes seconds (see parse_space)."""
    if space.model is not None:
        longest = max(space.data.lengths) if space.data.lengths else None  # the position table must hold it
        _check_model_config(space.model_config_dict, longest, space.model.options())


def model_check_deferred(space: Space) -> bool:
    """Whether `load_space(check_model=False)` left model.config unchecked: a data set other than synthetic
    is read with the model's vocabulary, so its model is checked first, there."""
    return space.model is not None and space.data.synthetic


def _check_workload(space: Space) -> None:
    """The built-in workload needs the model and the sequence length; a script's tokens/s needs the latter."""
    if space.workload is None:
        if space.model is None:
            raise SpaceError("model", "required key is missing (or run your own script: workload.script)")
        if not space.data.lengths:
            raise SpaceError("data.sequence_length", "required key is missing")
    elif not space.data.lengths and (tokens := {"tokens_per_s", "usd_per_million_tokens"} & set(space.objectives)):
        raise SpaceError(
            "search.objective",
            f"{min(tokens)} needs data.sequence_length (the tokens in one of the script's samples); "
            "give it, or use samples_per_s",
        )


def _check_priced(space: Space) -> None:
    """A cost objective needs a price (tuner.cost)."""
    if "usd_per_million_tokens" in space.objectives and space.hardware.usd_per_hour is None:
        raise SpaceError(
            "hardware.price_per_device_hour",
            "required for search.objective usd_per_million_tokens: the USD price of one device-hour, e.g. 2.5",
        )


def _read_text(path: Path, key: str) -> str:
    """The file's text; one that is not UTF-8 or cannot be read is the user's error, on one line."""
    where = "" if key == str(path) else f"{path}: "
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        byte = f"byte {exc.object[exc.start]:#04x} at offset {exc.start}"
        raise SpaceError(key, f"{where}not UTF-8 text ({byte}); save the file as UTF-8") from None
    except OSError as exc:
        raise SpaceError(key, f"{where}cannot be read: {exc.strerror or exc}") from None


def _read_mapping(value: str, base_dir: Path, key: str, folder_file: str) -> dict[str, Any]:
    """Read a JSON or YAML mapping from a path relative to the space file (a folder means `folder_file`)."""
    path = Path(value).expanduser()
    path = path if path.is_absolute() else base_dir / path
    if path.is_dir():
        path = path / folder_file
    if not path.is_file():
        raise SpaceError(key, f"no such file: {path}")
    try:
        loaded = yaml.safe_load(_read_text(path, key))  # YAML is a superset of JSON
    except yaml.YAMLError as exc:
        raise SpaceError(key, f"{path} is not valid JSON or YAML: {str(exc).splitlines()[0]}") from None
    if not isinstance(loaded, dict):
        raise SpaceError(key, f"{path} must hold a mapping")
    return loaded


def read_yaml(path: Path) -> Any:
    """The YAML document at `path`, with syntax errors as one-line SpaceErrors."""
    if not path.is_file():
        raise SpaceError(str(path), "no such space file")
    text = _read_text(path, str(path))
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise SpaceError(str(path), f"YAML syntax error{where}: {problem}") from None


def _script_path(value: str, base_dir: Path) -> Path:
    """The training script, relative to the space file; it must be a readable Python file."""
    script = Path(value).expanduser()
    script = (script if script.is_absolute() else base_dir / script).resolve()
    if not script.is_file():
        raise SpaceError("workload.script", f"no such file: {script}")
    _read_text(script, "workload.script")  # readable, UTF-8
    return script


def load_space(path: Path, study: str | None = None, storage: str | None = None, check_model: bool = True) -> Space:
    """Read, resolve and validate a space file; `study`/`storage` (CLI flags) override the file;
    `check_model=False`: see parse_space and model_check_deferred.

    data.source and data.tokenizer become absolute paths, and the global batch the trials will train on is
    read once (tuner.workload.data.check), so bad data is bad input here.
    """
    from tuner.workload.data import check as check_data
    from tuner.workload.data import resolve_paths as data_paths

    raw = read_yaml(path)
    if isinstance(raw, dict):
        raw = dict(raw)
        model = raw.get("model")
        if isinstance(model, dict) and isinstance(model.get("config"), str):
            raw["model"] = {
                **model,
                "config": _read_mapping(model["config"], path.parent, "model.config", "config.json"),
            }
        training = raw.get("training")
        if isinstance(training, dict) and isinstance(training.get("base_config"), str):
            base = _read_mapping(training["base_config"], path.parent, "training.base_config", "ds_config.json")
            raw["training"] = {**training, "base_config": base}
        workload = raw.get("workload")
        if isinstance(workload, dict) and isinstance(workload.get("script"), str):
            raw["workload"] = {**workload, "script": str(_script_path(workload["script"], path.parent))}
        if isinstance(raw.get("data"), dict):
            raw["data"] = data_paths(raw["data"], path.parent)
    space = parse_space(raw, default_study=path.stem, check_model=False)
    if check_model or not model_check_deferred(space):
        check_model_config(space)
    if space.workload is not None and not space.data.synthetic:
        raise SpaceError("data.source", "applies to the built-in workload; a script reads its own data")
    data = check_data(space.data, space.model_config_dict, space.training.global_batch_size, space.search.seed)
    updates: dict[str, Any] = {}
    if study is not None:
        problem = study_name_problem(study)
        if problem:
            raise SpaceError("--study", problem)
        updates["study"] = study
    if storage is not None:
        _check_storage(storage, "--storage")
        updates["storage"] = storage
    updates["data"] = data
    return space.model_copy(update=updates)


def space_document(space: Space) -> str:
    """The resolved space as JSON, kept with the study so a result can be traced to its inputs."""
    return json.dumps(space.model_dump(mode="json"), indent=2, sort_keys=True)
