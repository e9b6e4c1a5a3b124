"""`tuner search`: Ray Tune schedules real DeepSpeed trials; the study's storage keeps every one.

Each Tune trial is a function trainable holding `gpus_per_trial` GPUs (or CPUs without GPUs) while it
launches the trial's ranks with torchrun; Ray runs as many at once as the resources allow.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from optuna.storages import RDBStorage

from tuner.devices import detect_accelerator, device_budget_gb, visible_gpu_memory_gb
from tuner.dsconfig import build_ds_config, jit_ops
from tuner.errors import SpaceError
from tuner.estimate import ModelShape
from tuner.heartbeat import Heartbeats, HeartbeatSettings
from tuner.notes import name_metrics, note_study
from tuner.orphans import reclaim_orphans
from tuner.placement import (
    TrialShape,
    concurrent_trials,
    default_cpus_per_rank,
    describe_nodes,
    describe_resources,
    strategy,
    trial_bundles,
)
from tuner.plan import EvidenceJudge, MemoryPlanner, device_budget, estimate_setup, prune_margin
from tuner.points import Point, enumerate_points
from tuner.ranking import record_ranking, recording
from tuner.ray_start import connect_ray
from tuner.searcher import StudySearcher
from tuner.space import Space, space_document
from tuner.store import measured_memory, open_storage, redact_text
from tuner.trial.nodes import prebuild_everywhere
from tuner.trial.trainable import TrialContext, end_prewarm, run_tune_trial, trial_spec  # noqa: F401 (trial_spec: a spec as trials get)


@dataclass(frozen=True)
class SearchRun:
    """The study after a search, and whether the search was stopped (Ctrl-C) with trials in flight."""

    study: optuna.Study
    interrupted: bool


def memory_budget(space: Space, accelerator: str) -> float | None:
    """GB per device points must fit: the space's budget (at most the visible GPU's size), else the GPU's size;
    none on CPU by default."""
    card = visible_gpu_memory_gb() if accelerator == "cuda" else None
    return device_budget_gb(space.hardware.device_memory_gb, card)[0]


def script_record(script: str, args: list[str]) -> dict[str, Any]:
    """The user's script as the study keeps it: path, argument template and the hash of the file measured."""
    digest = hashlib.sha256(Path(script).read_bytes()).hexdigest()
    return {"path": script, "args": list(args), "sha256": digest}


def ds_configs_for(space: Space, points: tuple[Point, ...], accelerator: str) -> dict[Point, dict[str, Any]]:
    """The ds_config of every valid point, built before anything runs."""
    return {
        p: build_ds_config(
            space.base_config_dict,
            p,
            global_batch=space.global_batch_of(p.values()) or space.training.global_batch_size,
            ranks=space.hardware.gpus_per_trial,
            precision=space.training.precision,
            accelerator="cuda" if accelerator == "cuda" else "cpu",
        )
        for p in points
    }


def memory_planner(space: Space, accelerator: str, prune: bool | None = None) -> MemoryPlanner | EvidenceJudge:
    """The memory model for this space's architecture, budget and margin; a script that describes no model
    is judged by what its trials showed alone."""
    budget = device_budget(
        memory_budget(space, accelerator), space.hardware.host_memory_gb, prune_margin(space, accelerator), accelerator
    )
    if not space.plans_memory:
        return EvidenceJudge(budget, accelerator, space.search.prune if prune is None else prune)
    return MemoryPlanner(
        shape=known_model_shape(space),
        setup=estimate_setup(space, accelerator),
        budget=budget,
        prune=space.search.prune if prune is None else prune,
    )


def known_model_shape(space: Space) -> ModelShape:
    """The architecture's shape as the memory model counts it; read back when this installation counted the
    same model before (counting imports torch and transformers: seconds before the first trial)."""
    from tuner import verdicts

    options = space.model.options() if space.model else None
    name = verdicts.key("shape", {"config": space.model_config_dict, "options": options})
    shape = verdicts.shape_of(verdicts.read(name))
    if shape is None:
        from tuner.workload.hf_causal_lm import model_shape

        shape = model_shape(space.model_config_dict, options)
        verdicts.write(name, verdicts.shape_answer(shape))
    return shape


