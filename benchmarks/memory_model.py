"""Predicted against measured peak memory on real trials, before and after calibration.

    python benchmarks/memory_model.py [--space FILE ...] [--limit N]

Runs every valid point of each space as a real trial (one warm-up and one measured step: the peak is
reached in the first optimizer step) and compares the memory model's prediction with the measured peak
(on CPU: the rank's peak resident set, interpreter and libraries included). "Calibrated" is leave-one-out:
each point's prediction uses the calibration fitted on the space's other points, as a search would before
running it. Writes a dated markdown file under benchmarks/results/.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tuner.calibration import Measured, calibrate  # noqa: E402
from tuner.dsconfig import jit_ops  # noqa: E402
from tuner.estimate import GB, estimate  # noqa: E402
from tuner.plan import DEFAULT_MARGIN, estimate_setup  # noqa: E402
from tuner.points import Point, enumerate_points  # noqa: E402
from tuner.search import detect_accelerator, ds_configs_for, trial_spec  # noqa: E402
from tuner.space import load_space  # noqa: E402
from tuner.trial.launch import run_trial  # noqa: E402
from tuner.trial.ops import prebuild_ops  # noqa: E402
from tuner.workload.hf_causal_lm import model_shape  # noqa: E402

DEFAULT_SPACES = ["search_spaces/quickstart-cpu.yaml", "benchmarks/spaces/gpt2-small-memory-cpu.yaml"]
MARGIN = DEFAULT_MARGIN["cpu"]  # the search's default prune margin on CPU


def measure_space(path: Path, work: Path, limit: int | None) -> dict[str, Any]:
    """Run every valid point of the space once; keep what was measured (predictions come at report time)."""
    space = load_space(path)
    accelerator = detect_accelerator(space)
    points = list(enumerate_points(space).valid)[:limit]
    configs = ds_configs_for(space, tuple(points), accelerator)
    prebuild_ops(accelerator, set().union(*(jit_ops(c, accelerator) for c in configs.values())), work / "prebuild.log")
    rows: list[dict[str, Any]] = []
    for index, point in enumerate(points):
        spec = trial_spec(space, point, configs[point]).replace(warmup_steps=1, measure_steps=1, max_measure_steps=1)
        started = time.time()
        result = run_trial(
            spec, work / f"{path.stem}_{index:02d}", ranks=space.hardware.gpus_per_trial,
            accelerator=accelerator, timeout_s=space.trial.timeout_s,
        )  # fmt: skip
        row: dict[str, Any] = {
            "point": point.params(),
            "label": point.label(),
            "ok": result.ok,
            "failure": result.failure_reason,
            "wall_s": time.time() - started,
        }
        if result.ok:
            f = result.figures
            row.update({k: f[k] for k in ("peak_mem_gb", "runtime_mem_gb", "build_peak_gb", "initialize_peak_gb")})
        print(json.dumps(row), flush=True)
        rows.append(row)
    return {"space": str(path.relative_to(REPO)), "accelerator": accelerator, "rows": rows}


def predict(result: dict[str, Any]) -> dict[str, Any]:
    """The model's raw and leave-one-out calibrated predictions for every measured point of one space."""
    space = load_space(REPO / result["space"])
    shape = model_shape(space.model_config_dict, space.model.options())
    setup = estimate_setup(space, result["accelerator"])
    rows = []
    for row in result["rows"]:
        est = estimate(shape, Point.from_params(row["point"]), setup)
        rows.append({**row, "predicted_gb": est.device_gb, "runtime_pred_gb": est.parts["runtime"] / GB})
    ok = [r for r in rows if r["ok"]]
    measured = [Measured(Point.from_params(r["point"]), r["peak_mem_gb"]) for r in ok]
    for i, row in enumerate(ok):
        others = calibrate(shape, setup, measured[:i] + measured[i + 1 :])
        cal = others.for_point(measured[i].point)
        row["calibrated_gb"] = cal.apply(row["runtime_pred_gb"], row["predicted_gb"])
        row["calibration"] = "family" if cal is not others.overall else "overall"
        before = calibrate(shape, setup, measured[:i]).for_point(measured[i].point)  # what a grid search knew
        row["sequential_gb"] = before.apply(row["runtime_pred_gb"], row["predicted_gb"])
    full = calibrate(shape, setup, measured)
    return {
        **result,
        "rows": rows,
        "num_parameters": shape.num_parameters,
        "ranks": setup.ranks,
        "calibration": full.describe(),
    }


