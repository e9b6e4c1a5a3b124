"""Where DeepSpeed's JIT ops are built: this installation's own folder, the user's TORCH_EXTENSIONS_DIR if set."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tuner.trial import extensions, ops
from tuner.trial.env import worker_env
from tuner.trial.extensions import ENV, extensions_dir, installation_key


@pytest.fixture(autouse=True)
def _cache_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """A cache of the test's own, no TORCH_EXTENSIONS_DIR, and the installation key computed afresh."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv(ENV, raising=False)
    installation_key.cache_clear()
    yield
    installation_key.cache_clear()


def _built(folder: Path, name: str, sources: Path) -> Path:
    """An op folder as torch's JIT build leaves it: the library and a build.ninja naming its sources."""
    folder.mkdir(parents=True)
    (folder / f"{name}.so").write_bytes(b"\x7fELF")
    (folder / "build.ninja").write_text(f"build {name}.o: compile {sources}/ops/csrc/{name}.cpp\n")
    return folder


def test_the_ranks_build_ops_in_this_installations_folder_per_accelerator(tmp_path: Path) -> None:
    cpu, cuda = extensions_dir("cpu"), extensions_dir("cuda")
    root = tmp_path / "cache" / "tuner" / "torch_extensions"
    assert cpu.parent == cuda.parent and cpu.parent.parent == root  # <root>/<installation>/<accelerator>
    assert (cpu.name, cuda.name) == ("cpu", "cuda")  # DeepSpeed's CPU and CUDA builders share op names
    key = cpu.parent.name
    assert key.startswith(
        f"ds{extensions.installed_version('deepspeed')}-torch{extensions.installed_version('torch')}-py3"
    )
    assert worker_env("cpu", 2)[ENV] == str(cpu) and worker_env("cuda", 8)[ENV] == str(cuda)


def test_the_users_torch_extensions_dir_wins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV, str(tmp_path / "mine"))
    assert extensions_dir("cpu") == extensions_dir("cuda") == tmp_path / "mine"
    assert worker_env("cpu", 1)[ENV] == str(tmp_path / "mine")


def test_two_installations_or_versions_get_two_folders_and_one_installation_keeps_its_own(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Two venvs (or an upgraded DeepSpeed or torch) no longer rebuild each other's ops: the key differs."""
    first = installation_key()
    installation_key.cache_clear()
    assert installation_key() == first  # stable across runs: the second search reuses the first's builds
    installation_key.cache_clear()
    monkeypatch.setattr(sys, "prefix", "/opt/other-venv")
    assert installation_key() != first
    installation_key.cache_clear()
    monkeypatch.undo()
    monkeypatch.setattr(extensions, "installed_version", lambda package: "9.9" if package == "deepspeed" else "2.0")
    other = installation_key()
    assert other != first and other.startswith("ds9.9-torch2.0-")


def test_torch_builds_in_the_folder_the_worker_environment_names(monkeypatch: pytest.MonkeyPatch) -> None:
    from torch.utils.cpp_extension import _get_build_directory

    monkeypatch.setenv(ENV, worker_env("cpu", 1)[ENV])
    assert Path(_get_build_directory("cpu_adam", verbose=False)) == extensions_dir("cpu") / "cpu_adam"


def test_an_op_counts_as_built_only_in_this_installations_folder_from_its_deepspeed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    deepspeed = tmp_path / "site-packages" / "deepspeed"
    monkeypatch.setattr(ops, "_deepspeed_dir", lambda: deepspeed)
    monkeypatch.setattr(ops, "prebuilt_ops", lambda accelerator: set())
    _built(tmp_path / "home" / ".cache" / "torch_extensions" / "py311_cpu" / "cpu_adam", "cpu_adam", deepspeed)
    assert ops.ops_to_build("cpu", ["cpu_adam"]) == ["cpu_adam"]  # torch's per-user folder is not ours
    _built(extensions_dir("cpu") / "cpu_adam", "cpu_adam", tmp_path / "other-venv" / "deepspeed")
    assert ops.ops_to_build("cpu", ["cpu_adam"]) == ["cpu_adam"]  # built from another DeepSpeed's sources
    ninja = extensions_dir("cpu") / "cpu_adam" / "build.ninja"
    ninja.write_text(ninja.read_text().replace(str(tmp_path / "other-venv" / "deepspeed"), str(deepspeed)))
    assert ops.ops_to_build("cpu", ["cpu_adam"]) == []  # current: no builder imported, no build
    assert ops.ops_to_build("cuda", ["cpu_adam"]) == ["cpu_adam"]  # the CUDA accelerator's own folder


def test_lock_clearing_looks_in_the_folder_the_ops_are_built_in(tmp_path: Path) -> None:
    """A build killed mid-way leaves `<op folder>/lock`; the clearing must look where the ranks build."""
    locks = []
    for accelerator in ("cpu", "cuda"):
        lock = extensions_dir(accelerator) / "cpu_adam" / "lock"
        lock.parent.mkdir(parents=True)
        lock.touch()
        locks.append(lock)
    assert sorted(ops.clear_orphaned_locks(["cpu_adam", "fused_adam"])) == sorted(locks)
    assert not any(lock.exists() for lock in locks)
