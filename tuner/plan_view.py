"""`tuner plan`'s output: the table of every point's predicted memory, or the same as JSON for a script."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from rich.table import Table

from tuner.estimate import GB


def plan_table(plan: Any) -> Table:
    title = f"memory per device (GB of 2^30 bytes), budget {plan.budget.describe()} +{plan.budget.margin:.0%}"
    table = Table(title=title, title_justify="left")
    numeric = ("peak", "params", "grads", "optim", "activ", "logits", "buffers", "runtime", "host/node", "GFLOP/tok")
    for name in ("point", "fits", *numeric):
        table.add_column(name, justify="right" if name in numeric else "left")
    for row in plan.rows:
        parts = row.estimate.parts
        fits = {True: "yes", False: "NO", None: "?"}[row.fits]
        table.add_row(
            row.point.label(), fits, f"{row.predicted_gb:.2f}",
            *(f"{parts[k] / GB:.2f}" for k in ("parameters", "gradients", "optimizer_states", "activations",
                                                "logits", "buffers", "runtime")),
            f"{row.estimate.host_gb:.1f}", f"{row.estimate.flops_per_token / 1e9:.3g}",
        )  # fmt: skip
    return table


def plan_json(plan: Any, space_file: Path) -> dict[str, Any]:
    return {
        "space": str(space_file),
        "model": dataclasses.asdict(plan.shape),
        "setup": dataclasses.asdict(plan.setup),
        "budget": dataclasses.asdict(plan.budget),
        "calibration": dataclasses.asdict(plan.calibrations),
        "points": [
            {
                "point": row.point.params(),
                "label": row.point.label(),
                "fits": row.fits,
                "reason": row.reason,
                "predicted_gb": row.predicted_gb,
                "raw_predicted_gb": row.estimate.device_gb,
                "parts_gb": {k: v / GB for k, v in row.estimate.parts.items()},
                "build_gb": row.estimate.build_bytes / GB,
                "fragmentation_gb": row.estimate.fragmentation_bytes / GB,
                "host_gb_per_node": row.estimate.host_gb,
                "model_flops_per_token": row.estimate.flops_per_token,
            }
            for row in plan.rows
        ],
        "summary": {
            "points": plan.total,
            "invalid": plan.invalid,
            "not_fitting": plan.not_fitting,
            "to_run": plan.to_run,
        },
    }
