"""`tuner check`, the running part: read the committed config and its provenance, run the one trial (on this
machine, or on a Ray cluster as `tuner search --address` does), and keep it in the original study if asked.

The trial goes through the search's own launcher (tuner.trial.launch, tuner.trial.nodes), so the check measures
exactly what a trial of the search measured; only the comparison (tuner.check) is new.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tuner.check import Recorded, read_provenance, rebuild, recorded_cpus
from tuner.errors import SpaceError
from tuner.result import TrialResult
from tuner.space import Space
from tuner.trial.spec import TrialSpec


def provenance_beside(config: Path) -> Path:
    """Where `tuner export` wrote the provenance of `config` (tuner.export: `<name>.provenance.json`)."""
    return config.with_name(config.name.removesuffix(".json") + ".provenance.json")


def _read_json(path: Path, key: str) -> Any:
    if not path.is_file():
        raise SpaceError(key, f"no such file: {path}")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SpaceError(key, f"{path} is not a JSON file: {str(exc).splitlines()[0]}") from None


def _space(recorded: Recorded) -> Space:
    """The resolved space the study kept (older provenance files: the space file, if it is still there); the
    script a script study ran and the data files must still be there."""
    from tuner.space import load_space, parse_space
    from tuner.workload.data import check as check_data

    if recorded.space is not None:
        try:
            space = parse_space(recorded.space, recorded.study)
        except SpaceError as exc:
            raise SpaceError("--provenance", f"its space cannot be rebuilt by this tuner ({exc})") from None
    elif recorded.space_file and Path(recorded.space_file).is_file():
        space = load_space(Path(recorded.space_file))
    else:
        raise SpaceError(
            "--provenance",
            f"holds no space (an older tuner export) and its space file {recorded.space_file} is gone: export again",
        )
    if space.script is not None and not Path(space.script).is_file():
        raise SpaceError(
            "workload.script", f"{space.script} is gone: a script winner is checked by running the script it measured"
        )
    check_data(space.data, space.model_config_dict, space.training.global_batch_size, space.search.seed)
    return space


@dataclass(frozen=True)
class Inputs:
    """Everything the check runs and compares, validated before anything is written."""

    config_path: Path
    provenance_path: Path
    recorded: Recorded
    space: Space
    config: dict[str, Any]
    spec: TrialSpec
    accelerator: str
    notes: list[str]

    @property
    def cpus(self) -> int | None:
        """The CPUs of each node's ranks: as many threads per rank as the recorded trial had."""
        return recorded_cpus(self.recorded.figures, self.space.hardware.ranks_per_node)


def load_inputs(
    config_path: Path, provenance: Path | None, device_memory_gb: float | None, address: str | None = None
) -> Inputs:
    """Read and check the committed config and its provenance, and rebuild the trial for the device kind the
    trials ran on; SpaceError on bad input."""
    from tuner.search import detect_accelerator

    if device_memory_gb is not None and not device_memory_gb > 0:
        raise SpaceError("--device-memory-gb", f"must be more than 0, got {device_memory_gb:g}")
    config = _read_json(config_path, "DS_CONFIG")
    if not isinstance(config, dict):
        raise SpaceError("DS_CONFIG", f"{config_path} must hold a JSON object (a ds_config)")
    prov_path = provenance or provenance_beside(config_path)
    if not prov_path.is_file():
        raise SpaceError(
            "--provenance",
            f"no provenance file {prov_path}: tuner export writes it beside the config; name it with --provenance",
        )
    recorded = read_provenance(_read_json(prov_path, "--provenance"))
    space = _space(recorded)
    accelerator = recorded.accelerator or detect_accelerator(space)
    if accelerator == "cuda" and address is None:
        import torch

        if not torch.cuda.is_available():
            raise SpaceError(
                "--address",
                f"trial {recorded.trial} was measured on GPUs and this machine has none: run the check on a GPU "
                "machine, or --address a Ray cluster with GPUs",
            )
    spec, notes = rebuild(recorded, space, config, accelerator, device_memory_gb)
    if space.script is not None and recorded.script_sha256:
        digest = hashlib.sha256(Path(space.script).read_bytes()).hexdigest()
        if digest != recorded.script_sha256:
            notes.append(f"{space.script} changed since it was measured: the check runs it as it is now")
    return Inputs(config_path, prov_path, recorded, space, config, spec, accelerator, notes)


