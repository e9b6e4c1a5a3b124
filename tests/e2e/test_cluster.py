"""A Ray cluster of two nodes and a PostgreSQL store: two searches at once, one with trials spanning the nodes.

The cluster is real: `ray start --head` and a second `ray start --address` node process with resources of its
own, on this machine. PostgreSQL is the machine's (127.0.0.1:5432, database `test`). The storage URL carries
a password (trust authentication ignores it) that must appear in no output and no file.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import optuna
import psutil
import pytest
from optuna.trial import TrialState

from tests.conftest import TINY_GPT2
from tests.e2e.test_cli import dashboard_study, free_port, write_space

SECRET = "s3cret-Pw9"
RAY_TOKEN = secrets.token_hex(16)  # the cluster runs with Ray's token authentication, as the README advises
URL = f"postgresql+psycopg2://postgres:{SECRET}@127.0.0.1:5432/test"
BIN = Path(sys.executable).parent

BASE: dict[str, Any] = {
    "model": {"config": TINY_GPT2},
    "data": {"sequence_length": 64},
    "training": {
        "global_batch_size": 8,
        "precision": "fp32",
        "base_config": {"optimizer": {"type": "AdamW", "params": {"lr": 0.0002}}},
    },
    "search": {"sampler": "grid"},
    "trial": {"warmup_steps": 1, "measure_steps": 2, "timeout_s": 240},
}


def env() -> dict[str, str]:
    environ = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": RAY_TOKEN}
    environ.pop("TUNER_STORAGE", None)
    environ.pop("RAY_ADDRESS", None)
    return environ


def ray_cmd(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BIN / "ray"), *args], env=env(), capture_output=True, text=True, timeout=timeout,
                          check=False)  # fmt: skip


@pytest.fixture(scope="module")
def postgres() -> str:
    try:
        optuna.storages.RDBStorage(URL)
    except Exception as exc:
        if os.environ.get("CI"):
            raise AssertionError(f"CI must run the cluster tests, but PostgreSQL is not reachable: {exc}") from exc
        pytest.skip(f"PostgreSQL on 127.0.0.1:5432 (database test) is not reachable: {exc}")
    return URL


@pytest.fixture(scope="module")
def cluster() -> Iterator[dict[str, str]]:
    """A head node (2 CPUs) and a second node (2 CPUs and 2 of a custom resource `second`); stopped after."""
    port = free_port()
    head = ray_cmd("start", "--head", "--port", str(port), "--num-cpus", "2", "--include-dashboard", "false",
                   "--disable-usage-stats")  # fmt: skip
    try:
        assert head.returncode == 0, head.stdout + head.stderr
        second = ray_cmd("start", "--address", f"127.0.0.1:{port}", "--num-cpus", "2", "--resources",
                         '{"second": 2}', "--disable-usage-stats")  # fmt: skip
        assert second.returncode == 0, second.stdout + second.stderr
        code = (
            f"import json, ray; ray.init(address='127.0.0.1:{port}', logging_level='ERROR'); "
            "print(json.dumps({n['NodeID']: n['Resources'].get('second', 0) for n in ray.nodes() if n['Alive']}))"
        )
        probe = subprocess.run([sys.executable, "-c", code], env=env(), capture_output=True, text=True, timeout=120,
                               check=True)  # fmt: skip
        nodes = json.loads(probe.stdout.strip().splitlines()[-1])
        assert len(nodes) == 2, nodes
        yield {
            "address": f"127.0.0.1:{port}",
            "head": next(n for n, s in nodes.items() if not s),
            "second": next(n for n, s in nodes.items() if s),
        }
    finally:
        stopped = ray_cmd("stop", "--force")
        assert stopped.returncode == 0, stopped.stderr
        with pytest.raises(OSError):  # the head's port no longer answers
            socket.create_connection(("127.0.0.1", port), timeout=5).close()


def search(space: Path, cwd: Path, address: str, storage_flag: bool) -> subprocess.Popen[str]:
    """`tuner search` on the cluster; the store comes from --storage or from TUNER_STORAGE."""
    environ = env()
    args = [str(BIN / "tuner"), "search", str(space), "--address", address]
    if storage_flag:
        args += ["--storage", URL]
    else:
        environ["TUNER_STORAGE"] = URL
    return subprocess.Popen(args, cwd=cwd, env=environ, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def tuner(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BIN / "tuner"), *args, "--storage", URL], cwd=cwd, env=env(), capture_output=True,
                          text=True, timeout=300, check=False)  # fmt: skip


def node_id(entry: str) -> str:
    """The start of Ray's node id from a `nodes` entry such as '10.0.0.1 (1a2b3c4d)'."""
    return entry.rsplit("(", 1)[1].rstrip(")")


