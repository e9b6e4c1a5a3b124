"""`tuner search`: Ray Tune schedules real DeepSpeed trials; the study's storage keeps every one.

Each Tune trial is a function trainable holding `gpus_per_trial` GPUs (or CPUs without GPUs) while it
launches the trial's ranks with torchrun; Ray runs as many at once as the resources allow.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna

from tuner.comm import comm_budget
from tuner.dsconfig import build_ds_config
from tuner.errors import SpaceError
from tuner.plan import Budget, MemoryPlanner, estimate_setup, prune_margin
from tuner.points import Point, enumerate_points, grad_accum
from tuner.searcher import REMEASURE_MAX_POINTS, RESULT_KEY, StudySearcher, reclaim_orphans
from tuner.space import Space, space_document
from tuner.store import measured_memory, open_storage, redact_text
from tuner.trial.launch import prebuild_ops, run_trial


@dataclass(frozen=True)
class SearchRun:
    """The study after a search, and whether the search was stopped (Ctrl-C) with trials in flight."""

    study: optuna.Study
    interrupted: bool


@dataclass(frozen=True)
class TrialContext:
    """What every trial of one search shares; sent to Ray's workers once."""

    space: Space
    accelerator: str
    run_dir: Path


def detect_accelerator(space: Space) -> str:
    """`cuda` when asked for or when a GPU is visible, else `cpu` (ranks are CPU processes over gloo)."""
    if space.hardware.accelerator != "auto":
        return space.hardware.accelerator
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def memory_budget(space: Space, accelerator: str) -> float | None:
    """GB per device points must fit: the space's budget, else the visible GPU's size; none on CPU by default."""
    if space.hardware.device_memory_gb is not None:
        return space.hardware.device_memory_gb
    if accelerator == "cuda":
        import torch

        if torch.cuda.is_available():
            return torch.cuda.get_device_properties(0).total_memory / 1024**3
    return None


def trial_spec(
    space: Space, point: Point, ds_config: dict[str, Any], stop_over_step_s: float | None = None
) -> dict[str, Any]:
    """The JSON each rank's worker reads; `stop_over_step_s` is the early-stopping limit, if any."""
    accum = grad_accum(space.training.global_batch_size, point.micro_batch_size, space.hardware.gpus_per_trial)
    return {
        "model_config": space.model_config_dict,
        "sequence_length": space.data.sequence_length,
        "micro_batch_size": point.micro_batch_size,
        "grad_accum": accum,
        "activation_checkpointing": point.activation_checkpointing,
        "warmup_steps": space.trial.warmup_steps,
        "measure_steps": space.trial.measure_steps,
        "seed": space.search.seed,
        "global_batch_size": space.training.global_batch_size,
        "precision": space.training.precision,
        "device_memory_gb": space.hardware.device_memory_gb,
        "peak_tflops": space.hardware.peak_tflops,
        "max_cv": space.trial.max_cv,
        "max_measure_steps": space.trial.measure_cap,
        "ds_config": ds_config,
        "stop_over_step_s": stop_over_step_s,
    }


def _trainable(config: dict[str, Any], context: TrialContext) -> None:
    """One Tune trial: run the DeepSpeed trial and report its TrialResult (never raises for its faults)."""
    from ray import tune

    space = context.space
    point = Point.from_params(config["point"])
    result = run_trial(
        trial_spec(space, point, config["ds_config"], config.get("stop_over_step_s")),
        context.run_dir / f"trial_{config['trial_number']:04d}",
        ranks=space.hardware.gpus_per_trial,
        accelerator=context.accelerator,
        timeout_s=space.trial.timeout_s,
    )
    report: dict[str, Any] = {RESULT_KEY: json.dumps(dataclasses.asdict(result)), **result.figures}
    tune.report(report)


def ds_configs_for(space: Space, points: tuple[Point, ...], accelerator: str) -> dict[Point, dict[str, Any]]:
    """The ds_config of every valid point, built before anything runs."""
    return {
        p: build_ds_config(
            space.base_config_dict,
            p,
            global_batch=space.training.global_batch_size,
            ranks=space.hardware.gpus_per_trial,
            precision=space.training.precision,
            accelerator="cuda" if accelerator == "cuda" else "cpu",
        )
        for p in points
    }


