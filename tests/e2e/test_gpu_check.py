"""The GPU check's dry run: benchmarks/gpu_check.sh --cpu runs the same steps as on a GPU, on CPU ranks.

Two real searches through the CLI, their figures read back, the best trial exported and trained through the
deepspeed launcher; the report it writes must hold every check passed and every trial's figures.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO


def test_the_gpu_check_runs_end_to_end_on_cpu(tmp_path: Path, cpu_ops: None) -> None:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}  # python3: this venv's
    env.pop("TUNER_STORAGE", None)
    done = subprocess.run(
        [str(REPO / "benchmarks" / "gpu_check.sh"), "--cpu", "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=900, env=env, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    (report_md,) = tmp_path.glob("*-gpu-check-cpu.md")
    report = json.loads(report_md.with_suffix(".json").read_text())
    assert report["mode"] == "cpu" and report["checks"] and all(report["checks"].values())
    assert "llama: the exported config trained 3 steps (deepspeed launcher)" in report["checks"]
    for name in ("gpt2", "llama"):
        trials = report["spaces"][name]["trials"]
        assert len(trials) == 2 and all(t["state"] == "COMPLETE" for t in trials)
        for t in trials:
            assert t["tokens_per_s"] > 0 and t["fixed_overhead_s"] > 0 and t["predicted_mem_gb"] > 0
            assert t["threads_per_rank"] == os.cpu_count()
    text = report_md.read_text()
    assert "## gpt2" in text and "## llama" in text and "step 3/3 loss" in text
