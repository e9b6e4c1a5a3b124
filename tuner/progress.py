"""What `tuner search` prints while it runs: one line per trial start and end, with the current best."""

from __future__ import annotations

from typing import Any

from rich.console import Console


class Progress:
    """Prints one line per trial start and end, with the current best (tuner.ranking's, sent with the event)."""

    def __init__(self, out: Console, err: Console, objective: str) -> None:
        self.out, self.err = out, err
        self.objective = objective
        self.budget = 0
        self.finished = 0

    def __call__(self, kind: str, data: dict[str, Any]) -> None:
        if kind == "plan":
            self.budget = data["budget"]
            self.out.print(
                f"{data['remaining']} point(s) to run, {self.budget} trial(s) in this run, on {data['accelerator']}"
            )
            if data["memory_budget_gb"] is not None:
                action = "pruned (recorded PRUNED, not launched)" if data["prune"] else "run anyway (--no-prune)"
                self.out.print(
                    f"memory budget {data['memory_budget_gb']:g} GB per device: {data['predicted_unfit']} point(s) "
                    f"predicted not to fit so far, to be {action}",
                    markup=False,
                )
        elif kind == "pruned":
            self.out.print(f"pruned trial {data['number']} {data['point'].label()}: {data['reason']}", markup=False)
        elif kind == "reclaimed":
            if data["reclaimed"]:
                numbers = ", ".join(map(str, data["reclaimed"]))
                self.out.print(f"trial(s) {numbers} were left RUNNING by a search that ended without recording them: "
                          "recorded FAIL interrupted, their points run again")  # fmt: skip
            if data["foreign"]:
                numbers = ", ".join(map(str, data["foreign"]))
                self.err.print(
                    f"warning: trial(s) {numbers} are RUNNING for a search on another host; left as they are "
                    f"(a rerun reclaims a trial once its search has recorded no heartbeat for {data['grace_s']:g} s)"
                )
        elif kind == "concurrency":
            spans = f", each over {data['nodes_per_trial']} nodes" if data.get("nodes_per_trial", 1) > 1 else ""
            self.out.print(f"{data['trials']} trial(s) at a time (what the Ray cluster's resources hold){spans}")
        elif kind == "prebuild":
            names = ", ".join(data.get("ops") or []) or "none needed"
            self.out.print(f"preparing DeepSpeed ops: {names} (prebuilt, or compiled once, cached) ...", markup=False)
        elif kind == "warning":
            self.err.print(f"warning: {data['message']}", markup=False)
        elif kind == "end":
            self._end(data)

    def _end(self, data: dict[str, Any]) -> None:
        self.finished += 1
        result = data["result"]
        head = f"[{self.finished}/{self.budget}] trial {data['number']} {data['point'].label()}:"
        if not result.ok:
            self.out.print(f"{head} FAIL {result.failure_category}: {result.failure_reason}", markup=False)
            return
        best = data.get("best")
        f = result.figures
        mfu = f" MFU {f['mfu']:.1%}," if "mfu" in f else ""
        noisy = " composed" if result.step_timing == "composed" else ""
        noisy += " NOISY" if f.get("noisy") else ""
        noisy += ", STOPPED EARLY: clearly slower than the best" if f.get("stopped_early") else ""
        if "tokens_per_s" in f:
            speed = f"{f['tokens_per_s']:,.0f} tokens/s, {f['tflops_per_device']:.3g} TFLOP/s/device,{mfu}"
        else:  # a script's samples without a stated length
            speed = f"{f['samples_per_s']:,.1f} samples/s,"
        self.out.print(
            f"{head} {speed} "
            f"step {f['step_time_s']:.3f} s (cv {f['step_time_cv']:.1%} over {f['measured_steps']:.0f}{noisy}), "
            f"peak {f['peak_mem_gb']:.2f} GB, trial {result.duration_s:.0f} s of which fixed "
            f"{f['fixed_overhead_s']:.0f} s" + (f"  (best: {best.describe(self.objective)})" if best else ""),
            markup=False,
        )
