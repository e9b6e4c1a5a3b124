"""The same points measured on one node and spanning two nodes of a real Ray cluster; dated result files.

    python benchmarks/cluster.py [--storage URL]

Starts `ray start --head` and a second `ray start --address` node on this machine (2 CPUs each, token
authentication), then runs `tuner search --address` on one space twice: 2 ranks on one node
(`nodes_per_trial: 1`) and one rank on each node (`nodes_per_trial: 2`). Writes
benchmarks/results/<date>-cluster-cpu.{json,md}: each trial's point, nodes, tokens/s, step time, wall time
and fixed overhead, and each search's wall time. On one machine both "nodes" share the cores and the
loopback network, so the figures show what the spanning path costs in start-up, not a network's effect.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import secrets
import socket
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import optuna
import yaml

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
SPACE: dict[str, Any] = {
    "model": {"config": {"model_type": "gpt2", "n_layer": 2, "n_embd": 64, "n_head": 4, "n_positions": 128,
                         "vocab_size": 512}},
    "data": {"sequence_length": 64},
    "training": {"global_batch_size": 16, "precision": "fp32",
                 "base_config": {"optimizer": {"type": "AdamW", "params": {"lr": 0.0002}}}},
    "space": {"micro_batch_size": [2, 8], "zero_stage": [0, 3]},
    "search": {"sampler": "grid"},
    "trial": {"warmup_steps": 1, "measure_steps": 5, "timeout_s": 300},
}  # fmt: skip
FIGURES = ("tokens_per_s", "step_time_s", "step_time_cv", "trial_duration_s", "fixed_overhead_s")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def run(args: list[str], env: dict[str, str], cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, env=env, cwd=cwd, capture_output=True, text=True, timeout=1800, check=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--storage", default=None, help="default: a SQLite file in a temporary folder")
    args = parser.parse_args()
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "token",
           "RAY_AUTH_TOKEN": secrets.token_hex(16)}  # fmt: skip
    env.pop("TUNER_STORAGE", None)
    port = free_port()
    searches: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        url = args.storage or f"sqlite:///{work / 'cluster.sqlite3'}"
        head = run([str(BIN / "ray"), "start", "--head", "--port", str(port), "--num-cpus", "2",
                    "--include-dashboard", "false", "--disable-usage-stats"], env)  # fmt: skip
        assert head.returncode == 0, head.stderr
        try:
            second = run([str(BIN / "ray"), "start", "--address", f"127.0.0.1:{port}", "--num-cpus", "2",
                          "--disable-usage-stats"], env)  # fmt: skip
            assert second.returncode == 0, second.stderr
            tag = datetime.now(UTC).strftime("%H%M%S")
            for nodes in (1, 2):
                name = f"cluster-{nodes}node-{tag}"
                space = {**SPACE, "study": name, "hardware": {"gpus_per_trial": 2, "nodes_per_trial": nodes}}
                path = work / f"{name}.yaml"
                path.write_text(yaml.safe_dump(space))
                start = time.monotonic()
                done = run([str(BIN / "tuner"), "search", str(path), "--address", f"127.0.0.1:{port}",
                            "--storage", url], env, cwd=work)  # fmt: skip
                wall = time.monotonic() - start
                assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
                study = optuna.load_study(study_name=name, storage=url)
                trials = [
                    {"point": t.user_attrs["point"], "state": t.state.name, "nodes": t.user_attrs.get("nodes"),
                     **{k: t.user_attrs.get(k) for k in FIGURES}}
                    for t in study.trials
                ]  # fmt: skip
                searches.append({"nodes_per_trial": nodes, "search_wall_s": round(wall, 1), "trials": trials})
        finally:
            run([str(BIN / "ray"), "stop", "--force"], env)
    today = datetime.now(UTC).date().isoformat()
    out = REPO / "benchmarks" / "results" / f"{today}-cluster-cpu"
    result = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "processor": platform.processor()},
        "cluster": "two Ray nodes on this machine (ray start --head + ray start --address), 2 CPUs each",
        "searches": searches,
    }
    out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [f"# Trials on one node vs spanning two Ray nodes ({today}, CPU)", "",
             f"{result['cluster']}; {os.cpu_count()} cores; 2 ranks per trial, fp32 tiny GPT-2, grid over 4 "
             "points, 5 measured steps. The cluster's 4 logical CPUs hold 2 trials at once in both modes, on 2 "
             "physical cores: the figures are noisy. Written by benchmarks/cluster.py.", "",
             "| nodes/trial | point | state | tokens/s | step s | cv | trial s | fixed s |",
             "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for search in searches:
        for t in search["trials"]:
            lines.append(
                f"| {search['nodes_per_trial']} | {t['point']} | {t['state']} | {t['tokens_per_s'] or 0:,.0f} | "
                f"{t['step_time_s'] or 0:.3f} | {t['step_time_cv'] or 0:.3f} | {t['trial_duration_s'] or 0:.1f} | "
                f"{t['fixed_overhead_s'] or 0:.1f} |"
            )
    lines += ["", *[f"- nodes_per_trial {s['nodes_per_trial']}: search wall {s['search_wall_s']} s" for s in searches]]
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print(out.with_suffix(".md").read_text())


if __name__ == "__main__":
    main()
