"""DeepSpeed's own autotuner (fast and full mode) against `tuner search` (guided), one CPU rank, same model.

    python benchmarks/ds_autotuner.py [--modes fast,full] [--skip-ds] [--skip-ours] [--skip-remeasure]
                                      [--space benchmarks/spaces/autotuner-compare-cpu.yaml] [--merge]

DeepSpeed's autotuner (`deepspeed --autotuning tune --num_gpus 1`) launches benchmarks/ds_autotuner_train.py,
which trains the model our trials train (the space's model, sequence and optimizer, its precision, random tokens).
On a machine without GPUs DeepSpeed's CPU accelerator counts one device and takes all of host memory as its
memory, so this is a one-rank comparison (hardware.gpus_per_trial: 1 in the space).

Global batch: DeepSpeed gets the space's global batch as autotuning.max_train_batch_size with gradient
accumulation 1 (its default way to search micro batches: probes at accumulation 1, then a short list
below the largest that runs, each with accumulation max_train_batch_size // micro batch), or with
--ds-micro-batches an explicit list with accumulation global // max(list), which keeps the global batch
fixed wherever the micro batch divides it. The report lists the train batch of every experiment it ran.

Throughputs are made comparable by measuring DeepSpeed's chosen config (ZeRO stage + micro batch, its
train batch, no offload, no checkpointing) with our own trial runner: `tuner search` on a one-point space,
same trial settings. Our best point is re-measured the same way (a fresh single measurement for both, so
the best-of-many selection bias of a search does not favour either side). DeepSpeed's own metric values
are reported as it recorded them (its `throughput` is samples/s; tokens/s = samples/s x sequence).

Before any run, DeepSpeed's JIT ops (the CPU shared-memory collective that every CPU process loads, and
CPU Adam for offload) are built once, so neither side's wall time includes a compile.
Writes benchmarks/results/<date>-ds-autotuner-cpu.md and .json (or under --out-dir).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import optuna
import yaml
from optuna.trial import FrozenTrial, TrialState

from tuner.ranking import best as ranked_best
from tuner.ranking import rank_study

REPO = Path(__file__).resolve().parents[1]
DEFAULT_SPACE = REPO / "benchmarks" / "spaces" / "autotuner-compare-cpu.yaml"
TRAIN_SCRIPT = REPO / "benchmarks" / "ds_autotuner_train.py"
BIN = Path(sys.executable).parent
STALE_LOCK_S = 600.0

# DeepSpeed 0.19.8's full mode builds its ZeRO-knob experiments (Autotuner._generate_experiments) without the
# "hostfile" key its scheduler reads, so each one dies at once in a thread (KeyError: 'hostfile') and counts
# as failed: full mode would be fast mode plus failures (deepspeed PR #4996 added the key to the other kinds
# of experiment only). Unless --ds-as-is, the autotuner runs through this launcher, which adds the key.
DS_LAUNCHER = """
from deepspeed.autotuning.autotuner import Autotuner
from deepspeed.launcher import runner

generate = Autotuner._generate_experiments


def with_hostfile(self, *args, **kwargs):
    exps = generate(self, *args, **kwargs)
    for exp in exps:
        exp.setdefault("hostfile", self.args.hostfile)
    return exps


