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


def max_context_table(answers: Any, budget: Any, max_positions: int) -> Table:
    """`tuner plan --max-context`: one row per family, the longest sequence predicted to fit."""
    title = (
        f"longest sequence_length predicted to fit at micro-batch 1 in {budget.describe()} (bisected over multiples "
        f"of 64 tokens up to max_position_embeddings {max_positions}); +{budget.margin:.0%}: within the plan's margin"
    )
    table = Table(title=title, title_justify="left")
    numeric = ("longest", "2^k", f"+{budget.margin:.0%}", "peak GB", "activ GB", "logits GB", "host/node")
    for name in ("family", *numeric, "limited by"):
        table.add_column(name, justify="right" if name in numeric else "left")
    for answer in answers:
        row = answer.at_longest
        parts = row.estimate.parts if row else {}
        table.add_row(
            answer.family.label().removeprefix("mb1 "),
            f"{answer.longest:,}" if answer.longest else "none",
            f"{answer.power_of_two:,}" if answer.power_of_two else "-",
            f"{answer.with_margin:,}" if answer.with_margin else "none",
            f"{row.predicted_gb:.2f}" if row else "-",
            f"{parts['activations'] / GB:.2f}" if row else "-",
            f"{parts['logits'] / GB:.2f}" if row else "-",
            f"{row.estimate.host_gb:.1f}" if row else "-",
            answer.limit,
        )
    return table


def max_context_json(answers: Any, plan_header: dict[str, Any]) -> dict[str, Any]:
    return {
        **plan_header,
        "max_context": [
            {
                "family": {k: v for k, v in a.family.params().items() if k != "micro_batch_size"},
                "label": a.family.label().removeprefix("mb1 "),
                "micro_batch_size": 1,
                "longest": a.longest,
                "power_of_two": a.power_of_two,
                "longest_within_margin": a.with_margin,
                "step": a.step,
                "predicted_gb": a.at_longest.predicted_gb if a.at_longest else None,
                "parts_gb": {k: v / GB for k, v in a.at_longest.estimate.parts.items()} if a.at_longest else None,
                "limited_by": a.limit,
                "reason": a.over.reason if a.over else None,
            }
            for a in answers
        ],
    }
