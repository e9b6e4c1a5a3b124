"""One rank of a trial of the user's own script: `python -m tuner.trial.script_shim SPEC.json` under torchrun.

It ties the rank to its torchrun, watches a CPU rank's memory budget, replaces `deepspeed.initialize` with the
measuring one (tuner.trial.script_meter), fills in the script's argument template and runs the script as
`__main__`, unchanged. The meter ends the rank once the steps are measured; a script that gets there first
ends the trial as a failure that says why: it raised (the category of its exception and phase), it never
called `deepspeed.initialize` (launch_error), or it ended before the measured steps (crash).
"""

from __future__ import annotations

import os
import runpy
import signal
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Any

from tuner.result import GB
from tuner.trial.failures import CRASH, LAUNCH_ERROR, classify_exception, one_line
from tuner.trial.guard import die_with_parent
from tuner.trial.spec import TrialSpec
from tuner.trial.worker import _rss_bytes, _watch_host_budget, _write_json
from tuner.workload.script import fill_args, trial_values


def placeholder_values(spec: TrialSpec, out_dir: Path) -> dict[str, Any]:
    """What the script's `{placeholders}` stand for in this trial."""
    values = trial_values(
        spec.point, ds_config=out_dir / "ds_config.json", output_dir=out_dir / "output",
        grad_accum=spec.grad_accum, world_size=spec.world_size, seed=spec.seed, sequence_length=spec.sequence_length,
    )  # fmt: skip
    values.update(micro_batch_size=spec.micro_batch_size, activation_checkpointing=spec.activation_checkpointing)
    return values


def _fail(out_dir: Path, rank: int, phase: str, category: str, reason: str, trace: str = "") -> int:
    _write_json(
        out_dir / f"error_rank{rank}.json",
        {"rank": rank, "phase": phase, "category": category, "reason": reason, "traceback": trace},
    )
    return 1


def main(argv: list[str]) -> int:
    """Run the user's script on this rank; returns the exit code when the script ends before the meter does."""
    die_with_parent(signal.SIGKILL)  # a rank must not outlive its torchrun
    spec_path = Path(argv[0])
    spec = TrialSpec.from_json(spec_path.read_text())
    out_dir = spec_path.parent
    rank = int(os.environ.get("RANK", "0"))
    phase = ["script"]
    clock = {"launched": float(os.environ.get("TUNER_LAUNCH_EPOCH", time.time()))}
    runtime = float(_rss_bytes())
    if spec.device_memory_gb and os.environ.get("DS_ACCELERATOR") == "cpu":
        budget = (spec.device_memory_gb * GB, out_dir, rank, phase)
        threading.Thread(target=_watch_host_budget, args=budget, daemon=True).start()
    assert spec.script is not None, "the shim runs a script"
    try:
        import deepspeed

        from tuner.trial.script_meter import ScriptMeter

        clock["imported"] = time.time()
        meter = ScriptMeter(spec, out_dir, phase, clock)
        meter.install(deepspeed, runtime)
        sys.argv = [spec.script, *fill_args(spec.script_args, placeholder_values(spec, out_dir))]
        sys.path.insert(0, str(Path(spec.script).parent))
        runpy.run_path(spec.script, run_name="__main__")
        ended = "the script ended"
    except SystemExit as exc:
        ended = f"the script exited with code {exc.code if exc.code is not None else 0}"
    except BaseException as exc:
        traceback.print_exc()
        return _fail(out_dir, rank, phase[0], classify_exception(exc, phase[0]), one_line(exc), traceback.format_exc())
    if meter.engine is None:
        return _fail(out_dir, rank, phase[0], LAUNCH_ERROR, f"{ended} without calling deepspeed.initialize")
    needed = meter.steps_needed()
    reason = (
        f"{ended} after {meter.boundaries} optimizer step(s), before the {needed} the trial needs "
        f"(trial.warmup_steps, at least 1, and trial.measure_steps)"
    )
    return _fail(out_dir, rank, phase[0], CRASH, reason)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