def create_study(space: Space, storage: RDBStorage | None = None) -> optuna.Study:
    """The study in the space's storage (created or continued), with the resolved space kept on it."""
    assert space.study is not None and space.storage is not None
    storage = storage or open_storage(space.storage)
    sampler = optuna.samplers.TPESampler(seed=space.search.seed)
    study = optuna.create_study(
        study_name=space.study, storage=storage, directions=space.directions, sampler=sampler, load_if_exists=True
    )
    if [d.name.lower() for d in study.directions] != space.directions:
        raise SpaceError(
            "search.objective", f"study {space.study!r} exists with other objectives or directions; use --study"
        )
    study.set_user_attr("objective", space.search.objective)
    study.set_user_attr("objectives", list(space.objectives))
    study.set_user_attr("space", json.loads(redact_text(space_document(space))))
    name_metrics(study, space.objectives)
    return study


def placement(space: Space, accelerator: str, address: str | None) -> tuple[list[dict[str, float]], int]:
    """The trial's bundles and how many trials Ray's alive nodes run at once; none fitting is bad input."""
    import ray

    hardware = space.hardware
    nodes = [node["Resources"] for node in ray.nodes() if node.get("Alive")]
    per_rank = hardware.cpus_per_rank or (default_cpus_per_rank(nodes) if accelerator == "cuda" else None)
    shape = TrialShape(hardware.gpus_per_trial, hardware.nodes_per_trial, accelerator, hardware.ray_resources, per_rank)
    bundles = trial_bundles(shape, local_cpus=None if address else os.cpu_count() or 1)
    at_once = concurrent_trials(nodes, bundles)
    for name, amount in hardware.ray_resources.items() if at_once == 0 else ():
        if not any(node.get(name, 0.0) >= amount for node in nodes):
            have = f"the Ray cluster has {describe_nodes(nodes)}"
            raise SpaceError("hardware.ray_resources", f"no node has {name}={amount:g} (ray start --resources); {have}")
    if at_once == 0:
        key = "hardware.nodes_per_trial" if len(bundles) > 1 else "hardware.gpus_per_trial"
        bundle = describe_resources(bundles[0])
        need = f"{len(bundles)} nodes with {bundle} each" if len(bundles) > 1 else f"a node with {bundle}"
        raise SpaceError(key, f"a trial needs {need}; the Ray cluster has {describe_nodes(nodes)}")
    return bundles, at_once


def cluster_accelerator(space: Space, local: str) -> str:
    """On a cluster the search's own node may have no GPU: `auto` means cuda when any node has one."""
    import ray

    if space.hardware.accelerator != "auto":
        return space.hardware.accelerator
    return "cuda" if ray.cluster_resources().get("GPU", 0) > 0 else local


