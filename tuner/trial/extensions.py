"""Where DeepSpeed's JIT-compiled ops are built: one folder per installation of the tool, not one per user.

torch builds a JIT extension in `$TORCH_EXTENSIONS_DIR/<op name>`, or without it in
`~/.cache/torch_extensions/py311_cu130/<op name>` (torch/utils/cpp_extension.py `_get_build_directory`): one
folder per user and Python/CUDA flavour, keyed by the op's name alone. Two virtual environments of the tool
(or a DeepSpeed upgraded beside an old one) then build `cpu_adam` into the same folder from different
sources, each one's `build.ninja` naming its own paths, and each run rebuilds what the other one built:
30-50 s before the first trial. The ranks and the op prebuild therefore get a folder of their own, keyed by
what decides a build: the installation (sys.prefix), Python, torch, DeepSpeed and the accelerator
DeepSpeed builds for. A TORCH_EXTENSIONS_DIR the user set wins: it is used as torch uses it.
"""

from __future__ import annotations

import hashlib
import os
import re
import sys
from collections.abc import Mapping
from functools import lru_cache
from importlib import metadata
from pathlib import Path

ENV = "TORCH_EXTENSIONS_DIR"


def installed_version(package: str) -> str:
    """A package's installed version, read from its metadata (importing torch or DeepSpeed takes seconds)."""
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "none"


@lru_cache(maxsize=1)
def installation_key() -> str:
    """This installation's folder name: readable versions, then a digest of the environment's path."""
    python = f"py{sys.version_info.major}{sys.version_info.minor}{getattr(sys, 'abiflags', '')}"
    versions = f"ds{installed_version('deepspeed')}-torch{installed_version('torch')}-{python}"
    digest = hashlib.sha256(f"{os.path.realpath(sys.prefix)}\n{versions}".encode()).hexdigest()[:12]
    return re.sub(r"[^A-Za-z0-9._+-]", "_", f"{versions}-{digest}")


def cache_root(environ: Mapping[str, str] | None = None) -> Path:
    """The tool's cache: under XDG_CACHE_HOME (default ~/.cache), as torch's own cache."""
    env = os.environ if environ is None else environ
    cache = env.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache).expanduser() / "tuner"


def tuner_root(environ: Mapping[str, str] | None = None) -> Path:
    """All installations' op folders."""
    return cache_root(environ) / "torch_extensions"


def extensions_dir(accelerator: str, environ: Mapping[str, str] | None = None) -> Path:
    """TORCH_EXTENSIONS_DIR for ranks and builds on `accelerator` (cuda or cpu): the user's, else this
    installation's folder for the accelerator (DeepSpeed's CPU and CUDA builders share op names)."""
    env = os.environ if environ is None else environ
    if env.get(ENV):
        return Path(env[ENV])
    return tuner_root(env) / installation_key() / ("cuda" if accelerator == "cuda" else "cpu")


def op_folders(name: str, environ: Mapping[str, str] | None = None) -> list[Path]:
    """The build folders of op `name` that exist for this installation, every accelerator's (lock clearing)."""
    env = os.environ if environ is None else environ
    if env.get(ENV):
        folders = [Path(env[ENV]) / name]
    else:
        folders = sorted((tuner_root(env) / installation_key()).glob(f"*/{name}"))
    return [folder for folder in folders if folder.is_dir()]
