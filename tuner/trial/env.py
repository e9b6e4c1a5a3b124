"""The environment a node's ranks start with: the accelerator forced, and the node's CPUs shared out between them.

The threads matter on GPU nodes too: DeepSpeed's CPU-Adam (optimizer offload) runs on each rank's OpenMP
threads. Ray sets OMP_NUM_THREADS to the CPUs a task holds, and torchrun sets 1 per rank when it is unset;
either way a rank's thread count would not be its share of the CPUs the trial holds on the node.
DeepSpeed's JIT ops are built and loaded in this installation's own folder (tuner.trial.extensions).
"""

from __future__ import annotations

import os

from tuner.trial.extensions import ENV, extensions_dir


def threads_per_rank(cpus: int, ranks: int) -> int:
    """Each rank's share of the node's CPUs that the trial holds (at least one)."""
    return max(1, cpus // max(1, ranks))


def worker_env(accelerator: str, ranks: int, cpus: int | None = None) -> dict[str, str]:
    """The environment of one node's ranks; `cpus` is what the trial holds on this node (default: the machine)."""
    env = dict(os.environ)
    env["PYTHONUNBUFFERED"] = "1"
    env["TOKENIZERS_PARALLELISM"] = "false"
    env["DS_ACCELERATOR"] = "cuda" if accelerator == "cuda" else "cpu"
    env["OMP_NUM_THREADS"] = str(threads_per_rank(cpus or os.cpu_count() or 1, ranks))
    env[ENV] = str(extensions_dir(accelerator, env))
    return env