def run_search(
    space: Space,
    space_path: Path,
    run_dir: Path,
    on_event: Callable[[str, dict[str, Any]], None],
    address: str | None = None,
    prune: bool | None = None,
    checked: Callable[[], object] | None = None,
) -> SearchRun:
    """Run the search to its end; every launched trial is in the store as COMPLETE or FAIL afterwards.

    `prune` (the CLI's --no-prune) overrides `search.prune`. `checked` waits for the checks the caller
    runs while Ray starts (raising SpaceError for the first problem); nothing is written before it returns.
    """
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # our progress lines, not Ray's tables
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    # Tune's default loggers include TensorBoardX's, whose import pulls in torch: 1.5 s of the driver's CPU
    # between fit() and the first trial on 2 cores. Its CSV and JSON loggers are kept (below), TensorBoard's not.
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    import ray
    from ray import tune
    from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback

    assert space.storage is not None
    enumeration = enumerate_points(space)
    heartbeat = HeartbeatSettings.from_env()
    accelerator = detect_accelerator(space)
    ranks = space.hardware.gpus_per_trial
    # An unreachable store is reported before Ray starts (a SQLite file is opened only once nothing can fail).
    storage = None if space.storage.startswith("sqlite") else open_storage(space.storage)
    connect_ray(address, accelerator, ranks)  # before anything is written: a trial that cannot be placed
    if checked is not None:  # is bad input, as is what the caller's checks find
        checked()
    if address:
        accelerator = cluster_accelerator(space, accelerator)
    bundles, at_once = placement(space, accelerator, address)
    over_card = device_budget_gb(space.hardware.device_memory_gb, visible_gpu_memory_gb())[1]
    if accelerator == "cuda" and over_card:
        on_event("warning", {"message": over_card})
    study = create_study(space, storage)
    study.set_user_attr("space_file", str(space_path.resolve()))
    study.set_user_attr("space_yaml", redact_text(space_path.read_text()))
    if space.workload is not None:  # what export's provenance names: the script, its template, its hash
        study.set_user_attr("script", script_record(space.workload.script, space.workload.args))
    study.set_user_attr("accelerator", accelerator)
    run_dir.mkdir(parents=True, exist_ok=True)
    study.set_user_attr("run_dir", f"{socket.gethostname()}:{run_dir.resolve()}")

    configs = ds_configs_for(space, enumeration.valid, accelerator)
    memory = memory_planner(space, accelerator, prune)
    reclaimed, foreign = reclaim_orphans(study, heartbeat.grace_s)
    if reclaimed or foreign:
        on_event("reclaimed", {"reclaimed": reclaimed, "foreign": foreign, "grace_s": heartbeat.grace_s})
    on_event = recording(study, on_event)  # the ranking kept on the study as each trial ends
    # Every point, then (the sampler's steps) guided's re-measurements and every communication knob value once.
    searcher = StudySearcher(study, space, enumeration.valid, configs, on_event, memory, accelerator=accelerator)
    remaining = searcher.remaining()
    measured = measured_memory(study)
    unfit = [p for p in remaining if memory.judge(p, measured, searcher.state.ran_out()).fits is False]
    on_event(
        "plan",
        {
            "remaining": len(remaining),
            "budget": searcher.budget,
            "accelerator": accelerator,
            "memory_budget_gb": memory.budget.device_gb,
            "predicted_unfit": len(unfit),
            "prune": memory.prune,
        },
    )
    if searcher.budget == 0:
        return SearchRun(study, interrupted=False)

    ops = sorted(set().union(*(jit_ops(config, accelerator) for config in configs.values())))
    on_event("prebuild", {"ops": ops})
    problems = prebuild_everywhere(accelerator, ops, run_dir / "prebuild_ops.log")
    for problem in problems:
        on_event("warning", {"message": problem})

    # Trials never touch the store, and Tune pickles the trainable's parameters into its run folder
    # (tuner.pkl): the storage URL, which may hold a password, stays out of it.
    context = TrialContext(
        space.model_copy(update={"storage": None}), accelerator, run_dir.resolve(), tuple(bundles),
        ray.get_runtime_context().get_node_id(), socket.gethostname(),
    )  # fmt: skip
    resources = tune.PlacementGroupFactory(bundles, strategy=strategy(bundles))
    trainable = tune.with_resources(tune.with_parameters(run_tune_trial, context=context), resources)
    on_event("concurrency", {"trials": at_once, "nodes_per_trial": len(bundles)})
    tuner = tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(
            search_alg=searcher, num_samples=searcher.budget, reuse_actors=True, max_concurrent_trials=at_once
        ),
        run_config=tune.RunConfig(
            name=space.study,
            storage_path=str((run_dir / "ray").resolve()),
            verbose=0,
            log_to_file=True,
            callbacks=[CSVLoggerCallback(), JsonLoggerCallback()],
        ),
    )
    # The searcher's trials in flight (a copy: the thread reads them while Tune changes them).
    beats = Heartbeats(
        study, lambda: [trial for trial, _ in list(searcher.state.in_flight.values())], heartbeat, on_event
    )
    beats.start()
    end_prewarm()  # its worker is started by now, idle in the trial actor's environment
    try:
        tuner.fit()  # Tune turns Ctrl-C into a graceful stop of the running trials
    finally:
        abandoned = searcher.abandon_in_flight("the search stopped before the trial reported")
        beats.stop()
    record_ranking(study)
    note_study(study, space.storage or "")
    # Stopped (Ctrl-C) with a trial in flight, or between two trials (fit() returns early only when stopped).
    return SearchRun(study, interrupted=abandoned > 0 or not searcher.ran_to_the_end())
