"""Measurement fidelity on this machine, written to a dated markdown file under benchmarks/results/.

    python benchmarks/fidelity.py [--space search_spaces/quickstart-cpu.yaml] [--repeats 5] [--configs 8] [--tag T]

(a) one configuration repeated: coefficient of variation of tokens/s across runs (goal <= 5% on CPU);
(b) several configurations ranked by a normal short trial and by trials 10x longer: Spearman correlation
    of the two rankings (goal >= 0.95);
(c) a trial's fixed overhead (launch, imports, build, initialise, warm-up, shutdown) as a share of its
    wall time (goal <= 25%);
(d) `tuner search` start-up: seconds from the command's start to its first trial's launch (goal <= 10 s);
(e) composed step timing against whole steps (trial.step_timing; --only-composed runs it alone) across ZeRO
    stages 0-3, CPU offload and accumulation counts: each case runs whole, composed, and whole again; the
    composed-vs-whole difference must be within the whole-vs-whole one (the repeat noise), RMS over the cases;
    then the same within one trial's ranks (rounds of whole, composed, whole again: no trial-to-trial noise).
Trials run through the same launcher as `tuner search` (real DeepSpeed, real torchrun ranks).
"""

from __future__ import annotations

import argparse
import json
import math
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
from tuner.space import Space, load_space, parse_space  # noqa: E402
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
    # (e): the audit rounds are in the rank's result.json only (not a figure a search records)
    audit = json.loads((work / "result.json").read_text()).get("timing_audit") if over.get("audit_rounds") else None
    return {**result.figures, "duration_s": result.duration_s, "timing_audit": audit}


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


# (e): (zero stage, optimizer offload, accumulation micro-steps per step), micro-batch 2, no checkpointing
AUDIT_ROUNDS = 8  # (e) in the same ranks: rounds of whole, composed, whole again after the composed trial's figures
COMPOSED_CASES = ((0, "none", 8), (0, "none", 32), (1, "none", 16), (2, "none", 16), (2, "cpu", 16),
                  (3, "none", 16), (3, "cpu", 8), (3, "none", 32))  # fmt: skip


def composed_rows(space_path: Path, accelerator: str, work: Path) -> list[dict[str, Any]]:
    """(e): each case's whole, composed and second whole trial, on the space's model and ranks."""
    import yaml

    rows = []
    for stage, offload, accum in COMPOSED_CASES:
        raw = yaml.safe_load(space_path.read_text())
        ranks = raw["hardware"]["gpus_per_trial"]
        raw["training"]["global_batch_size"] = 2 * ranks * accum
        raw["space"] = {"micro_batch_size": [2], "zero_stage": [stage], "offload_optimizer": [offload]}
        space = parse_space(raw, default_study="fidelity-composed")
        (point,) = enumerate_points(space).valid
        tag = f"z{stage}-{offload}-a{accum}"
        whole = trial(space, point, accelerator, work / f"{tag}-whole", step_timing="whole")
        composed = trial(
            space, point, accelerator, work / f"{tag}-composed", step_timing="composed", audit_rounds=AUDIT_ROUNDS
        )
        audit = {name: statistics.median(values) for name, values in composed["timing_audit"].items()}
        again = trial(space, point, accelerator, work / f"{tag}-again", step_timing="whole")
        rows.append({"case": f"{point.label()} accum {accum}", "accum": accum, "whole": whole, "composed": composed,
                     "again": again, "error": composed["step_time_s"] / whole["step_time_s"] - 1,
                     "repeat": again["step_time_s"] / whole["step_time_s"] - 1, "audit": audit,
                     "audit_error": audit["composed"] / audit["whole"] - 1,
                     "audit_repeat": audit["whole_again"] / audit["whole"] - 1})  # fmt: skip
    return rows