def for_accelerator(inputs: Inputs, accelerator: str, device_memory_gb: float | None) -> Inputs:
    """The inputs rebuilt for a cluster whose GPUs the search's machine does not have."""
    if accelerator == inputs.accelerator:
        return inputs
    spec, notes = rebuild(inputs.recorded, inputs.space, inputs.config, accelerator, device_memory_gb)
    return Inputs(
        inputs.config_path, inputs.provenance_path, inputs.recorded, inputs.space, inputs.config, spec, accelerator,
        notes,
    )  # fmt: skip


def software_versions(accelerator: str, trial_dir: Path | None = None) -> dict[str, str]:
    """torch, DeepSpeed and transformers here, and the device: the one rank 0 measured on (its result.json),
    else (a run that failed early) this node's first GPU, or `cpu`, as the worker names them."""
    import deepspeed
    import torch
    import transformers

    out = {"torch": torch.__version__, "deepspeed": deepspeed.__version__, "transformers": transformers.__version__}
    device = result_device(trial_dir) if trial_dir else None
    if device is None:
        on_gpu = accelerator == "cuda" and torch.cuda.is_available()
        device = torch.cuda.get_device_name(0) if on_gpu else "cpu"
    out["device"] = device
    return out


def result_device(trial_dir: Path) -> str | None:
    """The device name rank 0 wrote in the trial's result.json (`cpu` on CPU), or None without one."""
    try:
        name = json.loads((trial_dir / "result.json").read_text()).get("device_name")
    except (OSError, ValueError, AttributeError):
        return None
    return str(name) if name else None


def _local_cpus(space: Space, accelerator: str) -> int:
    """The CPUs a trial of the search held on this machine (tuner.placement.trial_bundles)."""
    from tuner.placement import TrialShape, default_cpus_per_rank, trial_bundles

    cores, hardware = os.cpu_count() or 1, space.hardware
    per_rank = hardware.cpus_per_rank
    if accelerator == "cuda" and per_rank is None:
        import torch

        per_rank = default_cpus_per_rank([{"CPU": cores, "GPU": max(1, torch.cuda.device_count())}])
    shape = TrialShape(hardware.gpus_per_trial, 1, accelerator, {}, per_rank)
    return int(trial_bundles(shape, local_cpus=cores)[0]["CPU"])


def run_here(inputs: Inputs, trial_dir: Path) -> tuple[TrialResult, dict[str, str]]:
    """The trial on this machine, as a one-node search runs it."""
    from tuner.dsconfig import jit_ops
    from tuner.trial.launch import run_trial
    from tuner.trial.ops import prebuild_ops

    trial_dir.mkdir(parents=True, exist_ok=True)
    prebuild_ops(inputs.accelerator, jit_ops(inputs.spec.ds_config, inputs.accelerator), trial_dir / "ops.log")
    hardware = inputs.space.hardware
    if hardware.nodes_per_trial > 1:
        raise SpaceError("hardware.nodes_per_trial", f"{hardware.nodes_per_trial} nodes: give --address, the cluster")
    result = run_trial(
        inputs.spec, trial_dir, ranks=hardware.gpus_per_trial, accelerator=inputs.accelerator,
        timeout_s=inputs.space.trial.timeout_s, cpus=inputs.cpus or _local_cpus(inputs.space, inputs.accelerator),
    )  # fmt: skip
    return result, software_versions(inputs.accelerator, trial_dir)


