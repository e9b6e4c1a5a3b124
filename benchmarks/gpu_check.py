"""The GPU check: real searches on one GPU, their figures, and the winner trained by the deepspeed launcher.

    benchmarks/gpu_check.sh                  # on a GPU node (one H200 here): at most 8 minutes
    benchmarks/gpu_check.sh --cpu --out DIR  # the same steps on CPU ranks with tiny models (CI runs it)

Two spaces, a GPT-2 small and a 1.2B Llama (Llama-3.2-1B shapes) on one GPU in bf16 (tiny versions of both,
fp32, on CPU), are searched with `tuner search` (grid: every point runs). Each trial's figures are read
back with `tuner results --format json`: tokens/s, MFU, the fixed cost (start-up and imports, model build,
deepspeed.initialize, warm-up), predicted against measured memory (allocated, reserved, and on a GPU what
lives outside PyTorch's allocator), threads per rank. The GPT-2 space has a 24 GB budget and no pruning, so
its large micro-batch must end `oom` under the allocator's cap. The best Llama trial is exported for the
device (`--accelerator`) and trained 3 steps through the `deepspeed` launcher.

Writes <out>/<date>-gpu-check.md (CPU: <date>-gpu-check-cpu.md) and a .json beside it, rewritten after each
step so that a run stopped at its time limit still leaves what it measured. Exit 1 when a check failed.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
TUNER = [sys.executable, "-m", "tuner.cli"]
LLAMA_1B = {
    "model_type": "llama", "hidden_size": 2048, "intermediate_size": 8192, "num_hidden_layers": 16,
    "num_attention_heads": 32, "num_key_value_heads": 8, "vocab_size": 128256, "max_position_embeddings": 4096,
    "rope_theta": 500000.0, "tie_word_embeddings": True,
}  # fmt: skip
GPT2_SMALL = {
    "model_type": "gpt2",
    "n_layer": 12,
    "n_embd": 768,
    "n_head": 12,
    "n_positions": 1024,
    "vocab_size": 50257,
}
TINY_LLAMA = {
    "model_type": "llama", "hidden_size": 64, "intermediate_size": 172, "num_hidden_layers": 2,
    "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 512, "max_position_embeddings": 256,
}  # fmt: skip
TINY_GPT2 = {"model_type": "gpt2", "n_layer": 2, "n_embd": 64, "n_head": 4, "n_positions": 128, "vocab_size": 512}
OPTIMIZER = {"type": "AdamW", "params": {"lr": 0.0003, "betas": [0.9, 0.95], "weight_decay": 0.1}}
TRIAL = {"warmup_steps": 1, "measure_steps": 3, "max_cv": 0.10}


def spaces(cpu: bool) -> dict[str, dict[str, Any]]:
    """The two spaces: on one GPU in bf16, or their tiny CPU versions in fp32 (bf16 is emulated on most CPUs)."""
    hardware = {"accelerator": "cpu" if cpu else "cuda", "gpus_per_trial": 1}
    training = {
        "precision": "fp32" if cpu else "bf16",
        "base_config": {"optimizer": OPTIMIZER, "gradient_clipping": 1.0},
    }
    trial = {**TRIAL, "timeout_s": 180 if cpu else 300}
    gpt2 = {
        "model": {"config": TINY_GPT2 if cpu else GPT2_SMALL},
        "data": {"sequence_length": 64 if cpu else 1024},
        "training": {"global_batch_size": 16 if cpu else 32, **training},
        # GPU: mb32 needs about 30 GB (logits 32 x 1024 x 50257) and must run out under the 24 GB cap
        "hardware": hardware if cpu else {**hardware, "device_memory_gb": 24},
        "space": {"micro_batch_size": [2, 8] if cpu else [8, 32], "zero_stage": [0] if cpu else [0, 3]},
        "search": {"sampler": "grid", "prune": False},
        "trial": trial,
    }
    llama = {
        "model": {"config": TINY_LLAMA if cpu else LLAMA_1B},
        "data": {"sequence_length": 64 if cpu else 2048},
        "training": {"global_batch_size": 8 if cpu else 16, **training},
        "hardware": hardware,
        "space": {"micro_batch_size": [4 if cpu else 8], "zero_stage": [2], "offload_optimizer": ["none", "cpu"]},
        "search": {"sampler": "grid"},
        "trial": trial,
    }
    return {"gpt2": gpt2, "llama": llama}


def run(
    command: list[str], log: Path, cwd: Path, timeout: float, env: dict[str, str] | None = None
) -> tuple[int, float]:
    """Run `command` with its output in `log`; the exit code (124 on timeout) and its wall time."""
    started = time.monotonic()
    with log.open("w") as out:
        try:
            code = subprocess.run(
                command, cwd=cwd, stdout=out, stderr=subprocess.STDOUT, timeout=timeout, check=False,
                env={**os.environ, **(env or {})},
            ).returncode  # fmt: skip
        except subprocess.TimeoutExpired:
            code = 124
    return code, time.monotonic() - started


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def versions() -> dict[str, str]:
    """The versions and the machine the figures come from."""
    found = {"python": platform.python_version(), "machine": platform.processor() or platform.machine()}
    for name in ("torch", "deepspeed", "transformers", "optuna", "ray"):
        try:
            module = __import__(name)
            found[name] = str(module.__version__)
        except Exception as exc:  # a missing package is a fact worth recording, not a crash
            found[name] = f"missing ({type(exc).__name__})"
    smi = shutil.which("nvidia-smi")
    if smi:
        query = [smi, "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"]
        found["gpu"] = subprocess.run(query, capture_output=True, text=True, check=False).stdout.strip()
    return found


def trial_rows(trials: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The figures the check reports, one row per trial."""
    keys = (
        "number", "state", "point", "tokens_per_s", "mfu", "step_time_s", "fixed_overhead_s", "startup_s",
        "build_s", "initialize_s", "warmup_s", "trial_duration_s", "predicted_mem_gb", "peak_mem_gb",
        "peak_reserved_gb", "device_overhead_gb", "device_total_gb", "host_mem_gb", "threads_per_rank", "rank_start",
        "step_timing", "failure_category", "failure_reason",
    )  # fmt: skip
    return [{k: t.get(k) for k in keys} for t in trials]


