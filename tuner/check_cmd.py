"""`tuner check`, the command's flow and what it prints: validate everything, run the trial, judge, record.

Bad input (tuner.errors.SpaceError) is found before anything runs or is written; the trial's own failure is
a result (exit 1 with its category and reason), never an exception.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tuner.check import Verdict, VersionChange, check_limit, judge, version_changes
from tuner.check_run import Inputs, for_accelerator, load_inputs, record_check, run_here, run_on_cluster
from tuner.errors import SpaceError
from tuner.result import TrialResult

FORMATS = ("text", "json")


@dataclass(frozen=True)
class Request:
    """The command's flags."""

    config: Path
    provenance: Path | None = None
    max_slowdown: float = 0.05
    max_memory_growth: float = 0.05
    device_memory_gb: float | None = None
    address: str | None = None
    run_dir: Path = Path("tuner_runs")
    record: bool = False
    storage: str | None = None
    fmt: str = "text"


@dataclass(frozen=True)
class Checked:
    """What a check found: the verdict, the run, the versions then and now, and where it was recorded."""

    inputs: Inputs
    verdict: Verdict
    result: TrialResult
    versions: dict[str, str]
    changes: list[VersionChange]
    recorded_as: int | None = None
    notes: list[str] = field(default_factory=list)


def record_url(request: Request, inputs: Inputs) -> str:
    """The store to record in: --storage (or TUNER_STORAGE), else the provenance's; opened now, before the run."""
    from tuner.store import load_study, open_storage

    url = request.storage or inputs.recorded.storage
    if not url:
        raise SpaceError("--storage", "the provenance names no storage: give the search's with --storage")
    if "***" in url:
        raise SpaceError("--storage", f"the provenance's {url} has its password masked: give the URL with --storage")
    study = load_study(open_storage(url, "--storage", existing=True), inputs.recorded.study, "--provenance")
    if not any(t.number == inputs.recorded.trial for t in study.get_trials(deepcopy=False)):
        raise SpaceError("--provenance", f"study {study.study_name!r} in {url} has no trial {inputs.recorded.trial}")
    return url


def prepare(request: Request) -> tuple[Inputs, str | None]:
    """Every flag and file checked (SpaceError), nothing written; the store's URL when --record."""
    if request.fmt not in FORMATS:
        raise SpaceError("--format", f"must be one of {', '.join(FORMATS)}, got {request.fmt!r}")
    check_limit(request.max_slowdown, "--max-slowdown")
    check_limit(request.max_memory_growth, "--max-memory-growth")
    inputs = load_inputs(request.config, request.provenance, request.device_memory_gb, request.address)
    return inputs, record_url(request, inputs) if request.record else None


def run_check(request: Request, inputs: Inputs, url: str | None) -> Checked:
    """Run the exported trial once (here, or on the cluster at --address), judge it, and record it if asked."""
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    trial_dir = (request.run_dir / inputs.recorded.study / f"check_of_{inputs.recorded.trial:04d}_{stamp}").resolve()
    if request.address:
        from tuner.search import cluster_accelerator, connect_ray

        connect_ray(request.address, inputs.accelerator, inputs.space.hardware.gpus_per_trial)
        accelerator = inputs.recorded.accelerator or cluster_accelerator(inputs.space, inputs.accelerator)
        inputs = for_accelerator(inputs, accelerator, request.device_memory_gb)
        result, versions = run_on_cluster(inputs, trial_dir, request.address)
    else:
        result, versions = run_here(inputs, trial_dir)
    failure = None if result.ok else (str(result.failure_category), str(result.failure_reason))
    verdict = judge(
        inputs.recorded.figures, result.figures if result.ok else None, failure,
        request.max_slowdown, request.max_memory_growth,
    )  # fmt: skip
    changes = version_changes(inputs.recorded.versions, versions)
    number = None
    if url is not None:
        attrs = {
            "check_verdict": "pass" if verdict.ok else "fail", "check_reasons": list(verdict.reasons),
            "check_versions": versions, "check_config": str(request.config.resolve()),
        }  # fmt: skip
        number = record_check(url, inputs.recorded, inputs.spec, result, attrs)
    return Checked(inputs, verdict, result, versions, changes, number, list(inputs.notes))


def check_json(checked: Checked) -> dict[str, Any]:
    """One object for CI: the figures and their change, the verdict and its reasons, the versions."""
    rec, verdict = checked.inputs.recorded, checked.verdict
    return {
        "config": str(checked.inputs.config_path),
        "provenance": str(checked.inputs.provenance_path),
        "study": rec.study,
        "trial": rec.trial,
        "point": rec.point,
        "verdict": "pass" if verdict.ok else "fail",
        "exit_code": verdict.exit_code,
        "reasons": list(verdict.reasons),
        "figures": {d.name: d.to_json() for d in verdict.deltas},
        "failure": None if verdict.failure is None else dict(zip(("category", "reason"), verdict.failure, strict=True)),
        "versions": {
            "recorded": {k: rec.versions.get(k) for k in ("torch", "deepspeed", "transformers", "device")},
            "now": checked.versions,
            "changed": [{"name": c.name, "recorded": c.recorded, "now": c.now} for c in checked.changes],
        },
        "log_path": checked.result.log_path,
        "recorded_as": checked.recorded_as,
        "notes": checked.notes,
    }


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{value:+.1%}"


def check_lines(checked: Checked) -> list[str]:
    """The check for a person: a line per figure (recorded, measured, change, allowed), versions, verdict."""
    rec, verdict, spec = checked.inputs.recorded, checked.verdict, checked.inputs.spec
    lines = [
        f"check of trial {rec.trial} of study {rec.study} ({checked.inputs.config_path}): "
        f"{spec.world_size} rank(s) on {checked.inputs.accelerator}"
    ]
    lines += [f"note: {note}" for note in checked.notes]
    width = max(len(d.name) for d in verdict.deltas)
    lines.append(f"{'':{width}}  {'recorded':>12}  {'measured':>12}  {'change':>8}  {'allowed':>8}")
    for d in verdict.deltas:
        measured = "-" if d.measured is None else f"{d.measured:,.4g}"
        lines.append(
            f"{d.name:{width}}  {d.recorded:>12,.4g}  {measured:>12}  {_percent(d.change):>8}  {d.limit:>+8.0%}"
        )
    if checked.changes:
        lines.append("changed since the recording: " + "; ".join(c.describe() for c in checked.changes))
    else:
        now = ", ".join(f"{k} {v}" for k, v in checked.versions.items())
        lines.append(f"versions as recorded: {now}")
    if checked.result.log_path:
        lines.append(f"log: {checked.result.log_path}")
    if checked.recorded_as is not None:
        lines.append(f"recorded as trial {checked.recorded_as} of study {rec.study} (check_of {rec.trial})")
    lines.append("pass: within tolerance" if verdict.ok else "FAIL: " + "; ".join(verdict.reasons))
    return lines