def test_two_searches_share_a_two_node_cluster_and_postgresql(
    tmp_path: Path, postgres: str, cluster: dict[str, str], cpu_ops: None
) -> None:
    tag = uuid.uuid4().hex[:8]
    span_name, second_name = f"span-{tag}", f"second-{tag}"
    span = write_space(tmp_path, {
        **BASE, "study": span_name,
        "hardware": {"gpus_per_trial": 2, "nodes_per_trial": 2},  # one rank on each node
        "space": {"micro_batch_size": [2], "zero_stage": [0, 3]},
    }, "span.yaml")  # fmt: skip
    pinned = write_space(tmp_path, {
        **BASE, "study": second_name,
        "hardware": {"gpus_per_trial": 1, "ray_resources": {"second": 1}},  # only the second node has it
        "space": {"micro_batch_size": [2, 4], "zero_stage": [1]},
    }, "second.yaml")  # fmt: skip
    try:
        wrong = {**env(), "RAY_AUTH_TOKEN": "not-the-token"}
        refused = subprocess.run([str(BIN / "tuner"), "search", str(span), "--address", cluster["address"],
                                  "--storage", f"sqlite:///{tmp_path / 'refused.db'}"], cwd=tmp_path, env=wrong,
                                 capture_output=True, text=True, timeout=300, check=False)  # fmt: skip
        assert refused.returncode == 2, refused.stdout + refused.stderr
        assert refused.stderr.strip().splitlines()[-1].startswith("error: --address: cannot join the Ray cluster")
        assert not (tmp_path / "refused.db").exists()

        started = time.monotonic()
        runs = [search(span, tmp_path, cluster["address"], False), search(pinned, tmp_path, cluster["address"], True)]
        outputs = [run.communicate(timeout=900) for run in runs]
        for run, (stdout, stderr) in zip(runs, outputs, strict=True):
            assert run.returncode == 0, stdout[-3000:] + stderr[-3000:]
        print(f"two searches on the cluster: {time.monotonic() - started:.0f} s")

        studies = {name: optuna.load_study(study_name=name, storage=postgres) for name in (span_name, second_name)}
        for study in studies.values():
            assert study.trials and all(t.state in (TrialState.COMPLETE, TrialState.FAIL) for t in study.trials)
            assert all(t.user_attrs.get("failure_reason") for t in study.trials if t.state == TrialState.FAIL)
            for trial in study.trials:  # every trial's log is on this (the head's) disk, where the store says
                log = Path(trial.user_attrs["log_path"])
                assert log.is_file() and tmp_path in log.parents, log

        spanning = [t for t in studies[span_name].trials if t.state == TrialState.COMPLETE]
        assert spanning, "no trial over two nodes completed"
        for trial in studies[span_name].trials:
            ids = [node_id(n) for n in trial.user_attrs["nodes"]]
            assert sorted(ids) == sorted([cluster["head"][:8], cluster["second"][:8]]), ids  # one rank per node
            assert (Path(trial.user_attrs["log_path"]).parent / "node1.log").is_file()  # the other node's log
        for trial in studies[second_name].trials:  # ran on the second node, its folder shipped to the head
            assert [node_id(n) for n in trial.user_attrs["nodes"]] == [cluster["second"][:8]]
            assert (Path(trial.user_attrs["log_path"]).parent / "spec.json").is_file()

        # Review and hand-off on PostgreSQL.
        table = tuner("results", "--study", span_name, "--format", "json", cwd=tmp_path)
        assert table.returncode == 0, table.stderr
        rows = json.loads(table.stdout)
        assert len(rows) == len(studies[span_name].trials)
        assert all(row["nodes"].count("(") == 2 and row["log_host"] for row in rows)  # the table says where
        exported = tuner("export", "--study", span_name, "--output", str(tmp_path / "out" / "ds_config.json"),
                         cwd=tmp_path)  # fmt: skip
        assert exported.returncode == 0, exported.stderr
        assert json.loads((tmp_path / "out" / "ds_config.json").read_text())["train_batch_size"] == 8
        report = tuner("report", "--study", second_name, "--output", str(tmp_path / "report.html"), cwd=tmp_path)
        assert report.returncode == 0 and (tmp_path / "report.html").stat().st_size > 100_000, report.stderr
        port = free_port()
        dashboard = subprocess.Popen([str(BIN / "tuner"), "dashboard", "--storage", URL, "--port", str(port)],
                                     env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
        try:
            detail = dashboard_study(port, span_name)
            assert len(detail["trials"]) == len(studies[span_name].trials)
        finally:
            dashboard.terminate()
            dashboard.wait(timeout=30)

        texts = [text for pair in outputs for text in pair] + [table.stdout, exported.stdout, report.stdout]
        leaked = [t[:200] for t in texts if SECRET in t]
        leaked += [str(p) for p in tmp_path.rglob("*") if p.is_file() and SECRET.encode() in p.read_bytes()]
        assert not leaked, leaked[:5]
        for study in studies.values():
            assert SECRET not in json.dumps(study.user_attrs) + json.dumps([t.user_attrs for t in study.trials])
    finally:
        for name in (span_name, second_name):
            with contextlib.suppress(KeyError):  # a search that failed early made no study
                optuna.delete_study(study_name=name, storage=postgres)


SPANNING_TRIAL = """
import dataclasses, json, sys
from pathlib import Path
import ray
from ray.util.placement_group import placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy
from tuner.trial.nodes import run_spanning_trial
from tuner.trial.spec import TrialSpec

address, spec_path, trial_dir = sys.argv[1:]
ray.init(address=address, logging_level="ERROR")
spec = TrialSpec.from_json(Path(spec_path).read_text())
bundles = [{"CPU": 1.0}, {"CPU": 1.0}]
group = placement_group(bundles, strategy="STRICT_SPREAD")
ray.get(group.ready())

@ray.remote(num_cpus=1)
def trial():
    result = run_spanning_trial(spec, Path(trial_dir), bundles=bundles, ranks_per_node=1, accelerator="cpu",
                                timeout_s=180)
    return json.loads(result.to_json())

where = PlacementGroupSchedulingStrategy(group, placement_group_bundle_index=0,
                                         placement_group_capture_child_tasks=True)
print(json.dumps(ray.get(trial.options(scheduling_strategy=where).remote())))
"""


def test_a_spanning_trial_that_fails_brings_back_every_nodes_error_and_leaves_no_rank(
    tmp_path: Path, cluster: dict[str, str], cpu_ops: None
) -> None:
    from tests.integration.test_trials import processes_of, spec_for
    from tuner.points import Point

    spec = spec_for(Point(2, 1), precision="fp32", measure_steps=1)
    spec.ds_config["train_batch_size"] = 9  # not micro x accumulation x ranks: DeepSpeed refuses it on every rank
    (tmp_path / "spec.json").write_text(spec.to_json())
    trial_dir = tmp_path / "trial"
    done = subprocess.run([sys.executable, "-c", SPANNING_TRIAL, cluster["address"], str(tmp_path / "spec.json"),
                           str(trial_dir)], env=env(), capture_output=True, text=True, timeout=600, check=False,
                          cwd=Path(__file__).resolve().parents[2])  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["failure_category"] == "invalid_config", result
    assert "train_batch_size" in result["failure_reason"]
    assert sorted(node_id(n) for n in result["nodes"]) == sorted([cluster["head"][:8], cluster["second"][:8]])
    assert {"error_rank0.json", "error_rank1.json", "node1.log", "trial.log"} <= {p.name for p in trial_dir.iterdir()}
    assert "--- node1.log ---" in result["log_tail"]  # the other node's log is part of what the store keeps
    assert not processes_of(trial_dir)
    remote = [q for q in psutil.process_iter(["cmdline"]) if "tuner-node-" in " ".join(q.info["cmdline"] or [])]
    assert not remote, remote  # nor on node 1, whose ranks ran in a scratch folder
