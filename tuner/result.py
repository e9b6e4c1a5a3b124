"""One frozen record per trial: its figures when it ran, or its failure category and reason.

The attribute names are the store's contract (user attributes of the Optuna trial), with the unit
in the name, so results, the dashboard and export read the same fields.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

GB = 1024**3


@dataclass(frozen=True)
class TrialResult:
    """What a trial produced; `figures` is empty exactly when `failure_category` is set."""

    figures: dict[str, float] = field(default_factory=dict)
    failure_category: str | None = None
    failure_reason: str | None = None
    log_path: str | None = None
    log_tail: str = ""
    duration_s: float = 0.0

    def __post_init__(self) -> None:
        assert (self.failure_category is None) == bool(self.figures), "either figures or a failure"

    @property
    def ok(self) -> bool:
        return self.failure_category is None

    def user_attrs(self) -> dict[str, Any]:
        """Everything worth keeping in the store, as JSON-friendly user attributes."""
        attrs: dict[str, Any] = dict(self.figures)
        attrs["trial_duration_s"] = round(self.duration_s, 3)
        if self.log_path:
            attrs["log_path"] = self.log_path
        if not self.ok:
            attrs["failure_category"] = self.failure_category
            attrs["failure_reason"] = self.failure_reason
            attrs["log_tail"] = self.log_tail[-4000:]
        return attrs

    @classmethod
    def failed(
        cls, category: str, reason: str, log_path: str | None = None, log_tail: str = "", duration_s: float = 0.0
    ) -> TrialResult:
        """A failure record; the category is one of `tuner.trial.failures.CATEGORIES`."""
        return cls({}, category, reason, log_path, log_tail, duration_s)


def figures_from_worker(raw: dict[str, Any], global_batch: int, sequence_length: int) -> dict[str, float]:
    """The store's figures from rank 0's result.json (times already the slowest rank's)."""
    step = float(raw["step_time_s"])
    return {
        "tokens_per_s": global_batch * sequence_length / step,
        "samples_per_s": global_batch / step,
        "step_time_s": step,
        "step_time_cv": float(raw["step_time_cv"]),
        "measured_steps": float(len(raw["step_times_s"])),
        "peak_mem_gb": float(raw["peak_mem_bytes"]) / GB,
        "peak_reserved_gb": float(raw["peak_reserved_bytes"]) / GB,
        "final_loss": float(raw["final_loss"]),
        "num_parameters": float(raw["num_parameters"]),
    }