Autotuner._generate_experiments = with_hostfile
runner.main()
"""


def cpu_env() -> dict[str, str]:
    """The environment of a one-rank CPU trial (as tuner.trial.launch.worker_env makes it), for both tools."""
    env = dict(os.environ)
    env.update(
        PYTHONUNBUFFERED="1",
        TOKENIZERS_PARALLELISM="false",
        DS_ACCELERATOR="cpu",
        OMP_NUM_THREADS=str(os.cpu_count() or 1),
    )
    return env


def check_extension_locks() -> None:
    """Stop early on a stale torch JIT lock: every DeepSpeed CPU process would wait on it forever.

    torch's FileBaton waits while `<build dir>/lock` exists; a build killed mid-way leaves it behind, and
    DeepSpeed loads its shared-memory collective op in every CPU process (deepspeed.comm.torch), so every
    experiment and trial would hang without a word.
    """
    root = Path(os.environ.get("TORCH_EXTENSIONS_DIR") or Path.home() / ".cache" / "torch_extensions")
    now = time.time()
    stale = [p for p in (*root.glob("*/lock"), *root.glob("*/*/lock")) if now - p.stat().st_mtime > STALE_LOCK_S]
    if stale:
        names = ", ".join(str(p) for p in stale)
        raise SystemExit(f"stale torch extension lock(s), older than {STALE_LOCK_S:.0f} s: {names}; when no "
                         "compiler is running, remove them (a killed build left them) and run again")  # fmt: skip


def prebuild_ops(log: Path) -> None:
    """Build (or load from torch's cache) the JIT ops both tools need, outside any timed run."""
    code = (
        "from deepspeed.ops.op_builder.cpu import ShareMemCommBuilder; ShareMemCommBuilder().load()\n"
        "from deepspeed.ops.op_builder import CPUAdamBuilder; CPUAdamBuilder().load()"
    )
    started = time.monotonic()
    with log.open("wb") as out:
        done = subprocess.run([sys.executable, "-c", code], stdout=out, stderr=subprocess.STDOUT, env=cpu_env())
    if done.returncode != 0:
        raise SystemExit(f"building DeepSpeed's CPU ops failed; see {log}")
    print(f"DeepSpeed CPU ops ready ({time.monotonic() - started:.0f} s)", flush=True)


def free_port() -> int:
    """A free TCP port with room above it: the autotuner gives experiment i master_port + i."""
    while True:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
        if port < 65000:
            return port


def run_logged(cmd: list[str], cwd: Path, env: dict[str, str], log: Path, timeout_s: float) -> tuple[int, float]:
    """Run `cmd` in its own session with output to `log`; kill its whole group on timeout. (exit code, wall s)"""
    started = time.monotonic()
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            code = proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            for sig in (signal.SIGTERM, signal.SIGKILL):
                try:
                    os.killpg(proc.pid, sig)
                except ProcessLookupError:
                    break
                time.sleep(5)
            proc.wait()
            code = 124
    return code, time.monotonic() - started


# ---------------------------------------------------------------- DeepSpeed's autotuner


def ds_user_config(
    raw: dict[str, Any], mode: str, micro_batches: list[int] | None, stages: str, run_dir: Path, steps: list[int]
) -> dict[str, Any]:
    """The DeepSpeed config with an autotuning section that the autotuner starts from.

    No train_batch_size: the autotuner sets it per experiment (micro x accumulation), and a fixed one would
    contradict its model-info profile run (micro batch 1).
    """
    global_batch = int(raw["training"]["global_batch_size"])
    base = dict(raw["training"].get("base_config") or {})
    optimizer = json.loads(json.dumps(base.get("optimizer") or {"type": "AdamW", "params": {"lr": 1e-4}}))
    optimizer.setdefault("params", {})["torch_adam"] = True  # FusedAdam is a GPU kernel; as our CPU trials do
    precision = raw["training"].get("precision", "bf16")
    autotuning: dict[str, Any] = {
        "enabled": True,
        "fast": mode == "fast",
        "metric": "throughput",
        "results_dir": str(run_dir / "autotuning_results"),
        "exps_dir": str(run_dir / "autotuning_exps"),
        "overwrite": True,
        "max_train_batch_size": global_batch,
        "arg_mappings": {
            "train_micro_batch_size_per_gpu": "--micro-batch",
            "gradient_accumulation_steps": "--grad-accum",
        },
    }
    if steps:
        autotuning["start_profile_step"], autotuning["end_profile_step"] = steps
    config: dict[str, Any] = {
        "gradient_accumulation_steps": 1,
        "zero_optimization": {"stage": "all" if stages == "all" else [int(s) for s in stages.split(",")]},
        "bf16": {"enabled": precision == "bf16"},
        "fp16": {"enabled": precision == "fp16"},
        "optimizer": optimizer,
        "steps_per_print": 1_000_000,
        "autotuning": autotuning,
    }
    if micro_batches:
        if global_batch % max(micro_batches):
            raise SystemExit(f"--ds-micro-batches: {max(micro_batches)} does not divide global batch {global_batch}")
        config["train_micro_batch_size_per_gpu"] = micro_batches
        config["gradient_accumulation_steps"] = global_batch // max(micro_batches)
    return config


def search_error(stderr: Path) -> str | None:
    """DeepSpeed's rule for a failed experiment (deepspeed.autotuning.utils.search_error): 'error' in stderr."""
    if not stderr.exists():
        return "stderr.log does not exist"
    for line in stderr.read_text(errors="replace").splitlines():
        for word in ("Error", "error", "ERROR"):
            if word in line:
                return line[line.find(word) + len(word) :].lstrip(": ")[:300]
    return None


def experiment_row(name: str, ds: dict[str, Any]) -> dict[str, Any]:
    """The tuned part of an experiment's DeepSpeed config."""
    return {
        "name": name,
        "stage": (ds.get("zero_optimization") or {}).get("stage"),
        "micro_batch": ds.get("train_micro_batch_size_per_gpu"),
        "grad_accum": ds.get("gradient_accumulation_steps"),
        "train_batch": ds.get("train_batch_size"),
        "zero_optimization": ds.get("zero_optimization"),
        "metrics": None,
        "samples_per_s": None,
        "tokens_per_s": None,
        "error": None,
        "duration_s": None,
        "started": 0.0,
    }


def parse_experiment(folder: Path, seq: int) -> dict[str, Any]:
    """One autotuner experiment: its config, DeepSpeed's metrics, how long it ran, whether DeepSpeed counted it."""
    exp = json.loads((folder / "exp.json").read_text())
    row = experiment_row(exp["name"], exp.get("ds_config", {}))
    metrics_path = folder / "metrics.json"
    metrics = json.loads(metrics_path.read_text()) if metrics_path.exists() else None
    throughput = metrics.get("throughput") if metrics else None
    started = (folder / "exp.json").stat().st_mtime
    stdout = folder / "stdout.log"  # closed when the experiment's launcher exits
    row.update(
        metrics=metrics,
        samples_per_s=throughput,
        tokens_per_s=throughput * seq if throughput else None,
        error=search_error(folder / "stderr.log"),
        duration_s=stdout.stat().st_mtime - started if stdout.exists() else None,
        started=started,
    )
    return row


def parse_experiments(run_dir: Path, seq: int) -> list[dict[str, Any]]:
    """Every experiment the autotuner scheduled (autotuning_exps), with its result folder where one exists."""
    results = run_dir / "autotuning_results"
    rows = {p.name: parse_experiment(p, seq) for p in results.glob("*") if (p / "exp.json").exists()}
    for path in (run_dir / "autotuning_exps").glob("*.json"):
        name = path.name.removesuffix(".json")
        if name not in rows:  # scheduled, but its launch died before making the result folder
            rows[name] = experiment_row(name, json.loads(path.read_text()).get("ds_config", {}))
            rows[name].update(
                error="never launched (no result folder; see autotuner.log)", started=path.stat().st_mtime
            )
    return sorted(rows.values(), key=lambda row: row["started"])


def parse_summary(results: Path) -> dict[str, Any]:
    """summary.txt: per tuning space (num_experiments, best_metric_val, best_exp_name), total, duration."""
    path = results / "summary.txt"
    if not path.exists():
        return {}
    text = path.read_text()
    spaces = {}
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 4 and cells[1].isdigit():
            spaces[cells[0]] = {
                "num_experiments": int(cells[1]),
                "best_metric_val": float(cells[2]),
                "best_exp": cells[3],
            }
    total = re.search(r"Total number of experiments: (\d+)", text)
    took = re.search(r"Tuning completed in ([\d:.]+)", text)
    return {
        "spaces": spaces,
        "total_experiments": int(total.group(1)) if total else None,
        "tuning_duration": took.group(1) if took else None,
        "text": text,
    }


def run_ds(
    raw: dict[str, Any], tmp: Path, mode: str, args: argparse.Namespace, model_json: Path, shim: Path
) -> dict[str, Any]:
    """One `deepspeed --autotuning tune` run in its own folder; what it launched, chose and measured."""
    run_dir = tmp / f"ds-{mode}"
    run_dir.mkdir(exist_ok=True)
    config = ds_user_config(raw, mode, args.ds_micro_batches, args.ds_stages, run_dir, args.ds_profile_steps)
    (run_dir / "ds_config.json").write_text(json.dumps(config, indent=2))
    seq = int(raw["data"]["sequence_length"])
    env = cpu_env()
    # pdsh: the autotuner "cleans up" after every experiment with `pdsh -w localhost pkill -f <experiment
    # name>`; without pdsh that raises in its thread, with it a pkill by name. The experiment has exited by
    # then (it waits on it), so a no-op pdsh first on PATH keeps both out. `deepspeed` is found on PATH.
    env["PATH"] = os.pathsep.join([str(shim), str(BIN), env.get("PATH", "")])
    launcher = [str(BIN / "deepspeed")] if args.ds_as_is else [sys.executable, "-c", DS_LAUNCHER]
    cmd = [
        *launcher, "--autotuning", "tune", "--num_gpus", "1",
        "--hostfile", str(run_dir / "no-hostfile"),  # never a cluster's /job/hostfile: one local rank
        "--master_port", str(free_port()),
        str(TRAIN_SCRIPT), "--deepspeed_config", str(run_dir / "ds_config.json"),
        "--model-config", str(model_json), "--sequence-length", str(seq), "--seed", "0",
    ]  # fmt: skip
    print(f"ds-{mode}: running DeepSpeed's autotuner in {run_dir}", flush=True)
    code, wall = run_logged(cmd, run_dir, env, run_dir / "autotuner.log", args.ds_timeout_s)
    results = run_dir / "autotuning_results"
    exps = parse_experiments(run_dir, seq)
    profile = [e for e in exps if e["name"] == "profile_model_info"]
    measured = [e for e in exps if e["name"] != "profile_model_info"]
    optimal_path = results / "ds_config_optimal.json"
    optimal = json.loads(optimal_path.read_text()) if optimal_path.exists() else None
    summary = parse_summary(results)
    best_name = summary.get("spaces", {}).get("global", {}).get("best_exp")
    best = next((e for e in measured if e["name"] == best_name), None)
    ok = [e for e in measured if e["samples_per_s"] and e["error"] is None]
    if best is None and ok:  # no summary (the run died or timed out): the best it had measured
        best = max(ok, key=lambda e: float(e["samples_per_s"]))
    model_info = results / "profile_model_info" / "model_info.json"
    log_text = (run_dir / "autotuner.log").read_text(errors="replace")
    print(f"ds-{mode}: exit {code}, {len(measured)} experiments, {wall:.0f} s, best {best_name}", flush=True)
    return {
        "name": f"ds-{mode}",
        "mode": mode,
        "hostfile_fix": not args.ds_as_is,
        "exit_code": code,
        "wall_s": wall,
        "user_config": config,
        "launched": len(measured),
        "profile_runs": len(profile),
        "failed": sum(e["metrics"] is None or e["error"] is not None for e in measured),
        "experiments": exps,
        "optimal_config": optimal,
        "best_exp": best,
        "best_from": "summary.txt" if best_name else "highest metric (no summary.txt)",
        "summary": summary,
        "model_info": json.loads(model_info.read_text()) if model_info.exists() else None,
        "global_batches": sorted({e["train_batch"] for e in measured if e["train_batch"] is not None}),
        "log_tail": log_text[-3000:],
    }


# ---------------------------------------------------------------- our tool


def trial_value(trial: FrozenTrial) -> float | None:
    """The trial's first objective (tokens/s here), or None."""
    return float(trial.values[0]) if trial.values else None


def point_of(ds_config: dict[str, Any]) -> dict[str, Any]:
    """The tuned knobs of a trial, read back from the DeepSpeed config it ran."""
    zero = ds_config.get("zero_optimization") or {}
    return {
        "stage": zero.get("stage"),
        "micro_batch": ds_config.get("train_micro_batch_size_per_gpu"),
        "grad_accum": ds_config.get("gradient_accumulation_steps"),
        "train_batch": ds_config.get("train_batch_size"),
        "offload_optimizer": (zero.get("offload_optimizer") or {}).get("device", "none"),
        "offload_param": (zero.get("offload_param") or {}).get("device", "none"),
        "activation_checkpointing": "activation_checkpointing" in ds_config,
    }


def run_ours(
    raw: dict[str, Any], tmp: Path, url: str, name: str, overrides: dict[str, dict[str, Any]], no_prune: bool
) -> dict[str, Any]:
    """One `tuner search` on a copy of the space with sections updated by `overrides`; its trials read back."""
    doc = json.loads(json.dumps(raw))
    for section, values in overrides.items():
        doc[section] = {**doc.get(section, {}), **values}
    doc["study"] = name
    with contextlib.suppress(KeyError):  # a kept work folder run again: a fresh study, not a resumed one
        optuna.delete_study(study_name=name, storage=url)
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(doc))
    cmd = [str(BIN / "tuner"), "search", str(path), "--storage", url, *(["--no-prune"] if no_prune else [])]
    print(f"{name}: running tuner search", flush=True)
    code, wall = run_logged(cmd, tmp, cpu_env(), tmp / f"{name}.log", timeout_s=24 * 3600)
    study = optuna.load_study(study_name=name, storage=url)
    trials = [t for t in study.get_trials() if "duplicate_of" not in t.user_attrs]
    launched = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.FAIL)]
    top = ranked_best(rank_study(study))  # the trial `tuner export` writes (a point ranks by its mean)
    best = top.trial if top is not None else None
    rows = [
        {
            "number": t.number,
            "point": t.user_attrs.get("point"),
            "state": t.state.name,
            "tokens_per_s": trial_value(t),
            "stopped_early": bool(t.user_attrs.get("stopped_early")),
            "failure": t.user_attrs.get("failure_category"),
            "duration_s": t.user_attrs.get("trial_duration_s"),
            **point_of(t.user_attrs.get("ds_config") or {}),
        }
        for t in launched
    ]
    print(f"{name}: exit {code}, {len(launched)} launched, {wall:.0f} s", flush=True)
    return {
        "name": name,
        "exit_code": code,
        "wall_s": wall,
        "launched": len(launched),
        "failed": sum(t.state == TrialState.FAIL for t in launched),
        "stopped_early": sum(r["stopped_early"] for r in rows),
        "pruned": sum(t.state == TrialState.PRUNED for t in trials),
        "best": next((r for r in rows if best is not None and r["number"] == best.number), None),
        "trials": rows,
        "log_tail": (tmp / f"{name}.log").read_text(errors="replace")[-3000:],
    }