def composed_lines(rows: list[dict[str, Any]]) -> list[str]:
    """(e)'s table: step times, the composed step's parts, the error and the repeat difference, wall time."""
    lines = [
        "",
        "## (e) composed vs whole step timing",
        "",
        "Each case: a whole-step trial, a composed trial (first + 3 middle + boundary micro-step per sample, "
        "composed = first + (accum - 2) x median middle + boundary), and a second whole-step trial. Each trial is "
        "new processes, whose speed differs from trial to trial. The composed trial's measured seconds include its "
        f"{AUDIT_ROUNDS} audit rounds (below).",
        "",
        "| case | whole s | composed s | error | whole again s | repeat diff | first / middle / boundary ms "
        "| measured s whole / composed |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        w, c, a = r["whole"], r["composed"], r["again"]
        parts = " / ".join(f"{c[f'{p}_micro_step_s'] * 1e3:.0f}" for p in ("first", "middle", "boundary"))
        lines.append(
            f"| {r['case']} | {w['step_time_s']:.3f} | {c['step_time_s']:.3f} | {r['error']:+.1%} "
            f"| {a['step_time_s']:.3f} | {r['repeat']:+.1%} | {parts} | {w['measure_s']:.1f} / {c['measure_s']:.1f} |"
        )
    lines += [
        "",
        f"In the same ranks: after its own figures, the composed trial ran {AUDIT_ROUNDS} rounds of a whole step, a "
        "composed sample and a whole step again (tuner.trial.timing.audit); medians of the rounds, each round the "
        "slowest rank's.",
        "",
        "| case | whole s | composed s | error | whole again s | repeat diff |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        au = r["audit"]
        lines.append(
            f"| {r['case']} | {au['whole']:.3f} | {au['composed']:.3f} | {r['audit_error']:+.1%} "
            f"| {au['whole_again']:.3f} | {r['audit_repeat']:+.1%} |"
        )
    return lines


def audit_line(rows: list[dict[str, Any]]) -> str:
    """(e) in the same ranks: composed vs whole against whole again vs whole, RMS over the cases."""
    errors, repeats = [r["audit_error"] for r in rows], [r["audit_repeat"] for r in rows]
    return (
        f"In the same ranks ({AUDIT_ROUNDS} rounds per case): composed vs whole, RMS {spread(errors)}; "
        f"whole again vs whole {spread(repeats)}."
    )


def composed_only(args: argparse.Namespace) -> None:
    """(e) by itself, for a rerun on a quiet machine: `-composed` result file."""
    import deepspeed
    import ray
    import torch

    space = load_space(args.space)
    accelerator = detect_accelerator(space)
    tmp = Path(tempfile.mkdtemp(prefix="fidelity-"))
    started, loads = time.monotonic(), [os.getloadavg()[0]]
    composed = composed_rows(args.space.resolve(), accelerator, tmp / "composed")
    loads.append(os.getloadavg()[0])
    errors, repeats = [r["error"] for r in composed], [r["repeat"] for r in composed]
    date = datetime.now(UTC)
    lines = [
        f"# Composed vs whole step timing, {date:%Y-%m-%d} ({accelerator})",
        "",
        f"benchmarks/fidelity.py --only-composed: part (e) alone; {space.hardware.gpus_per_trial} ranks, "
        f"wall time {time.monotonic() - started:.0f} s, 1-minute load {min(loads):.1f}-{max(loads):.1f} "
        "(start, end).",
        f"Machine: {os.cpu_count()} CPUs, {platform.platform()}, Python {platform.python_version()}; "
        f"torch {torch.__version__}, deepspeed {deepspeed.__version__}, ray {ray.__version__}.",
        "",
        f"Composed vs whole, RMS over {len(composed)} cases: {spread(errors)}; whole vs whole (the repeat noise): "
        f"{spread(repeats)}.",
        audit_line(composed),
        *composed_lines(composed),
        "",
    ]
    tag = f"-{args.tag}" if args.tag else ""
    out = REPO / "benchmarks" / "results" / f"{date:%Y-%m-%d}-fidelity-{accelerator}-composed{tag}.md"
    out.write_text("\n".join(lines))
    print("\n".join(lines))
    print(f"wrote {out}")


def rms(values: list[float]) -> float:
    return math.sqrt(statistics.fmean(v * v for v in values))


def spread(values: list[float], labels: bool = True) -> str:
    """Relative differences as (e) reports them: RMS, then mean and worst (by size) in brackets."""
    mean, worst = statistics.fmean(values), max(values, key=abs)
    inner = f"mean {mean:+.1%}; worst {worst:+.1%}" if labels else f"{mean:+.1%}; {worst:+.1%}"
    return f"{rms(values):.1%} ({inner})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--space", type=Path, default=REPO / "search_spaces" / "quickstart-cpu.yaml")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--configs", type=int, default=8)
    parser.add_argument("--longer", type=int, default=10, help="how many times more measured steps")
    parser.add_argument("--tag", default="", help="appended to the result file's name (e.g. before, after)")
    parser.add_argument("--no-composed", action="store_true", help="leave out (e), composed vs whole steps")
    parser.add_argument("--only-composed", action="store_true", help="run (e) alone (its own result file)")
    args = parser.parse_args()
    if args.only_composed:
        composed_only(args)
        return
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
    composed = [] if args.no_composed else composed_rows(args.space.resolve(), accelerator, tmp / "composed")

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
    ]
    if composed:
        errors, repeats = [r["error"] for r in composed], [r["repeat"] for r in composed]
        lines.append(
            f"| (e) composed vs whole step time, RMS over {len(composed)} cases (mean; worst) "
            f"| {spread(errors, labels=False)} | <= whole vs whole: {spread(repeats, labels=False)} |"
        )
        errors, repeats = [r["audit_error"] for r in composed], [r["audit_repeat"] for r in composed]
        lines.append(
            f"| (e) the same in the same ranks, {AUDIT_ROUNDS} rounds per case | {spread(errors, labels=False)} "
            f"| <= whole again vs whole: {spread(repeats, labels=False)} |"
        )
    lines += [
        "",
        "Steps per trial: at least measure_steps, then until the median's 95% interval is within max_cv (or the "
        "cap); warm-up: the first step, then any still falling, up to warmup_steps.",
        "",
        "## (a) repeats",
        "",
        "| run | tokens/s | step s | cv in trial | median 95% ci | warm-up steps | steps | overhead share |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for i, r in enumerate(repeated):
        lines.append(
            f"| {i} | {r['tokens_per_s']:.0f} | {r['step_time_s']:.3f} | {r['step_time_cv']:.3f} "
            f"| {r.get('step_time_ci', float('nan')):.3f} | {r.get('warmup_steps', float('nan')):.0f} "
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
    if composed:
        lines += [*composed_lines(composed), ""]
    tag = f"-{args.tag}" if args.tag else ""
    out = REPO / "benchmarks" / "results" / f"{date:%Y-%m-%d}-fidelity-{accelerator}{tag}.md"
    out.write_text("\n".join(lines))
    print("\n".join(lines[:14]))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