def error(pred: float, measured: float) -> float:
    return (pred - measured) / measured


def report(measured: list[dict[str, Any]]) -> str:
    """The markdown: one table per space, then the headline errors against the goals."""
    import deepspeed
    import torch

    lines = [
        f"# Memory model: predicted vs measured peak memory ({datetime.now(UTC):%Y-%m-%d})",
        "",
        f"Machine: {platform.node()}, {os.cpu_count()} CPUs, {platform.processor() or platform.machine()}, "
        f"torch {torch.__version__}, deepspeed {deepspeed.__version__}, python {platform.python_version()}.",
        "Command: `python benchmarks/memory_model.py` (one warm-up and one measured step per point).",
        "Measured: the largest peak over ranks (CPU: peak resident set of the rank process, runtime included);",
        "runtime: a rank's resident memory after imports and process-group set-up, before the model is built.",
        "Raw: the model alone. Calibrated: leave-one-out (scale and offset fitted on the space's other points,",
        "as a search calibrates on the trials before a point). In search order: calibrated only on the points",
        "before it in grid order, as `tuner search` with the grid sampler does (the first point is uncalibrated).",
        f"Over-prediction beyond the prune margin ({MARGIN:.0%}) is what could prune a point that fits.",
        "",
    ]
    worst_raw = worst_cal = worst_over = worst_seq = worst_seq_abs = 0.0
    for res in (predict(m) for m in measured):
        lines += [
            f"## {res['space']} ({res['num_parameters'] / 1e6:.1f}M parameters, {res['ranks']} {res['accelerator']}"
            f" ranks); calibration on all points: {res['calibration']}",
            "",
            "| point | measured GB | runtime GB | raw GB | raw error | calibrated GB | calibrated error "
            "| in search order |",
            "|---|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for r in res["rows"]:
            if not r["ok"]:
                lines.append(f"| {r['label']} | failed: {r['failure']} | | {r['predicted_gb']:.3f} | | | |")
                continue
            raw, cal = error(r["predicted_gb"], r["peak_mem_gb"]), error(r["calibrated_gb"], r["peak_mem_gb"])
            seq = error(r["sequential_gb"], r["peak_mem_gb"])
            worst_raw, worst_cal = max(worst_raw, abs(raw)), max(worst_cal, abs(cal))
            worst_over, worst_seq = max(worst_over, cal), max(worst_seq, seq)
            worst_seq_abs = max(worst_seq_abs, abs(seq))
            lines.append(
                f"| {r['label']} | {r['peak_mem_gb']:.3f} | {r['runtime_mem_gb']:.3f} | {r['predicted_gb']:.3f} | "
                f"{raw:+.1%} | {r['calibrated_gb']:.3f} | {cal:+.1%} | {seq:+.1%} |"
            )
        lines.append("")
    lines += [
        "## Headline",
        "",
        f"- Largest error before calibration: {worst_raw:.1%}; after (leave-one-out): {worst_cal:.1%} "
        f"(goal on CPU: within 15%); in search order: {worst_seq_abs:.1%}.",
        f"- Largest over-prediction after calibration: {worst_over:+.1%} (leave-one-out), {worst_seq:+.1%} in "
        f"search order (calibrated only on the points measured before, grid order); false prunes at the "
        f"{MARGIN:.0%} margin, at any budget: {'possible' if max(worst_over, worst_seq) > MARGIN else 'none'}.",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--space", action="append", help="space file (repeatable)")
    parser.add_argument("--limit", type=int, default=None, help="first N valid points of each space only")
    parser.add_argument("--from-json", type=Path, help="re-report measurements saved by an earlier run (no trials run)")
    args = parser.parse_args()
    out = REPO / "benchmarks" / "results" / f"{datetime.now(UTC):%Y-%m-%d}-memory-model-cpu.md"
    if args.from_json:
        results = json.loads(args.from_json.read_text())
    else:
        spaces = [REPO / s for s in (args.space or DEFAULT_SPACES)]
        with tempfile.TemporaryDirectory(prefix="tuner-memory-") as tmp:
            results = [measure_space(path, Path(tmp), args.limit) for path in spaces]
        out.with_name(out.stem + "-measured.json").write_text(json.dumps(results, indent=2))
    text = report(results)
    out.write_text(text)
    print(text)
    print(f"written: {out}")


if __name__ == "__main__":
    main()
