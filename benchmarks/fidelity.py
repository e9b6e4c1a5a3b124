"""Measurement fidelity on this machine, written to a dated markdown file under benchmarks/results/.

    python benchmarks/fidelity.py [--space search_spaces/quickstart-cpu.yaml] [--repeats 5] [--configs 8]

(a) one configuration repeated: coefficient of variation of tokens/s across runs (goal <= 5% on CPU);
(b) several configurations ranked by a normal short trial and by trials 10x longer: Spearman correlation
    of the two rankings (goal >= 0.95);
(c) a trial's fixed overhead (launch, imports, build, initialise, warm-up, shutdown) as a share of its
    wall time (goal <= 25%);
(d) `tuner search` start-up: seconds from the command's start to its first trial's launch (goal <= 10 s).
Trials run through the same launcher as `tuner search` (real DeepSpeed, real torchrun ranks).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tuner.dsconfig import jit_ops  # noqa: E402
from tuner.points import Point, enumerate_points  # noqa: E402
from tuner.search import detect_accelerator, ds_configs_for, trial_spec  # noqa: E402
from tuner.space import Space, load_space  # noqa: E402
from tuner.trial.launch import run_trial  # noqa: E402
from tuner.trial.ops import prebuild_ops  # noqa: E402


def spearman(a: list[float], b: list[float]) -> float:
    """Spearman's rank correlation (average ranks for ties)."""

    def ranks(values: list[float]) -> list[float]:
        order = sorted(range(len(values)), key=values.__getitem__)
        out = [0.0] * len(values)
        i = 0
        while i < len(order):
            j = i
            while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
                j += 1
            for k in range(i, j + 1):
                out[order[k]] = (i + j) / 2
            i = j + 1
        return out

    ra, rb = ranks(a), ranks(b)
    return statistics.correlation(ra, rb)


def trial(space: Space, point: Point, accelerator: str, work: Path, **over: Any) -> dict[str, Any]:
    spec = trial_spec(space, point, ds_configs_for(space, (point,), accelerator)[point]).replace(**over)
    result = run_trial(
        spec, work, ranks=space.hardware.gpus_per_trial, accelerator=accelerator, timeout_s=space.trial.timeout_s
    )
    if not result.ok:
        raise SystemExit(f"{point.label()}: {result.failure_category}: {result.failure_reason}")
    return {**result.figures, "duration_s": result.duration_s}


