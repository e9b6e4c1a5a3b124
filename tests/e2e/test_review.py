"""Review and hand-off on a real study: `tuner results`, `tuner report` in headless Chromium, `tuner dashboard`
through optuna-dashboard's HTTP API, and exports that train (DeepSpeed launcher, Hugging Face Trainer).

One module-scoped study holds every kind of trial: COMPLETE (micro-batch 1), PRUNED (micro-batch 8, which
the memory model rules out), and FAIL with category oom (the same points run again with --no-prune).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import optuna
import pandas as pd
import psutil
import pytest
from optuna.trial import TrialState

from tests.conftest import REPO
from tests.e2e.test_cli import dashboard_study, free_port, tuner, write_space

# Logits dominate this model's memory (vocab 32k, 256 tokens): micro-batch 1 fits 0.75 GB, micro-batch 8 does not.
REVIEW: dict[str, Any] = {
    "study": "review",
    "model": {"config": {"model_type": "gpt2", "n_layer": 1, "n_embd": 64, "n_head": 2, "n_positions": 256,
                         "vocab_size": 32768}},
    "data": {"sequence_length": 256},
    "training": {"global_batch_size": 16, "precision": "fp32",
                 "base_config": {"optimizer": {"type": "AdamW", "params": {"lr": 0.0003, "weight_decay": 0.01}}}},
    "hardware": {"gpus_per_trial": 1, "device_memory_gb": 0.75},  # one rank: trials start faster
    "space": {"micro_batch_size": [1, 8], "zero_stage": [0, 2]},
    "search": {"sampler": "grid"},
    "trial": {"warmup_steps": 1, "measure_steps": 2, "max_measure_steps": 2, "timeout_s": 240},
}  # fmt: skip


@pytest.fixture(scope="module")
def study_dir(tmp_path_factory: pytest.TempPathFactory, cpu_ops: None) -> Path:
    """A real study with COMPLETE, PRUNED and FAIL (oom) trials, in SQLite under the returned folder."""
    folder = tmp_path_factory.mktemp("review")
    space = write_space(folder, REVIEW)
    first = tuner("search", str(space), cwd=folder)
    assert first.returncode == 0, first.stdout + first.stderr
    (folder / "first-search.txt").write_text(first.stdout)
    forced = tuner("search", str(space), "--no-prune", cwd=folder)
    assert forced.returncode == 0, forced.stdout + forced.stderr
    return folder


def url_of(folder: Path) -> str:
    return f"sqlite:///{folder / 'tuner.sqlite3'}"


def load(folder: Path) -> optuna.Study:
    return optuna.load_study(study_name="review", storage=url_of(folder))


def test_what_the_memory_model_prunes_never_runs_and_no_prune_proves_it_out_of_memory(
    study_dir: Path, tmp_path: Path
) -> None:
    plan = json.loads(tuner("plan", str(study_dir / "space.yaml"), "--json", cwd=tmp_path).stdout)
    verdict = {row["label"]: row["fits"] for row in plan["points"]}
    assert verdict == {"mb1 z0": True, "mb1 z2": True, "mb8 z0": False, "mb8 z2": False}
    first = (study_dir / "first-search.txt").read_text()
    assert "pruned trial" in first and "mb8 z0" in first
    assert "…" not in first  # piped (80 columns to rich), the summary table keeps whole columns

    trials = load(study_dir).trials
    for trial in trials:
        point, state = trial.user_attrs["point"], trial.state
        if point.startswith("mb1"):
            assert state == TrialState.COMPLETE and 0 < trial.user_attrs["peak_mem_gb"] <= 0.75
            assert trial.user_attrs["predicted_mem_gb"] > 0
        elif state == TrialState.PRUNED:  # the first search: never launched, with the prediction and reason
            assert "log_path" not in trial.user_attrs and trial.user_attrs["predicted_mem_gb"] > 0.75
            assert "over the budget" in trial.user_attrs["prune_reason"]
        else:  # --no-prune launched it, and it ran out of memory
            assert state == TrialState.FAIL and trial.user_attrs["failure_category"] == "oom", trial.user_attrs
    forced = [t.user_attrs["point"] for t in trials if t.state == TrialState.FAIL]
    assert sorted(forced) == ["mb8 z0", "mb8 z2"]  # each launched once


def test_results_in_every_format_best_first(study_dir: Path, tmp_path: Path) -> None:
    study = load(study_dir)
    states = {t.state for t in study.trials}
    assert states == {TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL}, states
    args = ("--study", "review", "--storage", url_of(study_dir))

    table = tuner("results", *args, cwd=tmp_path)
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert lines[0].split()[:3] == ["number", "point", "state"]
    assert "COMPLETE" in lines[1] and "PRUNED" in table.stdout and "oom" in table.stdout

    frames = {}
    for fmt in ("csv", "json", "parquet"):
        out = tmp_path / f"results.{fmt}"
        done = tuner("results", *args, "--format", fmt, "--output", str(out), cwd=tmp_path)
        assert done.returncode == 0, done.stderr
        reader = {"csv": pd.read_csv, "json": pd.read_json, "parquet": pd.read_parquet}[fmt]
        frames[fmt] = reader(out)
    frame = frames["parquet"]
    assert len(frame) == len(study.trials) == len(frames["csv"]) == len(frames["json"])
    assert list(frame["number"]) == list(frames["csv"]["number"]) == list(frames["json"]["number"])
    complete = frame[frame["state"] == "COMPLETE"]
    assert list(complete.index) == list(range(len(complete)))  # COMPLETE rows lead
    assert list(complete["tokens_per_s"]) == sorted(complete["tokens_per_s"], reverse=True)
    assert (complete["objective_tokens_per_s"] == complete["tokens_per_s"]).all()
    assert (complete["peak_mem_gb"] > 0).all() and (complete["predicted_mem_gb"] > 0).all()
    failed = frame[frame["state"] == "FAIL"]
    assert set(failed["failure_category"]) == {"oom"} and failed["failure_reason"].str.len().min() > 0
    pruned = frame[frame["state"] == "PRUNED"]
    assert pruned["prune_reason"].str.contains("over the budget").all()
    assert set(frame["micro_batch_size"]) == {1, 8} and set(frame["zero_stage"]) == {0, 2}

    bad = tuner("results", *args, "--format", "xlsx", cwd=tmp_path)
    assert bad.returncode == 2 and "--format" in bad.stderr and len(bad.stderr.strip().splitlines()) == 1
    binary = tuner("results", *args, "--format", "parquet", cwd=tmp_path)
    assert binary.returncode == 2 and "--output" in binary.stderr


def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        pytest.fail("Debian's chromium is needed for the report test (.ci/run installs it: apt-get install chromium)")
    return found


def render(page: Path, tmp_path: Path) -> tuple[str, str]:
    """The page's DOM after its scripts ran in headless Chromium, and Chromium's log (console errors land there)."""
    done = subprocess.run(
        [
            chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-extensions", "--no-first-run", "--disable-sync", "--enable-logging=stderr", "--v=0",
            f"--user-data-dir={tmp_path / 'chromium-profile'}", "--virtual-time-budget=15000", "--dump-dom",
            page.as_uri(),
        ],
        capture_output=True, text=True, timeout=180, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout, done.stderr


def test_the_report_renders_every_plot_in_a_real_browser_with_no_script_error(study_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "report.html"
    done = tuner("report", "--study", "review", "--storage", url_of(study_dir), "--output", str(out), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    page = out.read_text()
    assert "<script src=" not in page.replace('<script src="data:', "")  # nothing to fetch: opens offline
    study = load(study_dir)
    best = max((t for t in study.trials if t.state == TrialState.COMPLETE), key=lambda t: t.values[0])
    dom, log = render(out, tmp_path)
    assert "Uncaught" not in log, log[-3000:]
    assert re.search(r'<p id="script-errors" hidden=""', dom), "a script error was recorded in the page"
    plots = re.findall(r'data-plot="([a-z]+)"', dom)
    assert plots == ["throughput", "memory", "timeline", "failures"]
    for name, chunk in zip(plots, dom.split('data-plot="')[1:], strict=True):
        assert 'class="main-svg"' in chunk, f"plot {name} was not drawn"
    best_box = dom.split('id="best"')[1].split("</div>")[0]
    assert f"trial {best.number}" in best_box and best.user_attrs["point"] in best_box
    assert f'"train_micro_batch_size_per_gpu": {best.params["micro_batch_size"]}' in best_box


def test_dashboard_serves_the_store_on_localhost_and_stops_on_ctrl_c(study_dir: Path, tmp_path: Path) -> None:
    port = free_port()
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    proc = subprocess.Popen(
        [str(Path(sys.executable).parent / "tuner"), "dashboard", "--storage", url_of(study_dir), "--port", str(port)],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        said = [proc.stdout.readline() for _ in range(2)]
        assert f"open http://127.0.0.1:{port}/dashboard/" in said[1], said
        detail = dashboard_study(port, "review")
        listening = [c for c in psutil.Process(proc.pid).net_connections("tcp") if c.status == psutil.CONN_LISTEN]
        assert [c.laddr.ip for c in listening] == ["127.0.0.1"]
        study = load(study_dir)
        assert len(detail["trials"]) == len(study.trials)
        failed = next(t for t in detail["trials"] if t["state"] == "Fail")
        attrs = {a["key"]: a["value"] for a in failed["user_attrs"]}
        assert attrs["failure_category"] == "oom"
        complete = next(t for t in detail["trials"] if t["state"] == "Complete")
        assert {"tokens_per_s", "peak_mem_gb", "ds_config"} <= {a["key"] for a in complete["user_attrs"]}
        # what a reviewer reads first: the objective by name, each trial's note, the study's best and its export
        assert detail["objective_names"] == ["tokens_per_s"]
        assert "tokens/s · peak memory" in complete["note"]["body"]
        assert failed["note"]["body"].startswith(f"**{attrs['point']}** · FAIL\n\noom: ")
        pruned = next(t for t in detail["trials"] if t["state"] == "Pruned")
        assert "not run: " in pruned["note"]["body"]
        assert "tuner export --study review --storage" in detail["note"]["body"]
    finally:
        proc.send_signal(signal.SIGINT)
        code = proc.wait(timeout=30)
    assert code == 130


def test_dashboard_refuses_a_port_in_use(study_dir: Path, tmp_path: Path) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = tuner("dashboard", "--storage", url_of(study_dir), "--port", str(port), cwd=tmp_path, timeout=60)
    assert done.returncode == 2 and "--port" in done.stderr and len(done.stderr.strip().splitlines()) == 1


def launch(script: str, *args: str, cwd: Path, ranks: int = 1) -> subprocess.CompletedProcess[str]:
    """Ranks through the `deepspeed` launcher on the CPU, as a production job would start."""
    runner = [sys.executable, "-m", "deepspeed.launcher.runner", "--num_gpus", str(ranks), "--master_port",
              str(free_port())]  # fmt: skip
    return subprocess.run(
        [*runner, str(REPO / "examples" / script), *args],
        cwd=cwd, env={**os.environ, "DS_ACCELERATOR": "cpu"}, capture_output=True, text=True, timeout=600,
        check=False,
    )  # fmt: skip


def test_export_for_another_world_size_keeps_the_global_batch_and_trains(study_dir: Path, tmp_path: Path) -> None:
    args = ("export", "--study", "review", "--storage", url_of(study_dir))
    wrong = tuner(*args, "--output", str(tmp_path / "x.json"), "--world-size", "3", cwd=tmp_path)
    assert wrong.returncode == 2 and "--world-size" in wrong.stderr and "1, 2, 4, 8, 16" in wrong.stderr
    assert not list(tmp_path.glob("x*.json")), "nothing written on bad input"

    out = tmp_path / "two" / "ds_config.json"
    done = tuner(*args, "--output", str(out), "--world-size", "2", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "measured on 1 rank(s); written for 2" in done.stdout
    config = json.loads(out.read_text())
    assert config["train_batch_size"] == 16 == config["train_micro_batch_size_per_gpu"] * config[
        "gradient_accumulation_steps"] * 2  # fmt: skip
    prov = json.loads(out.with_name("ds_config.provenance.json").read_text())
    assert prov["world_size"] == 2 and prov["measured_ranks"] == 1 and prov["format"] == "deepspeed"
    train = launch("train.py", "--deepspeed_config", str(out), "--model-config", str(out.with_name(
        "ds_config.provenance.json")), "--sequence-length", "256", "--steps", "2", cwd=tmp_path, ranks=2)  # fmt: skip
    assert train.returncode == 0, train.stdout[-3000:] + train.stderr[-3000:]
    assert "step 2/2 loss" in train.stdout

    # the same winner for a GPU job: CPU-only keys go, and the tool says so
    gpu = tmp_path / "gpu" / "ds_config.json"
    done = tuner(*args, "--output", str(gpu), "--accelerator", "cuda", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "measured on cpu, written for cuda" in done.stdout and "torch_adam removed" in done.stdout
    assert "torch_adam" not in json.loads(gpu.read_text())["optimizer"]["params"]
    assert json.loads(gpu.with_name("ds_config.provenance.json").read_text())["accelerator"] == "cuda"
    bad = tuner(*args, "--output", str(tmp_path / "y.json"), "--accelerator", "tpu", cwd=tmp_path)
    assert bad.returncode == 2 and "--accelerator" in bad.stderr and not list(tmp_path.glob("y*.json"))


def test_hf_export_trains_with_trainer_and_the_printed_arguments(study_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "hf" / "ds_config.json"
    done = tuner(
        "export", "--study", "review", "--storage", url_of(study_dir), "--output", str(out), "--format", "hf",
        "--world-size", "1", cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    config = json.loads(out.read_text())
    args = json.loads(out.with_name("ds_config.training_args.json").read_text())
    assert args["per_device_train_batch_size"] == config["train_micro_batch_size_per_gpu"]
    assert args["gradient_accumulation_steps"] == config["gradient_accumulation_steps"] == 16 // args[
        "per_device_train_batch_size"]  # fmt: skip
    assert args["learning_rate"] == 0.0003 and args["weight_decay"] == 0.01
    assert args["bf16"] is False and args["fp16"] is False and args["gradient_checkpointing"] is False
    assert "auto" not in json.dumps(config)
    for key, value in args.items():  # the printed call holds the same values
        assert f"{key}={value!r}," in done.stdout
    prov = json.loads(out.with_name("ds_config.provenance.json").read_text())
    assert prov["format"] == "hf" and prov["training_args"] == args
    train = launch("train_hf.py", "--training-args", str(out.with_name("ds_config.training_args.json")),
                   "--model-config", str(out.with_name("ds_config.provenance.json")), "--sequence-length", "256",
                   "--steps", "2", cwd=tmp_path)  # fmt: skip
    assert train.returncode == 0, train.stdout[-3000:] + train.stderr[-3000:]
    assert "trained 2 steps with Trainer" in train.stdout
