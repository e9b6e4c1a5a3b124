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
    """Have Ray start workers for the first trial now, while the search creates its study and Tune sets up.

    Tune's trial actors carry a runtime environment of their own (ray/tune/execution/class_cache.py), so no
    worker started before fit() can take them: the first trial waited for a new process and its imports. A
    task with the same runtime environment makes the raylet start workers for it at once; the task's own
    worker is not given to an actor afterwards, but the raylet starts a second, idle one beside it, and the
    first trial's actor takes that one, its imports done by the search's setup hook (preimport_trial_modules).
    Called by tuner.ray_start as soon as the search's own Ray is up, before the driver imports Ray Tune and
    Optuna: the worker's start (about 1.4 s on 2 cores) is the first trial's longest wait. The task needs no
    CPU, so it never delays a trial; nothing waits for it.
    """
    import ray

    task = ray.remote(num_cpus=0, runtime_env={"env_vars": tune_actor_env_vars()}, max_retries=0)
    task(preimport_trial_modules).remote()


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
