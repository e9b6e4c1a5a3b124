"""How a rank measures: the stopping rules, the timed step, reductions on the rank's device, the GPU cap."""

from __future__ import annotations

import ast
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist

from tests.conftest import REPO
from tuner.trial.measure import (
    allocator_fraction,
    clearly_slower,
    reduce_on_device,
    steady_state_done,
    timed_step,
)

GB = 1024**3


def test_early_stop_needs_two_steps_all_over_the_limit() -> None:
    assert not clearly_slower([5.0], 1.0)  # one step can be an outlier
    assert clearly_slower([5.0, 4.0], 1.0)
    assert not clearly_slower([5.0, 0.9], 1.0)  # one step under the limit: it could still be fast
    assert not clearly_slower([5.0, 4.0, 3.0], None)  # no limit: the first trial, or early stopping off
    assert not clearly_slower([1.0, 1.0], 1.0)  # at the limit is not over it


def test_steady_state_waits_for_the_minimum_then_the_interval_or_the_cap() -> None:
    assert not steady_state_done([1.0, 1.0], minimum=3, cap=6, max_cv=0.05)
    assert steady_state_done([1.0, 1.0, 1.0], minimum=3, cap=6, max_cv=0.05)
    assert not steady_state_done([1.0, 2.0, 1.0], minimum=3, cap=6, max_cv=0.05)
    assert steady_state_done([1.0, 2.0] * 3, minimum=3, cap=6, max_cv=0.05)


class FakeEngine:
    """Stands in for DeepSpeed's engine: a loss per micro-batch, counting the calls the step makes."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def __call__(self, input_ids: torch.Tensor, labels: torch.Tensor) -> Any:
        self.calls.append("forward")
        return type("Out", (), {"loss": input_ids.float().mean()})()

    def backward(self, loss: torch.Tensor) -> None:
        self.calls.append("backward")

    def step(self) -> None:
        self.calls.append("step")


def test_a_timed_step_reads_nothing_back_to_the_host_inside_the_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    """128 micro-steps, two synchronisations and no host read of the loss: real training with a prefetching
    loader does not stop at every micro-step, so neither does the measurement."""
    batches = [{"input_ids": torch.full((1, 4), i), "labels": torch.full((1, 4), i)} for i in range(128)]
    reads: list[str] = []
    for name in ("item", "__float__", "tolist", "cpu"):
        original = getattr(torch.Tensor, name)

        def spy(self: torch.Tensor, *args: Any, _name: str = name, _original: Any = original) -> Any:
            reads.append(_name)
            return _original(self, *args)

        monkeypatch.setattr(torch.Tensor, name, spy)
    syncs: list[int] = []
    engine = FakeEngine()
    elapsed, loss = timed_step(engine, batches, lambda: syncs.append(1))
    assert reads == [] and len(syncs) == 2
    assert engine.calls == ["forward", "backward", "step"] * 128
    assert elapsed >= 0 and isinstance(loss, torch.Tensor)
    monkeypatch.undo()
    assert float(loss) == pytest.approx(sum(range(128)) / 128)  # the mean over the step, read once after


def test_the_worker_builds_its_batches_before_timing_and_reduces_only_on_its_device() -> None:
    """Source check of tuner/trial/worker.py and its timing loop (timing.py): no batch is made inside the timed
    loop, every collective goes through reduce_on_device (a tensor on the rank's device), and no tensor for a
    collective is made there."""
    sources = [(REPO / "tuner" / "trial" / name).read_text() for name in ("worker.py", "timing.py")]
    tree = ast.Module(body=[node for text in sources for node in ast.parse(text).body], type_ignores=[])
    calls = [node for node in ast.walk(tree) if isinstance(node, ast.Call)]
    names = [getattr(c.func, "attr", getattr(c.func, "id", "")) for c in calls]
    assert "all_reduce" not in names and "tensor" not in names  # only the helper makes collective tensors
    assert names.count("reduce_on_device") >= 4  # the first collective, step times, memory, loss
    assert "synthetic_batch" not in names and "step_batches" in names  # tuner.workload.data: ids or the dataset
    loops = [node for node in ast.walk(tree) if isinstance(node, (ast.For, ast.While))]
    for loop in loops:
        inside = {getattr(c.func, "attr", "") for c in ast.walk(loop) if isinstance(c, ast.Call)}
        assert "step_batches" not in inside


@pytest.fixture
def one_rank_gloo() -> Iterator[None]:
    """A one-rank gloo process group, as on a CPU rank."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
    try:
        yield
    finally:
        dist.destroy_process_group()


def test_reductions_make_their_tensor_on_the_given_device(one_rank_gloo: None, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[tuple[torch.device, torch.dtype]] = []
    original = dist.all_reduce

    def spy(tensor: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        seen.append((tensor.device, tensor.dtype))
        return original(tensor, *args, **kwargs)

    monkeypatch.setattr(dist, "all_reduce", spy)
    device = torch.device("cpu")
    assert reduce_on_device([3.0, 2 * GB], "max", device) == [3.0, 2.0 * GB]  # float64 keeps bytes exact
    assert reduce_on_device([1.5], "sum", device) == [1.5]
    assert seen == [(device, torch.float64)] * 2


def test_the_allocator_cap_is_the_budget_less_what_lives_outside_it() -> None:
    card = 80 * GB
    # 40 GB budget, 1 GB of CUDA context and NCCL buffers: the allocator may reserve 39 GB of the 80 GB card
    assert allocator_fraction(40 * GB, card, 1 * GB) == pytest.approx(39 / 80)
    # a budget above the card cannot be enforced beyond the card
    assert allocator_fraction(100 * GB, card, 1 * GB) == 1.0
    assert allocator_fraction(1 * GB, card, 1 * GB) is None  # nothing left: the trial is out of memory
    assert allocator_fraction(0.5 * GB, card, 1 * GB) is None


def test_the_worker_module_has_no_collective_outside_the_helper() -> None:
    """Every file under tuner/trial that runs in a rank keeps collectives in tuner/trial/measure.py."""
    for path in (REPO / "tuner" / "trial").glob("*.py"):
        if path.name == "measure.py":
            continue
        assert "all_reduce(" not in Path(path).read_text(), path
