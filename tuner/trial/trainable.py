"""The Tune trainable: one trial on Ray's worker, in a module that imports only what running a trial needs.

Tune pickles the trainable by reference, so the worker that runs each trial imports the module that defines
it. `tuner.search` pulls in Optuna, SQLAlchemy, the samplers and the memory model: 2-4 s more on the way to
the first trial's launch on a busy 2-core machine (benchmarks/results/2026-12-01-startup-cpu.md); here only
the launch, the space's schema and Ray are imported.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tuner.points import Point
from tuner.space import Space
from tuner.trial.launch import run_trial
from tuner.trial.nodes import node_name, run_spanning_trial, ship_to_head
from tuner.trial.spec import TrialSpec

RESULT_KEY = "tuner_result"  # the report's key holding the TrialResult (tuner.searcher reads it)


@dataclass(frozen=True)
class TrialContext:
    """What every trial of one search shares; sent to Ray's workers once."""

    space: Space
    accelerator: str
    run_dir: Path
    bundles: tuple[dict[str, float], ...]  # the trial's placement group, one bundle per node
    head_node: str  # Ray's id of the node `tuner search` runs on: every trial's files end up there
    head_host: str


def preimport_trial_modules() -> None:
    """Ray's setup hook for a search's own workers (tuner.ray_start): each imports what a trial's actor needs
    as it starts, before any trial is given to it. Never raises: an import that fails here fails again in the
    trial, which reports it as a failure with its reason; a hook that raised would stop the worker instead."""
    import contextlib

    with contextlib.suppress(Exception):  # this module is imported already: Ray found the hook in it
        import ray.tune  # noqa: F401 (what Tune's trial actor imports first)


def prewarm_trial_worker() -> None:
    """Have Ray start the first trial's worker now, while the search imports Ray Tune and creates its study.

    Tune's trial actors carry a runtime environment of their own (ray/tune/execution/class_cache.py), so a
    worker must be started in that environment to be given one, and it must never have run a task: the raylet
    never gives an actor to a worker that held a task's lease (Worker::GrantLease). So the task asks for a
    resource no node has. It never runs, but its lease request makes the raylet prestart one idle worker in its
    environment (NodeManager::HandleRequestWorkerLease -> WorkerPool::PrestartWorkers), whose imports the
    search's setup hook does (preimport_trial_modules), and the first trial's actor takes it. A task that could
    run started two workers, one of them wasted: 2 CPU-seconds of a 2-core machine's start-up. Called by
    tuner.ray_start as soon as the search's own Ray is up; `end_prewarm` takes the task back before fit().
    """
    import ray

    task = ray.remote(
        num_cpus=0, resources={NEVER_SCHEDULED: 1}, runtime_env={"env_vars": tune_actor_env_vars()}, max_retries=0
    )
    _prewarm_tasks.append(task(preimport_trial_modules).remote())


def end_prewarm() -> None:
    """Cancel the prewarm task (never run): its worker, started already, stays idle for the first actor."""
    import contextlib

    import ray

    while _prewarm_tasks:
        with contextlib.suppress(Exception):  # Ray stopped meanwhile: nothing is left to cancel
            ray.cancel(_prewarm_tasks.pop())


NEVER_SCHEDULED = "tuner_prewarm_never_scheduled"  # a custom resource no node has
_prewarm_tasks: list[Any] = []


# What Ray Tune 2.60 gives its trial actors (ray/tune/execution/class_cache.py: DEFAULT_ENV_VARS, and the driver's
# values of ENV_VARS_TO_PROPAGATE), copied so that the prewarm starts before Ray Tune's 0.6 s import; a worker
# whose variables differ in any way is never given the actor. tests/unit/test_ray_start.py keeps it in step.
TUNE_ACTOR_ENV = {"PL_DISABLE_FORK": "1"}
TUNE_PROPAGATED_ENV = frozenset({
    "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SECURITY_TOKEN", "AWS_SESSION_TOKEN", "NCCL_RAS_ADDR",
    "RAY_CHDIR_TO_TRIAL_DIR", "RAY_TRAIN_CHECKPOINT_UPLOAD_WARN_INTERVAL_S", "RAY_TRAIN_COLLECTIVE_TIMEOUT_S",
    "RAY_TRAIN_COLLECTIVE_WARN_INTERVAL_S", "RAY_TRAIN_ENABLE_CONTROLLER_STRUCTURED_LOGGING",
    "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "RAY_TRAIN_ENABLE_PRINT_PATCH",
    "RAY_TRAIN_ENABLE_STATE_ACTOR_RECONCILIATION", "RAY_TRAIN_ENABLE_V2_MIGRATION_WARNINGS",
    "RAY_TRAIN_ENABLE_WORKER_STRUCTURED_LOGGING", "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S",
    "RAY_TRAIN_PREEMPTION_POLL_INTERVAL_S", "RAY_TRAIN_STATE_ACTOR_RECONCILIATION_INTERVAL_S", "RAY_TRAIN_V2_ENABLED",
    "RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S", "RAY_TRAIN_WORKER_HEALTH_CHECK_TIMEOUT_S",
    "RAY_WARN_BLOCKING_GET_INSIDE_ASYNC", "TORCHFT_LIGHTHOUSE", "TRAIN_COPY_DIRECTORY_CHECKPOINTS_INSTEAD_OF_MOVING",
})  # fmt: skip


def tune_actor_env_vars() -> dict[str, str]:
    """The environment variables of a Tune trial actor started from this driver (its runtime environment)."""
    import os

    return {**TUNE_ACTOR_ENV, **{name: os.environ[name] for name in sorted(TUNE_PROPAGATED_ENV) if name in os.environ}}


def trial_spec(
    space: Space, point: Point, ds_config: dict[str, Any], stop_over_step_s: float | None = None
) -> TrialSpec:
    """What each rank's worker reads; `stop_over_step_s` is the early-stopping limit, if any."""
    return TrialSpec.build(space, point, ds_config, stop_over_step_s)


def run_tune_trial(config: dict[str, Any], context: TrialContext) -> None:
    """One Tune trial: run the DeepSpeed trial and report its TrialResult (never raises for its faults).

    A trainable on another node than the search's runs in a scratch folder and ships it to the run folder.
    """
    import ray
    from ray import tune

    space = context.space
    point = Point.from_params(config["point"])
    spec = trial_spec(space, point, config["ds_config"], config.get("stop_over_step_s"))
    name = f"trial_{config['trial_number']:04d}"
    on_head = ray.get_runtime_context().get_node_id() == context.head_node
    scratch = None if on_head else Path(tempfile.mkdtemp(prefix="tuner-trial-"))
    folder = (scratch or context.run_dir) / name
    try:
        if len(context.bundles) > 1:
            result = run_spanning_trial(
                spec, folder, bundles=list(context.bundles), ranks_per_node=space.hardware.ranks_per_node,
                accelerator=context.accelerator, timeout_s=space.trial.timeout_s,
            )  # fmt: skip
        else:
            cpus = int(context.bundles[0]["CPU"])
            result = run_trial(
                spec, folder, ranks=space.hardware.gpus_per_trial, accelerator=context.accelerator,
                timeout_s=space.trial.timeout_s, cpus=cpus,
            ).placed([node_name()])  # fmt: skip
        on_disk = folder if scratch is None else Path(ship_to_head(folder, context.head_node, context.run_dir / name))
        result = result.moved(str(on_disk / "trial.log"), context.head_host)
    finally:
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)
    report: dict[str, Any] = {RESULT_KEY: result.to_json(), **result.figures}
    tune.report(report)
