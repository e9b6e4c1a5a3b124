"""Search efficiency: grid (ground truth) against random, tpe and guided on one space, through the real CLI.

    python benchmarks/search_efficiency.py [--space benchmarks/spaces/search-efficiency-cpu.yaml]
                                           [--seeds 2] [--budget-share 0.25]
                                           [--reuse EARLIER.json --rerun guided] [--name search-efficiency-cpu]

The grid runs every valid point with --no-prune, so every point's throughput (or its out-of-memory
failure) is measured once: that is the ground truth. random and tpe get `budget-share` of the grid's
launches as search.max_trials; guided stops by its own rule. For each run: the best point it found, its
throughput as the grid measured it divided by the grid's best (no run-to-run noise in the ratio), its own
measurement, trials launched, failed (out of memory) and pruned, and wall time of the whole `tuner search`.
Guided's best is ranked as `tuner export` ranks it: by the mean over its re-measurements.
`--reuse` takes the grid and the samplers not named in `--rerun` from an earlier run's JSON (same space,
machine and runner), so a change to one sampler is measured without re-running the 22-minute grid; the
report names the file the reused runs came from.
Writes benchmarks/results/<date>-<name>.md (and the raw runs as JSON).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import optuna
import yaml
from optuna.trial import TrialState

from tuner.ranking import best, rank_study

REPO = Path(__file__).resolve().parents[1]
DEFAULT_SPACE = REPO / "benchmarks" / "spaces" / "search-efficiency-cpu.yaml"


def run_search(space: Path, tmp: Path, url: str, name: str, search: dict[str, Any], no_prune: bool) -> dict[str, Any]:
    """One `tuner search` on a copy of the space with `search` overriding its search section."""
    raw = yaml.safe_load(space.read_text())
    raw["search"] = {**raw.get("search", {}), **search}
    raw["study"] = name
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw))
    args = [str(Path(sys.executable).parent / "tuner"), "search", str(path), "--storage", url]
    started = time.monotonic()
    done = subprocess.run(
        [*args, *(["--no-prune"] if no_prune else [])], cwd=tmp, capture_output=True, text=True, check=False
    )
    wall = time.monotonic() - started
    study = optuna.load_study(study_name=name, storage=url)
    trials = [t for t in study.get_trials() if "duplicate_of" not in t.user_attrs]
    launched = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.FAIL)]
    top = best(rank_study(study))
    print(f"{name}: exit {done.returncode}, {len(launched)} launched, {wall:.0f} s", flush=True)
    return {
        "name": name,
        "search": search,
        "exit_code": done.returncode,
        "wall_s": wall,
        "launched": len(launched),
        "failed": sum(t.state == TrialState.FAIL for t in launched),
        "oom": sum(t.user_attrs.get("failure_category") == "oom" for t in launched),
        "pruned": sum(t.state == TrialState.PRUNED for t in trials),
        "pruned_points": sorted(t.user_attrs.get("point", "") for t in trials if t.state == TrialState.PRUNED),
        "best_point": top.trial.user_attrs["point"] if top else None,
        "best_value": top.mean if top else None,
        "repeats": sum("repeat_of" in t.user_attrs for t in launched),
        "points": {
            t.user_attrs["point"]: (float(t.value) if t.value is not None else None)
            for t in launched
            if "repeat_of" not in t.user_attrs
        },
        "stdout_tail": done.stdout[-1500:],
    }


def noise_lines(runs: list[dict[str, Any]], truth: dict[str, float]) -> list[str]:
    """Run-to-run spread of the points several runs measured: how far one measurement can be trusted."""
    seen: dict[str, list[float]] = {}
    for r in runs:
        for point, value in r["points"].items():
            if value is not None:
                seen.setdefault(point, []).append(value)
    repeated = {p: v for p, v in seen.items() if len(v) > 1}
    if not repeated:
        return []
    spreads = sorted((max(v) - min(v)) / min(v) for v in repeated.values())
    lines = [
        f"Run-to-run noise: {len(repeated)} points were measured by more than one run; the spread (max - min) / min "
        f"of the same point's throughput has median {spreads[len(spreads) // 2]:.1%} and maximum {spreads[-1]:.1%}. "
        "The grid's six best points, every measurement of each:",
        "",
        "| point | grid | runs | min | max | spread |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for point in sorted(truth, key=lambda p: -truth[p])[:6]:
        v = seen[point]
        low, high = min(v), max(v)
        lines.append(
            f"| {point} | {truth[point]:,.0f} | {len(v)} | {low:,.0f} | {high:,.0f} | {(high - low) / low:.1%} |"
        )
    return lines


def pooled_means(runs: list[dict[str, Any]]) -> dict[str, tuple[float, int]]:
    """Each point's mean throughput over every run that measured it, and how many did.

    A better estimate of a point than the grid's single draw: on a noisy machine the grid's best is itself
    partly luck, so a run's pick is also judged by pooled means, against the best point measured 3+ times.
    """
    seen: dict[str, list[float]] = {}
    for r in runs:
        for point, value in r["points"].items():
            if value is not None:
                seen.setdefault(point, []).append(value)
    return {p: (sum(v) / len(v), len(v)) for p, v in seen.items()}


def report(runs: list[dict[str, Any]], space: Path) -> str:
    import deepspeed
    import ray
    import torch

    grid = runs[0]
    truth = {p: v for p, v in grid["points"].items() if v is not None}
    grid_best = max(truth.values())
    pooled = pooled_means(runs)
    best_pooled = max((m, p) for p, (m, n) in pooled.items() if n >= 3)[::-1]
    lines = [
        f"# Search efficiency on CPU ({datetime.now(UTC):%Y-%m-%d})",
        "",
        f"Machine: {platform.node()}, {os.cpu_count()} CPUs, {platform.processor() or platform.machine()}; torch "
        f"{torch.__version__}, deepspeed {deepspeed.__version__}, ray {ray.__version__}, optuna {optuna.__version__}.",
        f"Space: `{space.relative_to(REPO)}` ({grid['launched']} valid points, every one run by the grid with "
        f"--no-prune: {len(truth)} fit, {grid['oom']} ran out of the memory budget). Command: "
        "`python benchmarks/search_efficiency.py`.",
        f"Grid best: {grid['best_point']} at {grid_best:,.0f} tokens/s. Best pooled mean (over every run's "
        f"measurements, points measured 3+ times): {best_pooled[0]} at {best_pooled[1]:,.0f} tokens/s "
        f"({pooled[best_pooled[0]][1]} measurements).",
        "",
        "| run | launched | share of grid | failed (oom) | pruned | re-measured | best point "
        "| grid's value / grid best | own value / grid best | pooled mean / best pooled | wall s |",
        "|---|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|",
    ]
    reused = sorted({r["reused_from"] for r in runs if r.get("reused_from")})
    if reused:
        names = ", ".join(r["name"] for r in runs if r.get("reused_from"))
        lines[-3:-3] = [f"Reused from {', '.join(reused)} (same space, machine and runner): {names}.", ""]
    for r in runs:
        found = truth.get(r["best_point"]) if r["best_point"] else None
        by_grid = f"{found / grid_best:.1%}" if found else "-"
        own = f"{r['best_value'] / grid_best:.1%}" if r["best_value"] else "-"
        mean = pooled.get(r["best_point"]) if r["best_point"] else None
        vs_pooled = f"{mean[0] / best_pooled[1]:.1%}" if mean else "-"
        lines.append(
            f"| {r['name']} | {r['launched']} | {r['launched'] / grid['launched']:.0%} | {r['failed']} ({r['oom']}) "
            f"| {r['pruned']} | {r.get('repeats', 0)} | {r['best_point']} | {by_grid} | {own} | {vs_pooled} "
            f"| {r['wall_s']:.0f} |"
        )
    lines += ["", *noise_lines(runs, truth), "", "Grid: every point's throughput (tokens/s; - for out of memory):", ""]
    for point, value in sorted(grid["points"].items(), key=lambda kv: -(kv[1] or 0)):
        lines.append(f"- {point}: {'-' if value is None else f'{value:,.0f}'}")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--space", type=Path, default=DEFAULT_SPACE)
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--budget-share", type=float, default=0.25)
    parser.add_argument("--from-json", type=Path, help="rewrite the report from an earlier run's JSON; run nothing")
    parser.add_argument("--reuse", type=Path, help="take the grid and the samplers not in --rerun from this JSON")
    parser.add_argument("--rerun", default="guided", help="with --reuse: the samplers to run again, e.g. guided,tpe")
    parser.add_argument("--name", default="search-efficiency-cpu", help="result file name after the date")
    args = parser.parse_args()
    space = args.space.resolve()
    if args.from_json:
        args.from_json.with_suffix(".md").write_text(report(json.loads(args.from_json.read_text()), space))
        return
    rerun = set(args.rerun.split(",")) if args.reuse else {"grid", "guided", "random", "tpe"}
    earlier = {r["name"]: r for r in json.loads(args.reuse.read_text())} if args.reuse else {}
    for r in earlier.values():
        r["reused_from"] = args.reuse.name
    with tempfile.TemporaryDirectory(prefix="tuner-efficiency-") as tmp:
        url = f"sqlite:///{Path(tmp) / 'bench.sqlite3'}"
        runs = [
            earlier["grid"]
            if "grid" not in rerun
            else run_search(space, Path(tmp), url, "grid", {"sampler": "grid"}, no_prune=True)
        ]
        budget = max(1, round(runs[0]["launched"] * args.budget_share))
        for seed in range(args.seeds):
            for sampler in ("guided", "random", "tpe"):
                name = f"{sampler}-{seed}"
                if sampler not in rerun:
                    if name in earlier:
                        runs.append(earlier[name])
                    continue
                search: dict[str, Any] = {"sampler": sampler, "seed": seed}
                if sampler != "guided":
                    search["max_trials"] = budget
                runs.append(run_search(space, Path(tmp), url, name, search, False))
    out = REPO / "benchmarks" / "results" / f"{datetime.now(UTC):%Y-%m-%d}-{args.name}.md"
    out.write_text(report(runs, space))
    out.with_suffix(".json").write_text(json.dumps(runs, indent=2))
    print(out.read_text())


if __name__ == "__main__":
    main()
