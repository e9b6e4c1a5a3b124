"""A trial on Ray's nodes: ranks over several nodes, and every node's files brought back to the head.

The Tune trainable holds the trial's placement group (one bundle per node, tuner.placement). It starts node
0's ranks itself and every other node's ranks as a Ray task in that node's bundle; all of them meet at node
0 (torchrun's static rendezvous), so a configuration is measured with real inter-node communication. Each
remote node runs in a scratch folder of its own and returns its log and error files, which the trainable
writes into the trial's folder beside node 0's. A trainable on another node than `tuner search` ships the
whole folder to the run folder on the search's node in the same way: every trial's logs are on the head.
"""

from __future__ import annotations

import shutil
import socket
import tempfile
from pathlib import Path

from tuner.result import TrialResult
from tuner.trial.launch import NodeRun, Rendezvous, outcome, run_node, tail_of
from tuner.trial.ops import prebuild_ops
from tuner.trial.spec import TrialSpec

REMOTE_GRACE_S = 60.0  # after node 0's ranks end, how long the other nodes get to end theirs and report
MAX_FILE_BYTES = 4 * 1024**2  # a log is cut to its last 4 MB when it travels between nodes


def free_port() -> int:
    """A TCP port free on this node now, for the rendezvous (torchrun binds it a moment later)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("", 0))
        return int(sock.getsockname()[1])


def node_name() -> str:
    """This node as the store records it: its IP address and the start of Ray's node id."""
    import ray

    return f"{ray.util.get_node_ip_address()} ({ray.get_runtime_context().get_node_id()[:8]})"


def read_files(folder: Path) -> dict[str, bytes]:
    """The files of a trial folder (not its subfolders), logs cut to their end, to send to another node."""
    files = {}
    for path in sorted(folder.iterdir()):
        if path.is_file():
            data = path.read_bytes()
            files[path.name] = data if len(data) <= MAX_FILE_BYTES else b"[...]\n" + data[-MAX_FILE_BYTES:]
    return files


def write_files(folder: Path, files: dict[str, bytes]) -> str:
    """Write files received from another node into `folder`; returns the folder."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (folder / Path(name).name).write_bytes(data)  # a bare name: nothing lands outside the folder
    return str(folder)


def _remote_node(
    spec: TrialSpec, rendezvous: Rendezvous, ranks: int, accelerator: str, timeout_s: float, cpus: int
) -> tuple[str, NodeRun, dict[str, bytes]]:
    """A Ray task: run one non-zero node's ranks in a scratch folder; return the node, how it ended, its files."""
    scratch = Path(tempfile.mkdtemp(prefix="tuner-node-"))
    try:
        log_name = f"node{rendezvous.node_rank}.log"
        run = run_node(
            spec, scratch, ranks=ranks, accelerator=accelerator, timeout_s=timeout_s,
            rendezvous=rendezvous, cpus=cpus, log_name=log_name,
        )  # fmt: skip
        files = {k: v for k, v in read_files(scratch).items() if k == log_name or k.startswith("error_rank")}
        return node_name(), run, files
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def run_spanning_trial(
    spec: TrialSpec,
    trial_dir: Path,
    *,
    bundles: list[dict[str, float]],
    ranks_per_node: int,
    accelerator: str,
    timeout_s: float,
) -> TrialResult:
    """Run a trial whose ranks span `len(bundles)` nodes of the trainable's placement group."""
    import ray
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    group = ray.util.get_current_placement_group()
    assert group is not None, "a trial over several nodes runs inside its Tune placement group"
    nodes = len(bundles)
    address, port = ray.util.get_node_ip_address(), free_port()
    task = ray.remote(_remote_node)
    pending = []
    for index in range(1, nodes):
        bundle = bundles[index]
        pending.append(
            task.options(
                num_cpus=bundle.get("CPU", 0),
                num_gpus=bundle.get("GPU", 0),
                resources={k: v for k, v in bundle.items() if k not in ("CPU", "GPU")},
                scheduling_strategy=PlacementGroupSchedulingStrategy(group, placement_group_bundle_index=index),
                max_retries=0,
            ).remote(
                spec, Rendezvous(nodes, index, address, port), ranks_per_node, accelerator, timeout_s,
                int(bundle.get("CPU", 1)),
            )
        )  # fmt: skip
    cpus = int(bundles[0].get("CPU", 1))
    local = run_node(
        spec, trial_dir, ranks=ranks_per_node, accelerator=accelerator, timeout_s=timeout_s,
        rendezvous=Rendezvous(nodes, 0, address, port), cpus=cpus,
    )  # fmt: skip
    where = [node_name()]
    ready, late = ray.wait(pending, num_returns=len(pending), timeout=REMOTE_GRACE_S)
    for ref in late:
        ray.cancel(ref, force=True)  # its torchrun dies with the task's worker (tuner.trial.guard)
    timed_out = local.timed_out
    for index, ref in enumerate(pending, start=1):
        if ref not in ready:
            where.append(f"node {index}: no report within {REMOTE_GRACE_S:g} s of node 0's end")
            continue
        try:
            name, run, files = ray.get(ref)
        except Exception as exc:  # the task itself failed (its node died): the trial failed, not the tuner
            where.append(f"node {index}: {type(exc).__name__}")
            continue
        write_files(trial_dir, files)
        where.append(name)
        timed_out = timed_out or run.timed_out
    run = NodeRun(local.returncode, timed_out, local.duration_s, local.launch_error)
    result = outcome(spec, trial_dir, run, ranks=ranks_per_node * nodes, timeout_s=timeout_s, accelerator=accelerator)
    return result.placed(where)