def remeasure(
    raw: dict[str, Any], tmp: Path, url: str, name: str, point: dict[str, Any], global_batch: int
) -> dict[str, Any]:
    """Measure one config with our trial runner: a grid search over a one-point space, same trial settings."""
    overrides: dict[str, dict[str, Any]] = {
        "space": {
            "micro_batch_size": [int(point["micro_batch"])],
            "zero_stage": [int(point["stage"])],
            "offload_optimizer": [point.get("offload_optimizer", "none")],
            "offload_param": [point.get("offload_param", "none")],
            "activation_checkpointing": [bool(point.get("activation_checkpointing", False))],
        },
        "search": {"sampler": "grid"},
        "training": {"global_batch_size": global_batch},
    }
    run = run_ours(raw, tmp, url, name, overrides, no_prune=True)
    run["config"] = {**point, "train_batch": global_batch}
    return run


# ---------------------------------------------------------------- report


def fmt(value: float | None, digits: int = 0) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def ds_config_label(exp: dict[str, Any] | None) -> str:
    if not exp:
        return "-"
    zero = {k: v for k, v in (exp.get("zero_optimization") or {}).items() if k != "stage"}
    extra = f", {json.dumps(zero)}" if zero else ""
    return f"z{exp['stage']} mb{exp['micro_batch']} gas{exp['grad_accum']} (batch {exp['train_batch']}){extra}"


