#!/usr/bin/env bash
# The GPU check (benchmarks/gpu_check.py): two small spaces searched on one GPU with real trials, their
# figures, and the exported winner trained through the deepspeed launcher; results in
# benchmarks/results/<date>-gpu-check.md. At most 8 minutes on one H200.
#
#   benchmarks/gpu_check.sh                      # on a GPU node with the project installed
#   benchmarks/gpu_check.sh --cpu --out DIR      # the dry run on CPU ranks (CI runs it)
#   benchmarks/gpu_check.sh --wheels .whl        # first install the wheels benchmarks/gpu_wheels.sh gathered
#                                                # (a lent machine with torch but no registry), then run
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 RAY_USAGE_STATS_ENABLED=0 TOKENIZERS_PARALLELISM=false
args=()
while [ $# -gt 0 ]; do
  case "$1" in
    --wheels)
      # --no-deps: the machine's own torch, numpy and CUDA libraries stay as they are
      python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "$2"/*.whl
      export PYTHONPATH="/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH}" PATH="/tmp/site/bin:$PATH"
      shift 2 ;;
    *) args+=("$1"); shift ;;
  esac
done
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
exec python3 benchmarks/gpu_check.py "${args[@]}"
