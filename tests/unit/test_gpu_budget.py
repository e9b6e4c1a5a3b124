"""The GPU memory budget's arithmetic: GiB, the overhead outside PyTorch's allocator, the card's own size.

On a GPU the budget caps the caching allocator (what `set_per_process_memory_fraction` limits: reserved
memory), while the CUDA context and NCCL's buffers sit outside it. Points are judged, and the model is
calibrated, on what the cap enforces, against the budget less that overhead.
"""

from __future__ import annotations

import optuna
import pytest

from tests.unit.test_estimate import GPT2_SMALL
from tuner.calibration import Measured
from tuner.devices import device_budget_gb
from tuner.estimate import Setup, estimate
from tuner.plan import GPU_OVERHEAD_PRIOR_GB, Budget, MemoryPlanner, device_budget
from tuner.points import Point
from tuner.store import measured_memory

SETUP = Setup(ranks=8, sequence_length=1024, precision="bf16", accelerator="cuda")


def test_a_gpu_budget_leaves_room_for_the_context_and_nccl_until_a_trial_measures_them() -> None:
    assumed = device_budget(80.0, None, 0.10, "cuda")
    assert assumed.overhead_gb == GPU_OVERHEAD_PRIOR_GB and not assumed.overhead_measured
    assert assumed.usable_gb == pytest.approx(80.0 - GPU_OVERHEAD_PRIOR_GB)
    measured = assumed.with_measured_overhead([0.0, 1.7, 2.4])
    assert measured.usable_gb == pytest.approx(77.6) and measured.overhead_measured
    assert "2.40 GB of CUDA context and NCCL buffers (measured)" in measured.describe()
    assert assumed.with_measured_overhead([0.0]) is assumed  # CPU trials measure none
    cpu = device_budget(8.0, None, 0.20, "cpu")
    assert cpu.overhead_gb == 0.0 and cpu.usable_gb == 8.0  # a CPU rank's RSS already holds everything
    assert device_budget(None, None, 0.10, "cuda").usable_gb is None


def test_a_point_is_judged_against_the_budget_less_the_overhead() -> None:
    point = Point(8, 0)
    need = estimate(GPT2_SMALL, point, SETUP).device_gb
    # fits 1% under the budget as written, but not once 2 GB of context and NCCL buffers are taken out
    budget = Budget(device_gb=need * 1.01, margin=0.0)
    assert budget.over(need, 0.0) is None
    reason = Budget(device_gb=need * 1.01, margin=0.0, overhead_gb=2.0, overhead_measured=True).over(need, 0.0)
    assert reason is not None and "less 2.00 GB of CUDA context and NCCL buffers (measured)" in reason


CHOICES = {
    "micro_batch_size": [1, 2, 4, 8],
    "zero_stage": [0, 1, 2, 3],
    "offload_optimizer": ["none", "cpu"],
    "offload_param": ["none", "cpu"],
    "activation_checkpointing": [False, True],
    "tensor_parallel_size": [1, 2],
    "sequence_parallel_size": [1, 2],
    "tiled_mlp": [False, True],
    "tiled_logits": [False, True],
}


def add_trial(study: optuna.Study, point: Point, **attrs: float) -> None:
    """A COMPLETE trial of `point` with the memory figures `attrs`, as a search records one."""
    dists = {k: optuna.distributions.CategoricalDistribution(CHOICES[k]) for k in point.params()}
    study.add_trial(optuna.trial.create_trial(params=point.params(), distributions=dists, value=1.0, user_attrs=attrs))


def test_the_planner_calibrates_on_the_reserved_peak_and_subtracts_the_measured_overhead() -> None:
    study = optuna.create_study(direction="maximize")
    for point, allocated, reserved in ((Point(2, 0), 5.0, 6.0), (Point(4, 0), 9.0, 10.0)):
        add_trial(study, point, peak_mem_gb=allocated, peak_reserved_gb=reserved, device_overhead_gb=1.5)
    measured = measured_memory(study)
    assert [(m.peak_gb, m.overhead_gb) for m in measured] == [(6.0, 1.5), (10.0, 1.5)]  # reserved, not allocated
    limit = 11.0  # 10 GB reserved fitted 11 GB, but not 11 less 1.5: mb4 is no witness that mb4 fits
    memory = MemoryPlanner(GPT2_SMALL, SETUP, device_budget(limit, None, 0.0, "cuda"))
    verdict = memory.judge(Point(4, 0), measured)
    assert verdict.fits is False and verdict.reason is not None and "(measured)" in verdict.reason
    assert memory.judge(Point(2, 0), measured).fits is True


def test_a_budget_above_the_card_is_judged_against_the_card_and_said() -> None:
    # 80 as written, on a card that reports 79.1 GiB (nvidia-smi counts MiB)
    budget, warning = device_budget_gb(80.0, 79.1)
    assert budget == 79.1 and warning is not None and "hardware.device_memory_gb=80" in warning
    assert device_budget_gb(40.0, 79.1) == (40.0, None)
    assert device_budget_gb(None, 79.1) == (79.1, None)  # no budget: the card's size
    assert device_budget_gb(None, None) == (None, None)  # CPU, or no nvidia-smi


def test_the_search_asks_nvidia_smi_for_the_card_not_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    """torch.cuda in the search's own process would hold a CUDA context on a GPU for the whole search."""
    import torch

    from tuner import search
    from tuner.space import parse_space

    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda *a: pytest.fail("CUDA initialised"))
    monkeypatch.setattr(search, "visible_gpu_memory_gb", lambda: 139.8)
    raw = {
        "model": {"config": {"model_type": "gpt2", "n_layer": 1, "n_embd": 32, "n_head": 2}},
        "data": {"sequence_length": 16},
        "training": {"global_batch_size": 8},
        "space": {"micro_batch_size": [1]},
    }
    assert search.memory_budget(parse_space(raw, "unit"), "cuda") == 139.8
    raw["hardware"] = {"device_memory_gb": 200}
    assert search.memory_budget(parse_space(raw, "unit"), "cuda") == 139.8
    assert search.memory_budget(parse_space(raw, "unit"), "cpu") == 200


def test_measured_memory_reads_older_trials_without_the_new_figures() -> None:
    study = optuna.create_study(direction="maximize")
    add_trial(study, Point(2, 0), peak_mem_gb=0.5)
    assert measured_memory(study) == [Measured(Point(2, 0), 0.5, 0.0)]
