"""One frozen record per trial: its figures when it ran, or its failure category and reason.

The attribute names are the store's contract (user attributes of the Optuna trial), with the unit
in the name, so results, the dashboard and export read the same fields.
"""

from __future__ import annotations

import dataclasses
import json
import math
import statistics
from dataclasses import dataclass, field
from typing import Any

from tuner.cost import cost_figures
from tuner.flops import flops_per_token, peak_tflops, work_figures
from tuner.trial.measure import median_ci
from tuner.trial.spec import TrialSpec

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
    nodes: list[str] = field(default_factory=list)  # where the ranks ran, node 0 first (on a Ray cluster)
    log_host: str | None = None  # the node whose disk holds log_path
    spec: TrialSpec | None = None  # what the trial ran
    device_name: str | None = None  # as torch names the device ("cpu" without a GPU): compared across studies
    step_timing: str | None = None  # how its step times were taken: whole or composed (tuner.trial.timing)
    rank_start: str | None = None  # fork (from the warm server, tuner.trial.warm) or torchrun: the fixed cost differs

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
        if self.log_host:
            attrs["log_host"] = self.log_host
        if self.nodes:
            attrs["nodes"] = list(self.nodes)
        if self.device_name:
            attrs["device_name"] = self.device_name
        if self.step_timing:
            attrs["step_timing"] = self.step_timing
        if self.rank_start:
            attrs["rank_start"] = self.rank_start
        if self.spec is not None:
            attrs["data_source"] = self.spec.data.get("source", "synthetic")
        if not self.ok:
            attrs["failure_category"] = self.failure_category
            attrs["failure_reason"] = self.failure_reason
            tail = self.log_tail  # the failing rank's traceback leads; keep its start and the log's end
            attrs["log_tail"] = tail if len(tail) <= 4000 else tail[:2000] + "\n[...]\n" + tail[-2000:]
        return attrs

    def placed(self, nodes: list[str]) -> TrialResult:
        """This result with the nodes its ranks ran on."""
        return dataclasses.replace(self, nodes=list(nodes))

    def moved(self, log_path: str, host: str) -> TrialResult:
        """This result with its logs at `log_path` on `host` (brought back to the search's node)."""
        return dataclasses.replace(self, log_path=log_path, log_host=host)

    def with_spec(self, spec: TrialSpec) -> TrialResult:
        """This result with the spec of the trial that produced it."""
        return dataclasses.replace(self, spec=spec)

    def to_json(self) -> str:
        """The record as JSON (it travels from a Tune trial to the searcher in the trial's last report)."""
        return json.dumps(dataclasses.asdict(self))

    @classmethod
    def from_json(cls, text: str) -> TrialResult:
        data = json.loads(text)
        spec = data.pop("spec", None)
        return cls(**data, spec=TrialSpec.from_dict(spec) if spec else None)

    @classmethod
    def failed(
        cls, category: str, reason: str, log_path: str | None = None, log_tail: str = "", duration_s: float = 0.0
    ) -> TrialResult:
        """A failure record; the category is one of `tuner.trial.failures.Failure`."""
        return cls({}, str(category), reason, log_path, log_tail, duration_s)


def spread(times: list[float]) -> float:
    """Coefficient of variation of step times: the worker stops on it, the store reports it."""
    return statistics.pstdev(times) / statistics.fmean(times)


def figures_from_worker(raw: dict[str, Any], spec: TrialSpec, duration_s: float) -> dict[str, float]:
    """The store's figures from rank 0's result.json (step times already the slowest rank's) and the spec.

    The fixed cost of a trial is everything but its measured steps: launch, imports, model build,
    DeepSpeed initialisation, warm-up and shutdown, as a share of the trial's wall time.
    """
    times = [float(t) for t in raw["step_times_s"]]
    step = statistics.median(times)
    cv = spread(times)
    ci = median_ci(times)
    global_batch, seq = spec.global_batch_size, spec.sequence_length
    clock = raw["clock"]
    measure_s = clock["measured"] - clock["warmed_up"]
    figures = {
        "samples_per_s": global_batch / step,
        "step_time_s": step,
        "step_time_cv": cv,
        "measured_steps": float(len(times)),
        "step_time_ci": ci if math.isfinite(ci) else cv,  # the median's 95% interval, relative (cv for one step)
        "noisy": float(ci > spec.max_cv and not raw.get("stopped_early")),
        "stopped_early": float(bool(raw.get("stopped_early"))),
        "peak_mem_gb": float(raw["peak_mem_bytes"]) / GB,
        "peak_reserved_gb": float(raw["peak_reserved_bytes"]) / GB,
        "host_mem_gb": float(raw["host_mem_bytes"]) / GB,
        "runtime_mem_gb": float(raw.get("runtime_mem_bytes", 0.0)) / GB,
        "build_peak_gb": float(raw.get("build_peak_bytes", 0.0)) / GB,
        "initialize_peak_gb": float(raw.get("initialize_peak_bytes", 0.0)) / GB,
        "final_loss": float(raw["final_loss"]),
        **({"first_loss": float(raw["first_loss"])} if "first_loss" in raw else {}),
        "num_parameters": float(raw["num_parameters"]),
        "trainable_parameters": float(raw.get("trainable_parameters", raw["num_parameters"])),
        "startup_s": clock["imported"] - clock["launched"],
        "build_s": clock["built"] - clock["distributed"],
        "initialize_s": clock["initialized"] - clock["built"],
        "warmup_s": clock["warmed_up"] - clock["initialized"],
        "measure_s": measure_s,
        "fixed_overhead_s": max(0.0, duration_s - measure_s),
        "overhead_share": max(0.0, duration_s - measure_s) / duration_s if duration_s > 0 else 0.0,
    }
    if "warmup_steps" in raw:
        figures["warmup_steps"] = float(raw["warmup_steps"])
    for part, seconds in (raw.get("micro_step_s") or {}).items():  # a composed step's parts
        figures[f"{part}_micro_step_s"] = float(seconds)
    if raw.get("threads_per_rank"):
        figures["threads_per_rank"] = float(raw["threads_per_rank"])
    if raw["device"] == "cuda":  # what lives on the card outside PyTorch's allocator (context, NCCL), and its size
        figures["device_overhead_gb"] = float(raw.get("device_overhead_bytes", 0.0)) / GB
        figures["device_total_gb"] = float(raw.get("device_total_bytes", 0.0)) / GB
    if seq is not None:  # a script's samples have no length unless the space states it: then samples/s only
        figures["tokens_per_s"] = global_batch * seq / step
        per_token = flops_per_token(
            raw["matmul_parameters"], raw["num_layers"], raw["hidden_size"], seq, spec.activation_checkpointing,
            trainable_matmul_params=raw.get("trainable_matmul_parameters"),  # a frozen base: no weight gradients
        )  # fmt: skip
        peak = spec.peak_tflops or (
            peak_tflops(raw["device_name"], spec.precision) if raw["device"] == "cuda" else None
        )
        figures.update(work_figures(figures["tokens_per_s"], int(raw["world_size"]), per_token, peak))
    figures.update(cost_figures(figures, spec.usd_per_hour))
    return figures