def ours_label(row: dict[str, Any] | None) -> str:
    if not row:
        return "-"
    return f"{row['point']} gas{row['grad_accum']} (batch {row['train_batch']})"


def remeasure_key(stage: Any, micro: Any, batch: Any) -> str:
    return f"z{stage}-mb{micro}-b{batch}"


def report(data: dict[str, Any]) -> str:
    """The markdown page: the comparison table, what DeepSpeed's autotuner did, every experiment and trial."""
    seq = data["sequence_length"]
    remeasured = data.get("remeasure", {})
    lines = [
        f"# DeepSpeed's autotuner against `tuner search` (guided), one CPU rank ({data['date'][:10]})",
        "",
        f"Machine: {data['machine']['node']}, {data['machine']['cpus']} CPUs, {data['machine']['platform']}; "
        + ", ".join(f"{k} {v}" for k, v in data["versions"].items())
        + ".",
        f"Space: `{data['space']}`; model {json.dumps(data['model'])}, sequence {seq}, global batch "
        f"{data['global_batch']}, {data['precision']}. Command: `{data['command']}`.",
        "",
        "| run | best config | its own figure, tokens/s | re-measured by our trial runner, tokens/s "
        "| experiments / trials launched | failed | wall s |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for mode in ("fast", "full"):
        run = data.get("ds", {}).get(mode)
        if not run:
            continue
        best = run["best_exp"]
        again = remeasured.get(remeasure_key(best["stage"], best["micro_batch"], best["train_batch"])) if best else None
        own = f"{fmt(best['tokens_per_s'])} (DeepSpeed: {best['samples_per_s']:.3f} samples/s)" if best else "-"
        lines.append(
            f"| DeepSpeed autotuner, {mode} | {ds_config_label(best)} | {own} "
            f"| {fmt((again or {}).get('value'))} | {run['launched']} + {run['profile_runs']} profile "
            f"| {run['failed']} | {run['wall_s']:.0f} |"
        )
    ours = data.get("ours")
    if ours:
        best = ours["best"]
        again = remeasured.get("ours")
        extra = f" ({ours['stopped_early']} stopped early, {ours['pruned']} pruned)"
        lines.append(
            f"| tuner search, guided | {ours_label(best)} | {fmt((best or {}).get('tokens_per_s'))} "
            f"| {fmt((again or {}).get('value'))} | {ours['launched']}{extra} | {ours['failed']} "
            f"| {ours['wall_s']:.0f} |"
        )
    lines += [
        "",
        "Own figure: DeepSpeed's `throughput` metric (samples/s over the mean forward + backward + step time of "
        f"its profiled steps; x {seq} tokens), or our trial's tokens/s. Re-measured: a one-point `tuner search` "
        "(grid, same trial settings) of that config, so both sides are timed by the same code; one fresh "
        "measurement each (DeepSpeed's ZeRO bucket settings from full mode are not carried over: our tool "
        "leaves them at DeepSpeed's defaults). Wall: the whole `deepspeed --autotuning tune` or `tuner search` "
        "process. Launched: DeepSpeed's experiments (+ its model-info profile run), our trials.",
        "",
        "How DeepSpeed's autotuner searches (deepspeed/autotuning/autotuner.py): a model-info profile run "
        "(ZeRO-3, micro batch 1, one forward: parameters, and activation memory, on CPU the growth of the "
        "process's resident memory), then ZeRO stages 0 to 3 in turn, each where its memory estimate fits "
        "(on CPU the device memory is all of host memory, so every stage). Per stage it probes the smallest "
        "micro batch (1 at stage 0, the previous stage's largest after) and the largest (memory estimate, "
        "capped by max_train_batch_size) at the config's gradient accumulation (1), then runs a short list "
        "between half the largest and the largest with accumulation max_train_batch_size // micro batch, and "
        "tries smaller micro batches with the same accumulation while each is 5% faster. A stage after 0 "
        "starts at the previous stage's largest micro batch, so it mostly runs that one. Full mode adds, for "
        "stages 1-3 whose best micro batch is larger than the previous stage's best and no slower, a grid over "
        "ZeRO bucket sizes, overlap_comm, reduce_scatter and contiguous_gradients (early stop after 5 without "
        "improvement). Each experiment is a fresh launch that exits after optimizer step end_profile_step + 1; "
        "its metric averages the steps from start_profile_step. It never tries offload or checkpointing. "
        "Both tools ran with DS_ACCELERATOR=cpu and OMP_NUM_THREADS = CPU count; the autotuner with no "
        "hostfile, a no-op pdsh for its clean-up"
        + (
            ""
            if any(r.get("hostfile_fix") is False for r in data.get("ds", {}).values())
            else " and full mode's missing 'hostfile' key added (a DeepSpeed 0.19.8 bug; DS_LAUNCHER in "
            "benchmarks/ds_autotuner.py)"
        )
        + ".",
        "",
    ]
    for mode in ("fast", "full"):
        run = data.get("ds", {}).get(mode)
        if not run:
            continue
        measured = [e for e in run["experiments"] if e["name"] != "profile_model_info"]
        fixed = run["global_batches"] == [data["global_batch"]]
        by_stage: dict[Any, list[Any]] = {}
        for e in measured:
            tried = by_stage.setdefault(e["stage"], [])
            if e["micro_batch"] not in tried:
                tried.append(e["micro_batch"])
        total = run["summary"].get("total_experiments")
        counted = "" if total == run["launched"] else f" (its summary says {total}: it counts a re-used one again)"
        lines += [
            f"## DeepSpeed autotuner, {mode} mode",
            "",
            f"Exit {run['exit_code']}; {run['launched']} experiments ran{counted}, tuning took "
            f"{str(run['summary'].get('tuning_duration')).split('.')[0]}. Model info from its profile run: "
            f"{json.dumps(run['model_info'])}.",
            "Micro batches tried per ZeRO stage: "
            + "; ".join(f"z{stage}: {mbs}" for stage, mbs in by_stage.items())
            + f". Train (global) batches of its experiments: {run['global_batches']} "
            + ("(kept fixed)." if fixed else f"(not fixed at {data['global_batch']})."),
            f"Chosen: `{json.dumps(run['optimal_config'])}`.",
            "",
            "| experiment | stage | micro | accum | batch | samples/s | tokens/s | its step s | wall s "
            "| DeepSpeed's verdict |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
        ]
        for e in run["experiments"]:
            latency = (e["metrics"] or {}).get("latency")  # microseconds per optimizer step
            step_s = latency / 1e6 if latency else None
            verdict = "ok" if e["error"] is None and e["metrics"] else f"failed: {e['error'] or 'no metrics'}"
            if e["name"] == "profile_model_info":
                verdict = "model-info profile run (one forward)"
            lines.append(
                f"| {e['name']} | {e['stage']} | {e['micro_batch']} | {e['grad_accum']} | {e['train_batch']} "
                f"| {fmt(e['samples_per_s'], 3)} | {fmt(e['tokens_per_s'])} | {fmt(step_s, 1)} "
                f"| {fmt(e['duration_s'])} | {verdict} |"
            )
        lines.append("")
    if ours:
        lines += [
            "## tuner search, guided",
            "",
            "| trial | point | accum | state | tokens/s | s |",
            "|---:|---|---:|---|---:|---:|",
        ]
        for r in ours["trials"]:
            state = (
                r["state"]
                + (" (stopped early)" if r["stopped_early"] else "")
                + (f" {r['failure']}" if r["failure"] else "")
            )
            lines.append(
                f"| {r['number']} | {r['point']} | {r['grad_accum']} | {state} | {fmt(r['tokens_per_s'])} "
                f"| {fmt(r['duration_s'])} |"
            )
        lines.append("")
    if remeasured:
        lines += ["## Re-measurements (one-point `tuner search`, grid)", ""]
        for key, run in remeasured.items():
            lines.append(
                f"- {key}: {json.dumps(run['config'])}: {fmt(run.get('value'))} tokens/s "
                f"(exit {run['exit_code']}, {run['wall_s']:.0f} s)"
            )
        lines.append("")
    rounds = data.get("remeasure_rounds") or {}
    if rounds:
        keys = list(rounds)
        count = max(len(v) for v in rounds.values())
        lines += [
            f"## Winners re-measured in {count} alternating rounds (one-point `tuner search` each, in turn)",
            "",
            "| round | " + " | ".join(keys) + " |",
            "|---:|" + "---:|" * len(keys),
        ]
        for i in range(count):
            cells = [fmt(rounds[k][i]) if i < len(rounds[k]) else "" for k in keys]
            lines.append(f"| {i + 1} | " + " | ".join(cells) + " |")
        medians = [fmt(statistics.median([v for v in rounds[k] if v is not None] or [0.0])) for k in keys]
        lines += ["| median | " + " | ".join(medians) + " |", ""]
    return "\n".join(lines)


# ---------------------------------------------------------------- main


def int_list(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--space", type=Path, default=DEFAULT_SPACE)
    parser.add_argument("--modes", default="fast,full", help="DeepSpeed autotuner modes to run: fast, full or both")
    parser.add_argument("--skip-ds", action="store_true", help="no DeepSpeed autotuner run")
    parser.add_argument("--skip-ours", action="store_true", help="no guided `tuner search`")
    parser.add_argument("--skip-remeasure", action="store_true", help="no one-point re-measurements")
    parser.add_argument(
        "--rounds", type=int, default=0, help="then re-measure every winner again, in turn, this many rounds"
    )
    parser.add_argument("--merge", action="store_true", help="keep the parts not rerun from today's results JSON")
    parser.add_argument("--global-batch", type=int, help="override the space's global batch (both tools)")
    parser.add_argument("--ds-micro-batches", type=int_list, help="explicit micro-batch list for DeepSpeed, e.g. 1,2,4")
    parser.add_argument("--ds-stages", default="all", help="ZeRO stages DeepSpeed may tune: all, or e.g. 0,3")
    parser.add_argument("--ds-profile-steps", type=int_list, default=[], help="start,end profile step (default 3,5)")
    parser.add_argument("--ds-as-is", action="store_true", help="no fix for full mode's KeyError: 'hostfile'")
    parser.add_argument("--ds-timeout-s", type=float, default=6 * 3600, help="limit of one autotuner run")
    parser.add_argument("--out-dir", type=Path, default=REPO / "benchmarks" / "results")
    parser.add_argument("--keep", type=Path, help="work in this folder (kept) instead of a temporary one")
    args = parser.parse_args()
    modes = [m for m in args.modes.split(",") if m]
    if set(modes) - {"fast", "full"} or (args.ds_profile_steps and len(args.ds_profile_steps) != 2):
        parser.error("--modes takes fast and/or full; --ds-profile-steps takes START,END")
    space = args.space.resolve()
    raw = yaml.safe_load(space.read_text())
    if args.global_batch:
        raw["training"]["global_batch_size"] = args.global_batch
    if int(raw.get("hardware", {}).get("gpus_per_trial", 1)) != 1:
        raise SystemExit("the space must have hardware.gpus_per_trial: 1 (DeepSpeed's autotuner sees one CPU device)")
    date = datetime.now(UTC)
    out = args.out_dir / f"{date:%Y-%m-%d}-ds-autotuner-cpu.md"
    previous = (
        json.loads(out.with_suffix(".json").read_text()) if args.merge and out.with_suffix(".json").exists() else {}
    )

    os.environ.setdefault("DS_ACCELERATOR", "cpu")  # for the version import: no accelerator detection warning
    import deepspeed
    import ray
    import torch
    import transformers

    data: dict[str, Any] = {
        "date": date.isoformat(timespec="seconds"),
        "command": "python " + " ".join([str(Path(sys.argv[0]).resolve().relative_to(REPO)), *sys.argv[1:]]),
        "machine": {
            "node": platform.node(),
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
        },
        "versions": {
            "torch": torch.__version__,
            "deepspeed": deepspeed.__version__,
            "optuna": optuna.__version__,
            "ray": ray.__version__,
            "transformers": transformers.__version__,
        },
        "space": str(space.relative_to(REPO)) if space.is_relative_to(REPO) else str(space),
        "model": raw["model"]["config"],
        "sequence_length": int(raw["data"]["sequence_length"]),
        "global_batch": int(raw["training"]["global_batch_size"]),
        "precision": raw["training"].get("precision", "bf16"),
        "ds": dict(previous.get("ds", {})),
        "ours": previous.get("ours"),
        "remeasure": dict(previous.get("remeasure", {})),
    }
    check_extension_locks()
    with tempfile.TemporaryDirectory(prefix="tuner-ds-autotuner-") as scratch:
        tmp = args.keep.resolve() if args.keep else Path(scratch)
        tmp.mkdir(parents=True, exist_ok=True)
        prebuild_ops(tmp / "prebuild.log")
        url = f"sqlite:///{tmp / 'bench.sqlite3'}"
        model_json = tmp / "model.json"
        model_json.write_text(json.dumps(raw["model"]["config"]))
        shim = tmp / "bin"
        shim.mkdir(exist_ok=True)
        (shim / "pdsh").write_text(
            "#!/bin/sh\n# benchmarks/ds_autotuner.py: the autotuner's clean-up, a no-op\nexit 0\n"
        )
        (shim / "pdsh").chmod(0o755)
        if not args.skip_ds:
            for mode in modes:
                data["ds"][mode] = run_ds(raw, tmp, mode, args, model_json, shim)
        if not args.skip_ours:
            data["ours"] = run_ours(raw, tmp, url, "ours-guided", {"search": {"sampler": "guided"}}, no_prune=False)
        if not args.skip_remeasure:
            # each distinct chosen config once; one already measured is kept unless its search ran again now
            wanted: dict[str, tuple[dict[str, Any], int]] = {}
            for mode, run in data["ds"].items():
                best = run.get("best_exp")
                key = remeasure_key(best["stage"], best["micro_batch"], best["train_batch"]) if best else ""
                if best and (key not in data["remeasure"] or (not args.skip_ds and mode in modes)):
                    wanted[key] = ({"stage": best["stage"], "micro_batch": best["micro_batch"]}, best["train_batch"])
            if data["ours"] and data["ours"].get("best") and ("ours" not in data["remeasure"] or not args.skip_ours):
                wanted["ours"] = (data["ours"]["best"], data["global_batch"])
            for key, (point, batch) in wanted.items():
                run = remeasure(raw, tmp, url, f"remeasure-{key}", point, int(batch))
                run["value"] = (run["best"] or {}).get("tokens_per_s")
                data["remeasure"][key] = run
            if args.rounds:  # every winner again, alternating, so the machine's drift falls on all alike
                measured = data["remeasure"].items()
                winners = {k: (run["config"], int(run["config"]["train_batch"])) for k, run in measured}
                data["remeasure_rounds"] = {k: [] for k in winners}
                for i in range(args.rounds):
                    for key, (point, batch) in winners.items():
                        again = remeasure(raw, tmp, url, f"round{i}-{key}", point, batch)
                        data["remeasure_rounds"][key].append((again["best"] or {}).get("tokens_per_s"))
    args.out_dir.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(data, indent=2))
    out.write_text(report(data))
    print(out.read_text())


if __name__ == "__main__":
    main()
