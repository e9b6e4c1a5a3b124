#!/usr/bin/env bash
# Gather what benchmarks/gpu_check.sh needs on a lent GPU machine that has Python 3.12, CUDA torch,
# transformers, numpy and pandas but reaches no package registry: wheels of the rest, into .whl/
# (ignored by git). Ray's wheel (79 MB) is repacked without its Java jars (32 MB, unused by Python), so
# that everything travels within the device tool's 64 MiB.
#
#   echo /.whl/ >> .git/info/exclude; benchmarks/gpu_wheels.sh
#   then, with the device tool:  run  command="benchmarks/gpu_check.sh --wheels .whl"  carry=[".whl"]
set -euo pipefail
cd "$(dirname "$0")/.."
out=.whl
rm -rf "$out" && mkdir -p "$out"
platform=(--only-binary=:all: --python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64
          --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64)
# The packages the tuner imports that the lent image does not hold (its list: the device tool's KINDS.md).
python3 -m pip download -q --no-deps "${platform[@]}" -d "$out" \
  "ray==2.60.0" "optuna==5.0.0" "alembic" "mako" "colorlog" "sqlalchemy" "greenlet" \
  "pydantic" "pydantic-core" "annotated-types" "typing-inspection" "hjson" \
  "jsonschema" "jsonschema-specifications" "referencing" "rpds-py"
# DeepSpeed ships as a source archive: a pure wheel (ops JIT-compiled on the machine, or by the tuner's prebuild).
DS_BUILD_OPS=0 python3 -m pip wheel -q --no-deps -w "$out" "deepspeed==0.19.8"
python3 - "$out" <<'PY'
import pathlib, sys, zipfile
folder = pathlib.Path(sys.argv[1])
for wheel in folder.glob("ray-*.whl"):
    slim = wheel.with_suffix(".slim")
    with zipfile.ZipFile(wheel) as src, zipfile.ZipFile(slim, "w", zipfile.ZIP_DEFLATED) as dst:
        for item in src.infolist():
            if item.filename.startswith("ray/jars/"):
                continue
            data = src.read(item.filename)
            if item.filename.endswith(".dist-info/RECORD"):  # pip checks RECORD: drop the jars' lines
                data = b"".join(l for l in data.splitlines(True) if not l.startswith(b"ray/jars/"))
            dst.writestr(item, data)
    slim.replace(wheel)
total = sum(p.stat().st_size for p in folder.iterdir())
print(f"{len(list(folder.iterdir()))} wheels, {total / 2**20:.1f} MiB in {folder}")
PY