def first_launch_s(space_path: Path, tmp: Path) -> float:
    """Seconds from `tuner search` starting to its first trial's spec being written (just before launch)."""
    start = time.time()
    proc = subprocess.Popen(
        [str(Path(sys.executable).parent / "tuner"), "search", str(space_path), "--study", "startup",
         "--storage", f"sqlite:///{tmp / 'startup.db'}", "--max-trials", "1"],
        cwd=tmp, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    proc.wait(timeout=900)
    specs = list((tmp / "tuner_runs" / "startup").glob("trial_*/spec.json"))
    return min(p.stat().st_mtime for p in specs) - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--space", type=Path, default=REPO / "search_spaces" / "quickstart-cpu.yaml")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--configs", type=int, default=8)
    parser.add_argument("--longer", type=int, default=10, help="how many times more measured steps")
    args = parser.parse_args()
    space = load_space(args.space)
    accelerator = detect_accelerator(space)
    points = list(enumerate_points(space).valid)
    step = max(1, len(points) // args.configs)
    chosen = points[::step][: args.configs]
    tmp = Path(tempfile.mkdtemp(prefix="fidelity-"))
    configs = ds_configs_for(space, tuple(points), accelerator)
    prebuild_ops(accelerator, set().union(*(jit_ops(c, accelerator) for c in configs.values())), tmp / "prebuild.log")
    started = time.monotonic()

    startup = first_launch_s(args.space.resolve(), tmp)
    repeated = [trial(space, chosen[0], accelerator, tmp / f"repeat{i}") for i in range(args.repeats)]
    rows = []
    for i, point in enumerate(chosen):
        short = trial(space, point, accelerator, tmp / f"short{i}")
        n = space.trial.measure_steps * args.longer
        long = trial(space, point, accelerator, tmp / f"long{i}", measure_steps=n, max_measure_steps=n)
        rows.append((point, short, long))

    tokens = [r["tokens_per_s"] for r in repeated]
    repeat_cv = statistics.pstdev(tokens) / statistics.fmean(tokens)
    rho = spearman([s["tokens_per_s"] for _, s, _ in rows], [lg["tokens_per_s"] for _, _, lg in rows])
    shorts = [s for _, s, _ in rows] + repeated
    overhead = statistics.fmean(s["overhead_share"] for s in shorts)
    import deepspeed
    import ray
    import torch

    date = datetime.now(UTC)
    lines = [
        f"# Measurement fidelity, {date:%Y-%m-%d} ({accelerator})",
        "",
        f"Space: `{args.space.relative_to(REPO) if args.space.is_relative_to(REPO) else args.space}`; "
        f"trial: {space.trial.warmup_steps} warm-up + {space.trial.measure_steps} measured steps "
        f"(max_cv {space.trial.max_cv}, cap {space.trial.measure_cap}); "
        f"{space.hardware.gpus_per_trial} ranks; benchmark wall time {time.monotonic() - started:.0f} s.",
        f"Machine: {os.cpu_count()} CPUs, {platform.platform()}, Python {platform.python_version()}; "
        f"torch {torch.__version__}, deepspeed {deepspeed.__version__}, ray {ray.__version__}.",
        "",
        "| figure | measured | goal |",
        "|---|---|---|",
        f"| (a) CV of tokens/s, {chosen[0].label()} x {args.repeats} | {repeat_cv:.1%} | <= 5% (CPU) |",
        f"| (b) Spearman, {len(rows)} configs, short vs {args.longer}x longer | {rho:.3f} | >= 0.95 |",
        f"| (c) fixed overhead share of a short trial (mean of {len(shorts)}) | {overhead:.0%} | <= 25% |",
        f"| (d) `tuner search` start to first trial launch | {startup:.1f} s | <= 10 s |",
        "",
        "## (a) repeats",
        "",
        "| run | tokens/s | step s | cv in trial | steps | overhead share |",
        "|---|---|---|---|---|---|",
    ]
    for i, r in enumerate(repeated):
        lines.append(
            f"| {i} | {r['tokens_per_s']:.0f} | {r['step_time_s']:.3f} | {r['step_time_cv']:.3f} "
            f"| {r['measured_steps']:.0f} | {r['overhead_share']:.0%} |"
        )
    lines += [
        "",
        "## (b) short vs long",
        "",
        "| point | short tokens/s | long tokens/s | short steps | long steps | short wall s | fixed overhead s |",
        "|---|---|---|---|---|---|---|",
    ]
    for point, s, lg in rows:
        lines.append(
            f"| {point.label()} | {s['tokens_per_s']:.0f} | {lg['tokens_per_s']:.0f} | {s['measured_steps']:.0f} "
            f"| {lg['measured_steps']:.0f} | {s['duration_s']:.1f} | {s['fixed_overhead_s']:.1f} |"
        )
    lines += [
        "",
        "Fixed overhead of a short trial, mean seconds: "
        + ", ".join(
            f"{k.removesuffix('_s')} {statistics.fmean(s[k] for s in shorts):.1f}"
            for k in ("startup_s", "build_s", "initialize_s", "warmup_s", "measure_s", "fixed_overhead_s")
        ),
        "",
    ]
    out = REPO / "benchmarks" / "results" / f"{date:%Y-%m-%d}-fidelity-{accelerator}.md"
    out.write_text("\n".join(lines))
    print("\n".join(lines[:12]))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