def _cluster_trial(
    spec: TrialSpec,
    bundles: list[dict[str, float]],
    ranks_per_node: int,
    accelerator: str,
    timeout_s: float,
    cpus: int | None,
) -> tuple[str, dict[str, bytes], dict[str, str]]:
    """A Ray task in the check's placement group (bundle 0): the trial as the search's trainable runs it, in a
    scratch folder whose files travel back with the result and the node's versions."""
    from tuner.trial.launch import run_trial
    from tuner.trial.nodes import node_name, read_files, run_spanning_trial

    scratch = Path(tempfile.mkdtemp(prefix="tuner-check-"))
    try:
        if len(bundles) > 1:
            result = run_spanning_trial(
                spec, scratch, bundles=bundles, ranks_per_node=ranks_per_node, accelerator=accelerator,
                timeout_s=timeout_s,
            )  # fmt: skip
        else:
            result = run_trial(
                spec, scratch, ranks=ranks_per_node, accelerator=accelerator, timeout_s=timeout_s,
                cpus=cpus or int(bundles[0]["CPU"]),
            ).placed([node_name()])  # fmt: skip
        return result.to_json(), read_files(scratch), software_versions(accelerator, scratch)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def run_on_cluster(inputs: Inputs, trial_dir: Path, address: str) -> tuple[TrialResult, dict[str, str]]:
    """The trial in a placement group of the Ray cluster at `address`, the search's bundles and strategy."""
    import ray
    from ray.util.placement_group import placement_group, remove_placement_group
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    from tuner.dsconfig import jit_ops
    from tuner.placement import strategy
    from tuner.search import placement
    from tuner.trial.failures import LAUNCH_ERROR
    from tuner.trial.nodes import prebuild_everywhere, write_files

    space, accelerator = inputs.space, inputs.accelerator
    bundles, _ = placement(space, accelerator, address)
    trial_dir.mkdir(parents=True, exist_ok=True)
    prebuild_everywhere(accelerator, sorted(jit_ops(inputs.spec.ds_config, accelerator)), trial_dir / "ops.log")
    group = placement_group(bundles, strategy=strategy(bundles))
    try:
        ready, _ = ray.wait([group.ready()], timeout=space.trial.timeout_s)
        if not ready:
            reason = f"the cluster gave no {len(bundles)}-bundle placement within {space.trial.timeout_s:g} s"
            return TrialResult.failed(LAUNCH_ERROR, reason), software_versions(accelerator)
        first = bundles[0]
        task = ray.remote(_cluster_trial).options(
            num_cpus=first.get("CPU", 0), num_gpus=first.get("GPU", 0),
            resources={k: v for k, v in first.items() if k not in ("CPU", "GPU")}, max_retries=0,
            scheduling_strategy=PlacementGroupSchedulingStrategy(
                group, placement_group_bundle_index=0, placement_group_capture_child_tasks=True
            ),
        )  # fmt: skip
        raw, files, versions = ray.get(
            task.remote(
                inputs.spec, bundles, space.hardware.ranks_per_node, accelerator, space.trial.timeout_s, inputs.cpus
            )
        )
    finally:
        remove_placement_group(group)
    write_files(trial_dir, files)
    result = TrialResult.from_json(raw).moved(str(trial_dir / "trial.log"), socket.gethostname())
    return result, versions


def record_check(url: str, recorded: Recorded, spec: TrialSpec, result: TrialResult, attrs: dict[str, Any]) -> int:
    """Keep the check as a trial of the original study: COMPLETE with its figures (FAIL with its failure), the
    exported trial's params, and `check_of`, which ranking, results and the searcher read to leave it out of
    what is "best" (tuner.store.measured_trials). Returns its number."""
    import optuna
    from optuna.trial import TrialState, create_trial

    from tuner.ranking import objective_names
    from tuner.store import CHECK_OF, load_study, open_storage

    storage = open_storage(url, "--storage", existing=True)
    study = load_study(storage, recorded.study, "--provenance")
    original = next((t for t in study.get_trials(deepcopy=False) if t.number == recorded.trial), None)
    if original is None:
        raise SpaceError("--provenance", f"study {recorded.study!r} has no trial {recorded.trial} to record a check of")
    values = [result.figures.get(name) for name in objective_names(study)]
    complete = result.ok and all(isinstance(v, float) for v in values)
    user_attrs = {
        **result.user_attrs(), **attrs, CHECK_OF: recorded.trial, "point": original.user_attrs.get("point"),
        "ds_config": spec.ds_config,
    }  # fmt: skip
    frozen = create_trial(
        state=TrialState.COMPLETE if complete else TrialState.FAIL,
        params=original.params,
        distributions=original.distributions,
        values=[float(v) for v in values if v is not None] if complete else None,
        user_attrs=user_attrs,
    )
    study_id = storage.get_study_id_from_name(study.study_name)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return storage.get_trial_number_from_id(storage.create_new_trial(study_id, template_trial=frozen))