def concurrent_trials(cluster: dict[str, float], per_trial: dict[str, float]) -> int:
    """How many trials the cluster's resources run at once (at least one).

    Tune is capped at this, so a point is chosen only when it can start: otherwise Tune keeps one more trial
    pending and the searcher picks it before the running trial's result is in (guided then launched
    mb16 z1 before learning that mb16 z0 ran out of memory).
    """
    fits = [int(cluster.get(key.upper() if key in ("cpu", "gpu") else key, 0) // need)
            for key, need in per_trial.items() if need > 0]  # fmt: skip
    return max(1, min(fits, default=1))


def memory_planner(space: Space, accelerator: str, prune: bool | None = None) -> MemoryPlanner:
    """The memory model for this space's architecture, budget and margin."""
    from tuner.workload.hf_causal_lm import model_shape

    budget = Budget(memory_budget(space, accelerator), space.hardware.host_memory_gb, prune_margin(space, accelerator))
    return MemoryPlanner(
        shape=model_shape(space.model_config_dict),
        setup=estimate_setup(space, accelerator),
        budget=budget,
        prune=space.search.prune if prune is None else prune,
    )


def create_study(space: Space) -> optuna.Study:
    """The study in the space's storage (created or continued), with the resolved space kept on it."""
    assert space.study is not None and space.storage is not None
    storage = open_storage(space.storage)
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
    return study


def run_search(
    space: Space,
    space_path: Path,
    run_dir: Path,
    on_event: Callable[[str, dict[str, Any]], None],
    address: str | None = None,
    prune: bool | None = None,
) -> SearchRun:
    """Run the search to its end; every launched trial is in the store as COMPLETE or FAIL afterwards.

    `prune` (the CLI's --no-prune) overrides `search.prune`.
    """
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # our progress lines, not Ray's tables
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    import ray
    from ray import tune

    enumeration = enumerate_points(space)
    accelerator = detect_accelerator(space)
    study = create_study(space)
    study.set_user_attr("space_file", str(space_path.resolve()))
    study.set_user_attr("space_yaml", redact_text(space_path.read_text()))
    study.set_user_attr("accelerator", accelerator)
    run_dir.mkdir(parents=True, exist_ok=True)

    configs = ds_configs_for(space, enumeration.valid, accelerator)
    memory = memory_planner(space, accelerator, prune)
    reclaimed, foreign = reclaim_orphans(study)
    if reclaimed or foreign:
        on_event("reclaimed", {"reclaimed": reclaimed, "foreign": foreign})
    searcher = StudySearcher(study, space, enumeration.valid, configs, budget=0, on_event=on_event, memory=memory)
    remaining = searcher.remaining()
    # Every point, guided's re-measurements of the best few, then every communication knob value once.
    repeats = REMEASURE_MAX_POINTS if space.search.sampler == "guided" and space.search.remeasure_within > 0 else 0
    most = len(remaining) + repeats + comm_budget(space.space.comm_lists())
    searcher.budget = min(space.search.max_trials or most, most)
    measured = measured_memory(study)
    unfit = [p for p in remaining if memory.judge(p, measured, searcher.ran_out()).fits is False]
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

    need_cpu_adam = any(p.offload_optimizer == "cpu" for p in remaining)
    on_event("prebuild", {})
    problem = prebuild_ops(accelerator, need_cpu_adam, run_dir / "prebuild_ops.log")
    if problem:
        on_event("warning", {"message": problem})

    ranks = space.hardware.gpus_per_trial
    resources: dict[str, float] = {"cpu": 1, "gpu": ranks} if accelerator == "cuda" else {"cpu": ranks}
    if accelerator == "cpu" and not address:
        # Each rank's threads are sized to share this machine's cores (worker_env), so a CPU trial holds all of
        # them: two one-rank trials at once on 2 cores measured mb32 z0 at 933 tokens/s; alone, DeepSpeed's
        # autotuner measured it at 6,223.
        resources = {"cpu": max(os.cpu_count() or 1, ranks)}
    if not ray.is_initialized():
        init_kwargs: dict[str, Any] = {
            "include_dashboard": False,
            "log_to_driver": False,
            "logging_level": "ERROR",
            "configure_logging": True,
        }
        if address:
            init_kwargs["address"] = address
        elif accelerator == "cpu":
            init_kwargs["num_cpus"] = max(os.cpu_count() or 1, ranks)  # a trial's ranks must fit somewhere
        ray.init(**init_kwargs)
    # Trials never touch the store, and Tune pickles the trainable's parameters into its run folder
    # (tuner.pkl): the storage URL, which may hold a password, stays out of it.
    context = TrialContext(space.model_copy(update={"storage": None}), accelerator, run_dir.resolve())
    trainable = tune.with_resources(tune.with_parameters(_trainable, context=context), resources)
    at_once = concurrent_trials(ray.cluster_resources(), resources)
    on_event("concurrency", {"trials": at_once})
    tuner = tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(
            search_alg=searcher, num_samples=searcher.budget, reuse_actors=True, max_concurrent_trials=at_once
        ),
        run_config=tune.RunConfig(
            name=space.study, storage_path=str((run_dir / "ray").resolve()), verbose=0, log_to_file=True
        ),
    )
    try:
        tuner.fit()  # Tune turns Ctrl-C into a graceful stop of the running trials
    finally:
        abandoned = searcher.abandon_in_flight("the search stopped before the trial reported")
    return SearchRun(study, interrupted=abandoned > 0)
