"""docker/Dockerfile as text: nothing is built here (no docker engine). Its build steps are read, and its
verification step is run against stand-in torch and DeepSpeed packages. compose.yaml needs the docker-compose
tool: tests/integration/test_compose.py.
"""

from __future__ import annotations

import importlib.metadata
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

DOCKERFILE = REPO / "docker" / "Dockerfile"


def dockerfile_steps() -> list[tuple[str, str]]:
    """The Dockerfile's instructions as (INSTRUCTION, arguments), continuation lines joined as Docker joins them."""
    steps, pending = [], ""
    for line in DOCKERFILE.read_text().splitlines():
        if line.lstrip().startswith("#"):
            continue  # Docker drops comment lines, inside a continued instruction too
        if line.endswith("\\"):
            pending += line[:-1]
            continue
        text, pending = (pending + line).strip(), ""
        if text:
            name, _, arguments = text.partition(" ")
            steps.append((name.upper(), arguments.strip()))
    return steps


def build_args() -> dict[str, str]:
    """The Dockerfile's ARG defaults."""
    found = {}
    for name, arguments in dockerfile_steps():
        if name == "ARG" and "=" in arguments:
            key, _, value = arguments.partition("=")
            found[key.strip()] = value.strip().strip("\"'")
    return found


def run_step(*needles: str) -> int:
    """The index (among the Dockerfile's instructions) of the one RUN step holding every needle."""
    found = [
        i for i, (name, text) in enumerate(dockerfile_steps()) if name == "RUN" and all(n in text for n in needles)
    ]
    assert len(found) == 1, f"expected one RUN step with {needles}, found {len(found)}"
    return found[0]


def readme_torch_version() -> str:
    """The torch version the README's test command installs (the block after `<!-- test-command -->`)."""
    after = REPO.joinpath("README.md").read_text().split("<!-- test-command -->", 1)[1]
    command = after.split("```")[1]
    found = re.search(r"torch==([0-9][\w.+]*)", command)
    assert found, "the README's test command pins no torch version"
    return found.group(1)


def test_the_image_pins_the_torch_the_project_is_tested_with_from_a_cuda_index() -> None:
    args = build_args()
    steps = dockerfile_steps()
    assert args.get("TORCH_VERSION") == readme_torch_version()
    assert "devel" in args.get("CUDA_IMAGE", ""), "a CUDA devel image (nvcc) is needed to compile DeepSpeed's ops"
    assert ("FROM", "${CUDA_IMAGE}") in steps
    assert re.search(r"/whl/cu\d+$", args.get("TORCH_INDEX_URL", "")), "torch must come from a CUDA wheel index"
    torch_step = run_step('--index-url "${TORCH_INDEX_URL}"', '"torch==${TORCH_VERSION}"')
    assert torch_step < run_step("deepspeed==${DEEPSPEED_VERSION}", "--no-build-isolation")
    assert ("ENTRYPOINT", '["tuner"]') in steps
    assert "--init" in DOCKERFILE.read_text(), "the header tells to run the container with --init"


def test_deepspeed_is_built_for_cuda_against_that_torch_with_its_adam_ops_prebuilt() -> None:
    args = build_args()
    installed = importlib.metadata.version("deepspeed")
    assert args.get("DEEPSPEED_VERSION") == installed, "the image's DeepSpeed is the one the tests run with"
    assert re.fullmatch(r"0\.19\.\d+", args["DEEPSPEED_VERSION"])
    assert args.get("TORCH_CUDA_ARCH_LIST", "").strip(";"), "docker build sees no GPU: name the architectures"
    steps = dockerfile_steps()
    build = run_step("deepspeed==${DEEPSPEED_VERSION}", "--no-build-isolation")
    text = steps[build][1]
    for setting in ("DS_ACCELERATOR=cuda", "DS_BUILD_FUSED_ADAM=1", "DS_BUILD_CPU_ADAM=1"):
        assert re.search(rf"(^|\s){setting}\s", text), setting
    assert 'TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST}"' in text
    # --no-build-isolation builds with what is installed: the build tools come first
    assert text.index("setuptools") < text.index("deepspeed==") and "ninja" in text.split("&&")[0]
    project = run_step('pip install ".[postgres]"')
    assert build < project and "--force-reinstall" not in steps[project][1]  # the project install keeps that build


def stand_ins(root: Path, accelerator: str, ops: dict[str, int], cuda: str | None, versions: dict[str, str]) -> None:
    """Stand-in torch and DeepSpeed packages, as the Dockerfile's verification step sees them."""
    files = {
        "deepspeed/__init__.py": "",
        "deepspeed/git_version_info.py": f"installed_ops = {ops!r}\naccelerator_name = {accelerator!r}\n",
        f"deepspeed-{versions['DEEPSPEED_VERSION']}.dist-info/METADATA": (
            f"Metadata-Version: 2.1\nName: deepspeed\nVersion: {versions['DEEPSPEED_VERSION']}\n"
        ),
        "torch/__init__.py": f"__version__ = '{versions['TORCH_VERSION']}+cu130'\nfrom . import version\n",
        "torch/version.py": f"cuda = {cuda!r}\n",
        "torch/utils/__init__.py": "",
        "torch/utils/cpp_extension.py": "CUDA_HOME = '/usr/local/cuda'\n",
    }
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)


CUDA_OPS = {"fused_adam": 1, "cpu_adam": 1, "transformer": False}


@pytest.mark.parametrize(
    ("accelerator", "ops", "cuda", "refusal"),
    [
        ("cuda", CUDA_OPS, "13.0", None),
        ("cpu", CUDA_OPS, "13.0", "accelerator 'cpu'"),  # built where torch saw no GPU: the ops are JIT-compiled
        ("cuda", {**CUDA_OPS, "fused_adam": False}, "13.0", "prebuilt ops ['cpu_adam']"),
        ("cuda", {**CUDA_OPS, "cpu_adam": False}, "13.0", "prebuilt ops ['fused_adam']"),
        ("cuda", CUDA_OPS, None, "not the CUDA build"),  # a CPU build of torch
    ],
)
def test_the_build_fails_unless_deepspeed_recorded_cuda_and_both_adam_ops(
    tmp_path: Path, accelerator: str, ops: dict[str, int], cuda: str | None, refusal: str | None
) -> None:
    steps = dockerfile_steps()
    check = run_step("deepspeed.git_version_info", "accelerator_name == 'cuda'", "installed_ops")
    assert check > run_step("deepspeed==${DEEPSPEED_VERSION}", "--no-build-isolation")
    assert check > run_step('pip install ".[postgres]"')
    versions = {k: v for k, v in build_args().items() if k in ("TORCH_VERSION", "DEEPSPEED_VERSION")}
    stand_ins(tmp_path, accelerator, ops, cuda, versions)
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"  # `python` is the venv's
    done = subprocess.run(  # as `docker build` runs a RUN step: sh -c, with the ARGs in the environment
        ["sh", "-c", steps[check][1]],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
        env={**os.environ, **versions, "PATH": path, "PYTHONPATH": str(tmp_path)},
        check=False,
    )
    if refusal is None:
        assert done.returncode == 0, done.stderr
        assert "for cuda" in done.stdout
    else:
        assert done.returncode != 0 and "AssertionError" in done.stderr and refusal in done.stderr, done.stderr