def fmt(value: Any) -> str:
    if value is None or (isinstance(value, float) and value != value):
        return ""
    if isinstance(value, float):
        return f"{value:,.3g}" if abs(value) < 1000 else f"{value:,.0f}"
    return str(value).replace("|", "/").replace("\n", " ")[:90]


def markdown(report: dict[str, Any]) -> str:
    lines = [
        f"# GPU check ({report['mode']}), {report['date']}",
        "",
        "`benchmarks/gpu_check.sh"
        + (" --cpu" if report["mode"] == "cpu" else "")
        + "` on "
        + ", ".join(f"{k} {v}" for k, v in report["versions"].items())
        + ".",
        "",
        "## Checks",
        "",
        *(f"- [{'x' if ok else ' '}] {name}" for name, ok in report["checks"].items()),
        "",
    ]
    for name, part in report["spaces"].items():
        lines += [
            f"## {name}: `tuner search` exit {part['exit']}, {part['wall_s']:.0f} s",
            "",
            "Sizes in GB of 2^30 bytes; times in seconds. `fixed` is the trial's wall time less its measured steps.",
            "",
        ]
        rows = part["trials"]
        if rows:
            header = list(rows[0])
            lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
            lines += ["| " + " | ".join(fmt(r[k]) for k in header) + " |" for r in rows]
        lines.append("")
    if report.get("train"):
        train = report["train"]
        lines += [
            f"## Exported config trained through the deepspeed launcher: exit {train['exit']}, {train['wall_s']:.0f} s",
            "",
            "```",
            train["tail"],
            "```",
            "",
        ]
    return "\n".join(lines)


