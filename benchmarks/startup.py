"""`tuner search` start-up: seconds from the command to its first trial's launch, two code trees alternated.

    python benchmarks/startup.py [--before DIR] [--runs 3] [--space search_spaces/quickstart-cpu.yaml] [--uncached]

Each run is `python -m tuner.cli search SPACE --max-trials 1` in a fresh folder, with PYTHONPATH naming the
tree measured (this checkout, and `--before`: an older checkout, e.g. `git worktree add /tmp/before main`);
the first trial's launch is when its spec.json is written, just before its ranks start (as
benchmarks/fidelity.py part (d)), with the CPU seconds its processes used by then. Runs alternate
before/after, so load from other work on the machine falls on both alike. `ray.init` alone is timed the
same way, with the options `tuner search` starts Ray with. The DeepSpeed ops must be built already (any
earlier search); a run that builds them is not start-up. The checks' verdicts (tuner.verdicts) are kept
after a tree's first run: the first run of each tree is a warm-up, not counted; `--uncached` adds a series of
this checkout with the verdicts turned off (TUNER_VERDICT_CACHE=0), as a space's first search runs. Prints one
JSON line per run and the medians.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[1]
RAY_INIT = """
import time, ray
from tuner.search import connect_ray
started = time.monotonic()
connect_ray(None, "cpu", 2)
print(time.monotonic() - started)
ray.shutdown()
"""


def _cpu_s(root: psutil.Process) -> float:
    """CPU seconds used so far by `root` and every process under it (Ray's too): what load cannot inflate."""
    total = 0.0
    for proc in (root, *root.children(recursive=True)):
        try:
            times = proc.cpu_times()
        except psutil.Error:
            continue  # ended meanwhile
        total += times.user + times.system
    return total


def first_launch_s(tree: Path, space: Path, extra_env: dict[str, str] | None = None) -> tuple[float, float]:
    """Seconds from starting `tuner search` (code from `tree`) to its first trial's spec being written, and the
    CPU seconds its processes used by then (sampled every 0.1 s, so a little late)."""
    work = Path(tempfile.mkdtemp(prefix="startup-"))
    env = {**os.environ, "PYTHONPATH": str(tree), **(extra_env or {})}
    start = time.time()
    proc = subprocess.Popen(
        [sys.executable, "-m", "tuner.cli", "search", str(space), "--study", "startup",
         "--storage", f"sqlite:///{work / 'startup.db'}", "--max-trials", "1"],
        cwd=work, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    folder, cpu = work / "tuner_runs" / "startup", 0.0
    while proc.poll() is None and not any(folder.glob("trial_*/spec.json")):
        cpu = _cpu_s(psutil.Process(proc.pid))
        time.sleep(0.1)
    _, stderr = proc.communicate(timeout=900)
    specs = list(folder.glob("trial_*/spec.json"))
    if proc.returncode != 0 or not specs:
        raise SystemExit(f"tuner search failed ({proc.returncode}) in {work}: {stderr[-2000:]}")
    return min(p.stat().st_mtime for p in specs) - start, cpu


def ray_init_s(tree: Path) -> float:
    """Seconds `connect_ray` (code from `tree`) takes to start a local Ray."""
    env = {**os.environ, "PYTHONPATH": str(tree)}
    done = subprocess.run([sys.executable, "-c", RAY_INIT], env=env, capture_output=True, text=True, timeout=300)
    return float(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", type=Path, help="an older checkout to alternate with")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--space", type=Path, default=REPO / "search_spaces" / "quickstart-cpu.yaml")
    parser.add_argument("--uncached", action="store_true", help="a series with the checks' verdicts turned off")
    args = parser.parse_args()
    trees: dict[str, tuple[Path, dict[str, str]]] = {"after": (REPO, {})}
    if args.before:
        trees["before"] = (args.before.resolve(), {})
    if args.uncached:
        trees["after-uncached"] = (REPO, {"TUNER_VERDICT_CACHE": "0"})
    figures: dict[str, dict[str, list[float]]] = {
        name: {"first_trial_s": [], "cpu_s": [], "ray_init_s": []} for name in trees
    }
    for tree, extra_env in trees.values():  # warm-up: the verdicts of this tree and space kept, pages cached
        first_launch_s(tree, args.space.resolve(), extra_env)
    for run in range(args.runs):
        for name, (tree, extra_env) in sorted(trees.items(), reverse=run % 2 == 1):  # the order alternates
            load = os.getloadavg()[0]
            first, cpu = first_launch_s(tree, args.space.resolve(), extra_env)
            ray = ray_init_s(tree)
            for key, value in (("first_trial_s", first), ("cpu_s", cpu), ("ray_init_s", ray)):
                figures[name][key].append(value)
            print(json.dumps({"run": run, "tree": name, "first_trial_s": round(first, 2), "cpu_s": round(cpu, 2),
                              "ray_init_s": round(ray, 2), "load_1min": round(load, 1)}), flush=True)  # fmt: skip
    for name, values in figures.items():
        medians = {key: round(statistics.median(v), 2) for key, v in values.items()}
        print(json.dumps({"tree": name, "median": medians}))


if __name__ == "__main__":
    main()
