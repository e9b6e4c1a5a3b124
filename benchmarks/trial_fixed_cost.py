"""A trial's fixed cost, ranks forked by the warm server against ranks started by torchrun, alternating.

    python benchmarks/trial_fixed_cost.py [--space search_spaces/quickstart-cpu.yaml] [--rounds 6] [--points 4]

Runs the space's points through the same launcher as `tuner search` (real DeepSpeed ranks), each point once
cold (TUNER_WARM_START=0: torchrun) and once warm, alternating the order every round so a busy machine
weighs on both alike. One process runs them all, as a Tune actor does: its first warm trial starts the
server. Prints one line per trial and the medians; fixed overhead = wall time - measured steps.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tuner.points import enumerate_points  # noqa: E402
from tuner.search import detect_accelerator, ds_configs_for, trial_spec  # noqa: E402
from tuner.space import load_space  # noqa: E402
from tuner.trial.launch import run_trial  # noqa: E402

PARTS = (
    "startup_s",
    "build_s",
    "initialize_s",
    "warmup_s",
    "measure_s",
    "fixed_overhead_s",
    "overhead_share",
    "step_time_s",
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--space", type=Path, default=REPO / "search_spaces" / "quickstart-cpu.yaml")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--points", type=int, default=4, help="how many of the space's points to cycle through")
    parser.add_argument("--json", type=Path, help="also write every trial's figures here")
    args = parser.parse_args()
    space = load_space(args.space)
    accelerator = detect_accelerator(space)
    points = list(enumerate_points(space).valid)
    points = points[:: max(1, len(points) // args.points)][: args.points]
    configs = ds_configs_for(space, tuple(points), accelerator)
    tmp = Path(tempfile.mkdtemp(prefix="fixed-cost-"))
    rows: list[dict[str, Any]] = []
    for n in range(args.rounds):
        point = points[n % len(points)]
        for mode in ("cold", "warm") if n % 2 == 0 else ("warm", "cold"):
            os.environ["TUNER_WARM_START"] = "1" if mode == "warm" else "0"
            spec = trial_spec(space, point, configs[point])
            started = time.monotonic()
            result = run_trial(
                spec, tmp / f"{n}-{mode}", ranks=space.hardware.gpus_per_trial, accelerator=accelerator,
                timeout_s=space.trial.timeout_s,
            )  # fmt: skip
            wall = time.monotonic() - started
            row = {"round": n, "mode": mode, "point": point.label(), "ok": result.ok, "wall_s": wall}
            row.update({k: result.figures.get(k) for k in (*PARTS, "peak_mem_gb")})
            rows.append(row)
            shown = " ".join(f"{k}={v:.2f}" for k, v in row.items() if isinstance(v, float))
            print(f"{n} {mode:4} {point.label():24} ok={result.ok} {shown}", flush=True)
    for mode in ("cold", "warm"):
        done = [r for r in rows if r["mode"] == mode and r["ok"]]
        later = [r for r in done if r["round"] > 0]  # round 0's warm trial also started the server
        medians = {k: statistics.median(r[k] for r in later) for k in (*PARTS, "wall_s")} if later else {}
        print(mode, "median (rounds 1+):", " ".join(f"{k}={v:.2f}" for k, v in medians.items()))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
