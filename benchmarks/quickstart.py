"""Run the shipped CPU quick-start through the real CLI and write a dated result file.

    python benchmarks/quickstart.py [--space search_spaces/quickstart-cpu.yaml]

Writes benchmarks/results/<date>-<space>.json: wall time of the whole search, every trial's point,
state and figures (from the Optuna store, via pandas), the machine and the software versions.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import optuna

REPO = Path(__file__).resolve().parents[1]
COLUMNS = ("number", "state", "value", "user_attrs_point", "user_attrs_tokens_per_s", "user_attrs_step_time_s",
           "user_attrs_step_time_cv", "user_attrs_peak_mem_gb", "user_attrs_final_loss", "user_attrs_trial_duration_s",
           "user_attrs_failure_category", "user_attrs_failure_reason")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--space", type=Path, default=REPO / "search_spaces" / "quickstart-cpu.yaml")
    args = parser.parse_args()
    space = args.space.resolve()
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{Path(tmp) / 'bench.sqlite3'}"
        start = time.monotonic()
        done = subprocess.run(
            [str(Path(sys.executable).parent / "tuner"), "search", str(space), "--storage", url],
            cwd=tmp, capture_output=True, text=True, check=False,
        )  # fmt: skip
        wall = time.monotonic() - start
        study = optuna.load_study(study_name=space.stem, storage=url)
        frame = study.trials_dataframe(attrs=("number", "state", "value", "user_attrs"))
        trials = frame[[c for c in COLUMNS if c in frame.columns]].to_dict(orient="records")
    import deepspeed
    import ray
    import torch

    result = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "space": str(space.relative_to(REPO)),
        "exit_code": done.returncode,
        "search_wall_s": round(wall, 1),
        "trials": trials,
        "best": {"number": study.best_trial.number, "tokens_per_s": study.best_value} if trials else None,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        "versions": {
            "torch": torch.__version__,
            "deepspeed": deepspeed.__version__,
            "ray": ray.__version__,
            "optuna": optuna.__version__,
        },
        "stdout_tail": done.stdout[-3000:],
    }
    out = REPO / "benchmarks" / "results" / f"{datetime.now(UTC):%Y-%m-%d}-{space.stem}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2, default=str) + "\n")
    print(f"wrote {out}: exit {done.returncode}, {len(trials)} trials in {wall:.0f} s")


if __name__ == "__main__":
    main()