def _save(folder: str, files: dict[str, bytes]) -> str:
    return write_files(Path(folder), files)


def ship_to_head(folder: Path, head_node: str, head_folder: Path) -> str:
    """Copy a trial folder made on this node into `head_folder` on the search's node; returns where it is."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    save = ray.remote(_save).options(
        num_cpus=0, scheduling_strategy=NodeAffinitySchedulingStrategy(head_node, soft=False), max_retries=2
    )
    return str(ray.get(save.remote(str(head_folder), read_files(folder))))


def _prebuild_here(accelerator: str, ops: list[str]) -> tuple[str, str | None]:
    scratch = Path(tempfile.mkdtemp(prefix="tuner-ops-"))
    problem = prebuild_ops(accelerator, ops, scratch / "prebuild_ops.log")
    if problem:  # the log goes with the scratch folder: keep its last line in the message
        problem = problem.replace(
            str(scratch / "prebuild_ops.log"), "the log's end: " + tail_of(scratch / "prebuild_ops.log", 1)
        )
    shutil.rmtree(scratch, ignore_errors=True)
    return node_name(), problem


def prebuild_everywhere(accelerator: str, ops: list[str], log_path: Path) -> list[str]:
    """Compile DeepSpeed's JIT ops `ops` on this node and on every other alive node of the cluster, at once.

    Returns one line per node where it failed (the trials needing the op then fail there and say so).
    """
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    here = ray.get_runtime_context().get_node_id()
    others = [n["NodeID"] for n in ray.nodes() if n.get("Alive") and n["NodeID"] != here]
    task = ray.remote(_prebuild_here)
    refs = [
        task.options(num_cpus=0, scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=False)).remote(
            accelerator, ops
        )
        for node in others
    ]
    problems = []
    local = prebuild_ops(accelerator, ops, log_path)
    if local:
        problems.append(local)
    for ref in refs:
        try:
            name, problem = ray.get(ref)
        except Exception as exc:  # a node that died: its trials will fail there and say why
            problems.append(f"building DeepSpeed ops on another node failed: {type(exc).__name__}")
            continue
        if problem:
            problems.append(f"on {name}: {problem.splitlines()[0]}")
    return problems
