"""The real CLI end to end: `tuner search` (Ray Tune + real DeepSpeed trials + SQLite), `tuner export`,
and the exported config training under the `deepspeed` launcher. Plus a few bad inputs through the console script.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import optuna
import pytest
import yaml
from optuna.trial import TrialState

from tests.conftest import REPO, TINY_GPT2

SPACE: dict[str, Any] = {
    "study": "e2e",
    "model": {"config": TINY_GPT2},
    "data": {"sequence_length": 64},
    "training": {
        "global_batch_size": 8,
        "precision": "fp32",  # bf16 is emulated, 10-20x slower, on CPUs without AVX512-BF16
        "base_config": {"optimizer": {"type": "AdamW", "params": {"lr": 0.0002}}, "gradient_clipping": 1.0},
    },
    "hardware": {"gpus_per_trial": 2},
    "space": {"micro_batch_size": [2], "zero_stage": [0, 3], "offload_optimizer": ["none", "cpu"]},
    "search": {"sampler": "grid"},
    "trial": {"warmup_steps": 1, "measure_steps": 2, "timeout_s": 240},
}


def tuner(*args: str, cwd: Path, timeout: float = 900) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("TUNER_STORAGE", None)
    return subprocess.run(
        [str(Path(sys.executable).parent / "tuner"), *args],  # the console script, as a user runs it
        cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False,
    )  # fmt: skip


def write_space(tmp_path: Path, raw: dict[str, Any], name: str = "space.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(raw))
    return path


def test_search_then_export_then_train(tmp_path: Path, cpu_ops: None) -> None:
    space_path = write_space(tmp_path, SPACE)
    done = tuner("search", str(space_path), cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "3 valid point(s); 1 dropped" in done.stdout
    assert "offload_optimizer needs zero_stage 1 or higher" in done.stdout
    assert "[3/3] trial" in done.stdout
    assert "best: trial" in done.stdout

    url = f"sqlite:///{tmp_path / 'tuner.sqlite3'}"
    study = optuna.load_study(study_name="e2e", storage=url)
    trials = study.get_trials()
    assert len(trials) == 3
    # A 2-layer GPT-2 fits every point of this space on CPU: each must complete.
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 3, [t.user_attrs.get("failure_reason") for t in trials]
    points = {(t.params["zero_stage"], t.params.get("offload_optimizer", "none")) for t in trials}
    assert points == {(0, "none"), (3, "none"), (3, "cpu")}
    for t in trials:
        assert Path(t.user_attrs["log_path"]).is_file()
        assert t.user_attrs["ds_config"]["zero_optimization"]["stage"] == t.params["zero_stage"]
        assert t.value == t.user_attrs["tokens_per_s"] > 0
        assert t.user_attrs["peak_mem_gb"] > 0
        assert t.user_attrs["tflops_per_device"] > 0 and 0 < t.user_attrs["overhead_share"] < 1
        assert "failure_category" not in t.user_attrs
    assert study.user_attrs["space"]["training"]["global_batch_size"] == 8

    # Running the same command again measures nothing twice.
    again = tuner("search", str(space_path), cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert "0 point(s) to run" in again.stdout
    assert len(optuna.load_study(study_name="e2e", storage=url).get_trials()) == 3

    out = tmp_path / "export" / "ds_config.json"
    exported = tuner("export", "--study", "e2e", "--output", str(out), cwd=tmp_path)
    assert exported.returncode == 0, exported.stderr
    config = json.loads(out.read_text())
    assert config == study.best_trial.user_attrs["ds_config"]
    assert config["optimizer"]["params"]["lr"] == 0.0002 and config["gradient_clipping"] == 1.0
    assert config["train_batch_size"] == 8
    assert config["train_micro_batch_size_per_gpu"] * config["gradient_accumulation_steps"] * 2 == 8
    prov = json.loads((out.parent / "ds_config.provenance.json").read_text())
    assert prov["study"] == "e2e" and prov["trial"] == study.best_trial.number
    assert prov["figures"]["tokens_per_s"] == study.best_value
    assert {"torch", "deepspeed", "tuner"} <= set(prov["versions"])
    assert "global_batch_size: 8" in prov["space_yaml"]

    assert prov["model_config"] == TINY_GPT2
    train_exported(out, tmp_path, sequence_length=64, steps=2)

    assert_dashboard_shows(url, "e2e", study.best_trial.number)


def train_exported(config: Path, cwd: Path, sequence_length: int, steps: int) -> None:
    """Train an exported config (and its provenance beside it) with examples/train.py on 2 CPU ranks through
    the `deepspeed` launcher, as a user would; every step must run."""
    train = subprocess.run(
        [
            sys.executable, "-m", "deepspeed.launcher.runner", "--num_gpus", "2", "--master_port", str(free_port()),
            str(REPO / "examples" / "train.py"), "--deepspeed_config", str(config),
            "--model-config", str(config.parent / "ds_config.provenance.json"),
            "--sequence-length", str(sequence_length), "--steps", str(steps),
        ],
        cwd=cwd, env={**os.environ, "DS_ACCELERATOR": "cpu"},
        capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert train.returncode == 0, train.stdout[-3000:] + train.stderr[-3000:]
    assert f"step {steps}/{steps} loss" in train.stdout


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def dashboard_study(port: int, study_name: str) -> dict[str, Any]:
    """The study's detail (with its trials) from optuna-dashboard's HTTP API, once the server answers."""
    studies = None
    for _ in range(60):
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies", timeout=5) as resp:
                studies = json.load(resp)["study_summaries"]
            break
        except OSError:
            time.sleep(0.5)
    assert studies is not None, "optuna-dashboard did not answer"
    study_id = next(s["study_id"] for s in studies if s["study_name"] == study_name)
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies/{study_id}?after=0", timeout=10) as resp:
        return dict(json.load(resp))


def assert_dashboard_shows(url: str, study_name: str, trial_number: int) -> None:
    """optuna-dashboard on the same store lists the study and the trial's user attributes."""
    port = free_port()
    dashboard = Path(sys.executable).parent / "optuna-dashboard"
    proc = subprocess.Popen(
        [str(dashboard), url, "--host", "127.0.0.1", "--port", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        detail = dashboard_study(port, study_name)
        trial = next(t for t in detail["trials"] if t["number"] == trial_number)
        keys = {a["key"] for a in trial["user_attrs"]}
        assert {"tokens_per_s", "peak_mem_gb", "step_time_s", "ds_config", "log_path"} <= keys
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_a_two_objective_search_keeps_a_pareto_front_in_the_store(tmp_path: Path, cpu_ops: None) -> None:
    raw = {
        **SPACE,
        "study": "pareto",
        "hardware": {"gpus_per_trial": 1},  # one rank: trials start faster
        "space": {"micro_batch_size": [1, 4], "zero_stage": [0, 2]},
        "search": {"objective": ["tokens_per_s", "peak_mem_gb"], "max_trials": 3, "seed": 1},
    }
    done = tuner("search", str(write_space(tmp_path, raw)), cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Pareto front over tokens_per_s, peak_mem_gb" in done.stdout

    from tuner.store import measured_trials, pareto_front

    study = optuna.load_study(study_name="pareto", storage=f"sqlite:///{tmp_path / 'tuner.sqlite3'}")
    assert [d.name for d in study.directions] == ["MAXIMIZE", "MINIMIZE"]
    complete = measured_trials(study, (TrialState.COMPLETE,))
    front = pareto_front(study)
    assert front and len(complete) <= 3
    for t in front:
        assert t.values == [t.user_attrs["tokens_per_s"], t.user_attrs["peak_mem_gb"]]
        dominated_by = [
            o.number for o in complete
            if o.values[0] >= t.values[0] and o.values[1] <= t.values[1] and o.values != t.values
        ]  # fmt: skip
        assert not dominated_by, f"trial {t.number} on the front is dominated by {dominated_by}"

    pick = min(front, key=lambda t: t.values[1])  # the user with a hard memory ceiling
    out = tmp_path / "lean.json"
    exported = tuner("export", "--study", "pareto", "--trial", str(pick.number), "--output", str(out), cwd=tmp_path)
    assert exported.returncode == 0, exported.stderr
    prov = json.loads((tmp_path / "lean.provenance.json").read_text())
    assert prov["on_pareto_front"] is True and prov["values"]["peak_mem_gb"] == pick.values[1]


# A handful through the installed console script; every bad input is in tests/unit/test_bad_input.py's table.
BAD_INPUTS = [
    pytest.param({"space": {"micro_batch_size": [2], "foo": 1}}, "space.foo: unknown key; allowed here:", id="key"),
    pytest.param({"model": {"config": "no/such/folder"}}, "model.config: no such file", id="model-file"),
    pytest.param({"data": {"source": "no/such.bin"}}, "data.source: no such file or folder", id="data-file"),
    pytest.param(b"model:\n  config: [unclosed\n", "space.yaml: YAML syntax error at line 3", id="yaml"),
    pytest.param(b"study: caf\xe9\n", "space.yaml: not UTF-8 text (byte 0xe9", id="latin-1"),
    pytest.param({"storage": "postgresql://nobody@127.0.0.1:1/none"}, "storage: cannot open storage", id="store"),
    pytest.param(  # transformers' validate_architecture: caught before `tuner search` creates the study
        {"model": {"config": {"model_type": "llama", "hidden_size": 64, "num_attention_heads": 5}}},
        "model.config: transformers rejects it: The hidden size (64) is not a multiple",
        id="transformers",
    ),
    # Ray's placement: only a running Ray knows that the cluster has fewer nodes than a trial spans
    pytest.param(
        {"hardware": {"gpus_per_trial": 2, "nodes_per_trial": 2}},
        "hardware.nodes_per_trial: a trial needs 2 nodes",
        id="ray-nodes",
    ),
]


@pytest.mark.parametrize(("change", "message"), BAD_INPUTS)
def test_bad_input_is_one_line_exit_2_and_writes_nothing(
    change: dict[str, Any] | bytes, message: str, tmp_path: Path
) -> None:
    path = tmp_path / "space.yaml"
    if isinstance(change, bytes):
        path.write_bytes(change)
    else:
        raw = json.loads(json.dumps(SPACE))
        for section, value in change.items():
            raw[section] = {**raw[section], **value} if isinstance(value, dict) and section in raw else value
        write_space(tmp_path, raw)
    done = tuner("search", "space.yaml", cwd=tmp_path, timeout=120)
    assert done.returncode == 2, done.stdout + done.stderr
    assert done.stderr.startswith(f"error: {message}"), done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["space.yaml"], "bad input must write nothing"


def test_export_of_an_unknown_study_names_the_ones_that_exist(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'store.db'}"
    optuna.create_study(study_name="present", storage=url)
    done = tuner("export", "--study", "absent", "--storage", url, "--output", "x.json", cwd=tmp_path, timeout=120)
    assert done.returncode == 2
    assert "no study named 'absent'" in done.stderr and "present" in done.stderr
    assert not (tmp_path / "x.json").exists()


def test_help_explains_every_command(tmp_path: Path) -> None:
    for command in ("search", "plan", "results", "report", "dashboard", "export"):
        done = tuner(command, "--help", cwd=tmp_path, timeout=120)
        assert done.returncode == 0 and "Usage" in done.stdout, command
    top = tuner("--help", cwd=tmp_path, timeout=120)
    assert all(command in top.stdout for command in ("results", "report", "dashboard"))