def write(report: dict[str, Any], out: Path) -> Path:
    name = f"{report['date']}-gpu-check" + ("-cpu" if report["mode"] == "cpu" else "")
    (out / f"{name}.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    path = out / f"{name}.md"
    path.write_text(markdown(report))
    return path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cpu", action="store_true", help="the dry run: tiny models on CPU ranks")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    args = parser.parse_args()
    out: Path = args.out.resolve()
    work = out / "gpu-check-work"
    work.mkdir(parents=True, exist_ok=True)
    url = f"sqlite:///{work / 'gpu-check.sqlite3'}"
    accelerator = "cpu" if args.cpu else "cuda"
    report: dict[str, Any] = {
        "mode": accelerator, "date": datetime.now(UTC).strftime("%Y-%m-%d"), "versions": versions(),
        "checks": {}, "spaces": {},
    }  # fmt: skip
    checks = report["checks"]
    for name, raw in spaces(args.cpu).items():
        study = f"gpu-check-{name}-{accelerator}-{int(time.time())}"
        path = work / f"{name}.yaml"
        path.write_text(yaml.safe_dump({"study": study, **raw}, sort_keys=False))
        code, wall = run([*TUNER, "search", str(path), "--storage", url], work / f"{name}-search.log", work, 420)
        listed = subprocess.run(
            [*TUNER, "results", "--study", study, "--storage", url, "--format", "json"],
            cwd=work, capture_output=True, text=True, check=False,
        )  # fmt: skip
        trials = json.loads(listed.stdout) if listed.returncode == 0 and listed.stdout.strip() else []
        report["spaces"][name] = {"study": study, "exit": code, "wall_s": wall, "trials": trial_rows(trials)}
        complete = [t for t in trials if t.get("state") == "COMPLETE"]
        checks[f"{name}: a trial completed"] = bool(complete)
        checks[f"{name}: every trial ended COMPLETE or FAIL with a category"] = all(
            t.get("state") == "COMPLETE" or t.get("failure_category") for t in trials if t.get("state") != "PRUNED"
        )
        threads = {t.get("threads_per_rank") for t in complete}
        checks[f"{name}: each rank ran {os.cpu_count()} threads (the node's CPUs per rank)"] = threads == {
            float(os.cpu_count() or 1)
        }
        if not args.cpu:
            checks[f"{name}: the overhead outside the allocator was measured"] = all(
                (t.get("device_overhead_gb") or 0) > 0 for t in complete
            )
            checks[f"{name}: MFU against the device's peak"] = all(t.get("mfu") for t in complete)
        report["best_" + name] = complete[0]["number"] if complete else None
        write(report, out)
    if not args.cpu:
        gpt2 = report["spaces"]["gpt2"]["trials"]
        checks["gpt2: mb32 ran out of memory under the 24 GB cap (category oom)"] = any(
            "mb32" in str(t["point"]) and t["failure_category"] == "oom" for t in gpt2
        )
    llama = report["spaces"]["llama"]
    exported = work / "export" / "ds_config.json"
    code, _ = run(
        [*TUNER, "export", "--study", llama["study"], "--storage", url, "--output", str(exported),
         "--accelerator", accelerator],
        work / "export.log", work, 300,
    )  # fmt: skip
    checks["llama: the best trial exported for the device"] = code == 0 and exported.is_file()
    if exported.is_file():
        port = free_port()  # not the launcher's default 29500: another job on the node may hold it
        launcher = [sys.executable, "-m", "deepspeed.launcher.runner", "--num_gpus", "1", "--master_port", str(port)]
        train = [*launcher, str(REPO / "examples" / "train.py"), "--deepspeed_config", str(exported),
                 "--model-config", str(exported.with_name("ds_config.provenance.json")), "--sequence-length",
                 str(spaces(args.cpu)["llama"]["data"]["sequence_length"]), "--steps", "3"]  # fmt: skip
        log = work / "train.log"
        code, wall = run(train, log, work, 300, env={"DS_ACCELERATOR": accelerator})
        text = log.read_text(errors="replace")
        report["train"] = {"exit": code, "wall_s": wall, "tail": "\n".join(text.splitlines()[-8:])}
        checks["llama: the exported config trained 3 steps (deepspeed launcher)"] = (
            code == 0 and "step 3/3 loss" in text
        )
    path = write(report, out)
    failed = [name for name, ok in checks.items() if not ok]
    print(f"wrote {path}; {len(checks) - len(failed)} of {len(checks)} checks passed")
    for name in failed:
        print(f"FAILED: {name}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    sys.exit(main())
