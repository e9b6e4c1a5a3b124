"""Search logic with a fake runner: what each sampler proposes and what lands in the store.

No Ray and no DeepSpeed here; the end-to-end tests run the real thing.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import optuna
import pytest
from optuna.trial import TrialState
from ray.tune.search import Searcher

from tuner.calibration import Measured
from tuner.dsconfig import build_ds_config
from tuner.estimate import ModelShape, Setup, estimate
from tuner.plan import Budget, MemoryPlanner
from tuner.points import Point, enumerate_points
from tuner.recorder import suggest_point
from tuner.result import TrialResult
from tuner.searcher import RESULT_KEY, StudySearcher
from tuner.space import Space, parse_space

RAW: dict[str, Any] = {
    "model": {"config": {"model_type": "gpt2", "n_layer": 1, "n_embd": 32, "n_head": 2, "vocab_size": 128}},
    "data": {"sequence_length": 16},
    "training": {"global_batch_size": 8},
    "hardware": {"gpus_per_trial": 2},
    "space": {
        "micro_batch_size": [1, 2, 4, 8],
        "zero_stage": [0, 1, 2, 3],
        "offload_optimizer": ["none", "cpu"],
        "offload_param": ["none", "cpu"],
        "activation_checkpointing": [False, True],
    },
}


def make_space(sampler: str = "grid", **search: Any) -> Space:
    raw = json.loads(json.dumps(RAW))
    raw["search"] = {"sampler": sampler, **search}
    return parse_space(raw, default_study="unit")


def fake_result(point: Point, peak_gb: float = 0.5) -> TrialResult:
    """A made-up measurement: bigger micro-batches are faster, stage 3 + param offload fails."""
    if point.offload_param == "cpu":
        return TrialResult.failed("oom", "fake: out of memory", "/nonexistent/trial.log", "tail")
    tokens = 1000.0 * point.micro_batch_size - 10 * point.zero_stage - 5 * point.activation_checkpointing
    figures = {"tokens_per_s": tokens, "samples_per_s": tokens / 16, "step_time_s": 1.0, "peak_mem_gb": peak_gb}
    return TrialResult(figures, log_path="/nonexistent/trial.log", duration_s=1.0)


def drive(space: Space, study: optuna.Study, memory: MemoryPlanner | None = None) -> tuple[StudySearcher, list[Point]]:
    """Run the searcher's suggest/complete cycle the way Tune does, one trial at a time.

    With a memory model, each fake trial measures exactly the model's raw prediction as its peak.
    """
    valid = enumerate_points(space).valid
    configs = {p: build_ds_config({}, p, global_batch=8, ranks=2, precision="bf16", accelerator="cpu") for p in valid}
    events: list[tuple[str, dict[str, Any]]] = []
    searcher = StudySearcher(
        study, space, valid, configs, lambda kind, data: events.append((kind, data)), memory=memory
    )
    run: list[Point] = []
    for i in range(200):
        suggestion = searcher.suggest(f"t{i}")
        if suggestion == Searcher.FINISHED:
            break
        assert suggestion is not None
        point = Point.from_params(suggestion["point"])
        assert suggestion["ds_config"] == configs[point]
        run.append(point)
        peak = estimate(memory.shape, point, memory.setup).device_gb if memory else 0.5
        result = fake_result(point, peak)
        searcher.on_trial_complete(f"t{i}", {RESULT_KEY: json.dumps(dataclasses.asdict(result))})
    assert sum(kind == "end" for kind, _ in events) == len(run)
    return searcher, run


@pytest.mark.parametrize("sampler", ["grid", "random", "tpe"])
def test_every_valid_point_runs_once_and_nothing_stays_running(sampler: str) -> None:
    space = make_space(sampler)
    study = optuna.create_study(direction="maximize")
    _, run = drive(space, study)
    valid = enumerate_points(space).valid
    assert sorted(run) == sorted(valid)  # each valid point exactly once, no invalid one
    assert not study.get_trials(states=(TrialState.RUNNING, TrialState.WAITING))
    real = [t for t in study.trials if "duplicate_of" not in t.user_attrs]
    assert len(real) == len(valid)
    for t in real:
        point = Point.from_params(t.params)
        assert t.user_attrs["point"] == point.label()
        assert t.user_attrs["ds_config"]["train_micro_batch_size_per_gpu"] == point.micro_batch_size
        if point.offload_param == "cpu":
            assert t.state == TrialState.FAIL
            assert t.user_attrs["failure_category"] == "oom"
            assert t.user_attrs["failure_reason"] == "fake: out of memory"
        else:
            assert t.state == TrialState.COMPLETE
            assert t.value == t.user_attrs["tokens_per_s"]
    best = study.best_trial
    largest = max(p.micro_batch_size for p in valid)  # 4: 8 x 2 ranks does not divide the global batch 8
    assert best.params["micro_batch_size"] == largest == 4 and best.params["zero_stage"] == 0


def test_grid_runs_points_in_enumeration_order() -> None:
    space = make_space("grid")
    _, run = drive(space, optuna.create_study(direction="maximize"))
    assert run == list(enumerate_points(space).valid)


def test_grid_runs_the_neutral_value_of_a_searched_optional_knob_as_enqueued() -> None:
    """An enqueued point at tp 1 leaves tensor_parallel_size out of its params; unless the recorder enqueues it at
    1, Optuna draws it when the trial suggests it, and the searcher finds another point than it asked for."""
    raw = json.loads(json.dumps(RAW))
    raw["model"]["config"] = {"model_type": "llama", "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
                              "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 128}  # fmt: skip
    raw["space"] = {"micro_batch_size": [1], "zero_stage": [1], "tensor_parallel_size": [1, 2],
                    "sequence_parallel_size": [1, 2]}  # fmt: skip
    raw["search"] = {"sampler": "grid"}
    space = parse_space(raw, default_study="unit")
    _, run = drive(space, optuna.create_study(direction="maximize"))
    assert [(p.tensor_parallel_size, p.sequence_parallel_size) for p in run] == [(1, 1), (1, 2), (2, 1)]


def test_max_trials_caps_the_launches_and_a_rerun_continues_without_repeats() -> None:
    space = make_space("random", max_trials=5, seed=3)
    study = optuna.create_study(direction="maximize")
    _, first = drive(space, study)
    _, second = drive(space, study)
    assert len(first) == 5 and len(second) == 5
    assert not set(first) & set(second)  # completed and failed points are never measured twice


def test_tpe_suggestions_are_conditional_on_the_stage() -> None:
    space = make_space("tpe")
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=0))
    valid = enumerate_points(space).valid
    for _ in range(40):
        trial = study.ask()
        point = suggest_point(trial, space, valid)
        assert point in valid
        assert ("offload_param" in trial.params) == (point.zero_stage == 3)
        assert ("offload_optimizer" in trial.params) == (point.zero_stage >= 1)
        study.tell(trial, 0.0)


def test_a_result_without_figures_or_a_raised_trial_ends_as_fail() -> None:
    space = make_space("grid", max_trials=2)
    study = optuna.create_study(direction="maximize")
    valid = enumerate_points(space).valid
    configs = {p: {} for p in valid}
    searcher = StudySearcher(study, space, valid, configs, lambda *_: None)
    searcher.suggest("a")
    searcher.suggest("b")
    searcher.on_trial_complete("a", None, error=True)
    searcher.on_trial_complete("b", {"tokens_per_s": float("nan")})
    states = [t.state for t in study.trials]
    assert states == [TrialState.FAIL, TrialState.FAIL]
    assert {t.user_attrs["failure_category"] for t in study.trials} == {"tuner_error"}


def test_abandoned_trials_are_failed_as_interrupted() -> None:
    space = make_space("grid", max_trials=3)
    study = optuna.create_study(direction="maximize")
    valid = enumerate_points(space).valid
    searcher = StudySearcher(study, space, valid, {p: {} for p in valid}, lambda *_: None)
    searcher.suggest("a")
    searcher.suggest("b")
    assert not searcher.ran_to_the_end()  # a Ctrl-C now is an interruption, with or without trials in flight
    assert searcher.abandon_in_flight("stopped") == 2
    assert [t.state for t in study.trials] == [TrialState.FAIL, TrialState.FAIL]
    assert all(t.user_attrs["failure_category"] == "interrupted" for t in study.trials)
    # Interrupted points were not measured: a rerun runs them again, first.
    rerun = StudySearcher(study, space, valid, {p: {} for p in valid}, lambda *_: None)
    assert rerun.remaining() == list(valid)


SHAPE = ModelShape(
    model_type="gpt2", num_parameters=124_439_808, embedding_parameters=39_383_808,
    largest_layer_parameters=38_597_376, block_parameters=7_087_872, matmul_parameters=123_653_376, num_layers=12,
    hidden_size=768, intermediate_size=3072, num_heads=12, num_kv_heads=12, vocab_size=50257, gated_mlp=False,
    mlp_saved=5, norm_fp32=False, attention="sdpa", attention_dropout=True, hidden_dropout=True,
)  # fmt: skip
SETUP = Setup(ranks=2, sequence_length=1024, precision="bf16", accelerator="cuda")


def planner(prune: bool = True) -> tuple[MemoryPlanner, float]:
    """A budget that micro-batch 2 at ZeRO-0 fits and larger micro-batches at ZeRO-0 do not."""
    limit = estimate(SHAPE, Point(2, 0), SETUP).device_gb * 1.05
    return MemoryPlanner(SHAPE, SETUP, Budget(limit, None, 0.1), prune), limit


def test_points_predicted_not_to_fit_are_pruned_with_their_reason_and_never_launched() -> None:
    space = make_space("grid")
    study = optuna.create_study(direction="maximize")
    memory, limit = planner()
    _, run = drive(space, study, memory)
    pruned = study.get_trials(states=(TrialState.PRUNED,))
    assert pruned, "the budget leaves some points out"
    assert Point(4, 0) in {Point.from_params(t.params) for t in pruned}
    by_evidence = [t for t in pruned if "ran out of memory" in t.user_attrs["prune_reason"]]
    for t in pruned:
        assert Point.from_params(t.params) not in run
        if t not in by_evidence:
            assert t.user_attrs["predicted_mem_gb"] > limit * 1.1
            assert "over the budget" in t.user_attrs["prune_reason"]
    # The fake runs out of memory with parameter offload: points needing at least as much are not launched.
    assert by_evidence and all(t.params["offload_param"] == "cpu" for t in by_evidence)
    launched = [t for t in study.trials if t.state != TrialState.PRUNED]
    assert all(t.user_attrs["predicted_mem_gb"] <= limit * 1.1 for t in launched)
    assert all("predicted_mem_parts_gb" in t.user_attrs for t in launched)
    assert len(run) + len(pruned) == len(enumerate_points(space).valid)  # every point accounted for
    # A rerun of the same study judges the pruned points again but does not record them twice.
    _, again = drive(space, study, memory)
    assert again == [] and len(study.get_trials(states=(TrialState.PRUNED,))) == len(pruned)


def test_no_prune_launches_every_point_and_records_the_prediction() -> None:
    space = make_space("grid")
    study = optuna.create_study(direction="maximize")
    memory, limit = planner(prune=False)
    _, run = drive(space, study, memory)
    assert len(run) == len(enumerate_points(space).valid)
    assert not study.get_trials(states=(TrialState.PRUNED,))
    assert any(t.user_attrs["predicted_mem_gb"] > limit * 1.1 for t in study.trials)


def test_tpe_never_launches_a_pruned_point() -> None:
    space = make_space("tpe", seed=1)
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=1))
    memory, limit = planner()
    _, run = drive(space, study, memory)
    assert all(estimate(SHAPE, p, SETUP).device_gb <= limit * 1.1 for p in run)
    assert study.get_trials(states=(TrialState.PRUNED,))
    assert not study.get_trials(states=(TrialState.RUNNING,))


def test_a_measured_fit_overrules_the_model() -> None:
    memory, limit = planner()
    big = Point(4, 0)
    judged = memory.judge(big, [])
    assert judged.fits is False
    inside = [Measured(Point(8, 0), limit * 0.9)]  # a hungrier point measured inside the budget
    judged = memory.judge(big, inside)
    assert judged.fits is True
    hungry = estimate(SHAPE, Point(8, 0), SETUP).device_gb
    outside = [Measured(Point(8, 0), hungry)]  # measured as predicted: over the budget, no witness
    assert hungry > limit and memory.judge(big, outside).fits is False


def test_prune_margin_defaults_by_device_kind_and_the_space_overrides_it() -> None:
    from tuner.plan import prune_margin

    assert prune_margin(make_space("grid"), "cuda") == 0.10
    assert prune_margin(make_space("grid"), "cpu") == 0.20
    assert prune_margin(make_space("grid", prune_margin=0.05), "cpu") == 0.05


def test_guided_finds_the_best_that_fits_with_fewer_trials_and_stops_by_its_rule() -> None:
    space = make_space("guided")
    study = optuna.create_study(direction="maximize")
    memory, _limit = planner()
    searcher, run = drive(space, study, memory)
    valid = enumerate_points(space).valid
    fitting = [p for p in valid if memory.judge(p, []).fits and p.offload_param == "none"]
    best = max(fitting, key=lambda p: fake_result(p).figures["tokens_per_s"])
    assert Point.from_params(study.best_trial.params) == best, study.best_trial.params  # params omit one-value knobs
    assert len(run) < len(valid) / 2, f"{len(run)} of {len(valid)}"
    assert all(memory.judge(p, []).fits for p in run)  # never a point the model rules out
    assert not study.get_trials(states=(TrialState.RUNNING, TrialState.WAITING))
    assert searcher.suggest("after") == Searcher.FINISHED


def test_a_search_ran_to_the_end_once_its_budget_is_spent_or_nothing_is_left() -> None:
    space = make_space("grid", max_trials=2)
    valid = enumerate_points(space).valid
    searcher = StudySearcher(
        optuna.create_study(direction="maximize"), space, valid, {p: {} for p in valid}, lambda *_: None
    )
    searcher.suggest("a")
    assert not searcher.ran_to_the_end()
    searcher.suggest("b")  # Tune asks no more at num_samples = the budget: never told FINISHED
    assert not searcher.finished and searcher.ran_to_the_end()
    everything = make_space("grid")
    searcher, _ = drive(everything, optuna.create_study(direction="maximize"))
    assert searcher.finished and searcher.ran_to_the_end()


def test_guided_needs_a_speed_objective() -> None:
    from tuner.errors import SpaceError

    with pytest.raises(SpaceError, match=r"search\.objective"):
        make_space("guided", objective="peak_mem_gb")


@pytest.mark.parametrize(
    ("search", "expected"),
    [
        ({"sampler": "random"}, 1.25),
        ({"sampler": "guided", "early_stop_margin": 0.5}, 1.5),
        ({"sampler": "grid"}, None),  # the ground truth measures every point fully
        ({"sampler": "grid", "early_stop": True}, 1.25),
        ({"sampler": "random", "early_stop": False}, None),
        ({"sampler": "tpe", "objective": ["tokens_per_s", "peak_mem_gb"]}, None),  # slower can be on the front
    ],
)
def test_a_trial_is_told_the_step_time_past_which_it_is_clearly_slower(
    search: dict[str, Any], expected: float | None
) -> None:
    space = make_space(**search)
    study = optuna.create_study(directions=space.directions)
    valid = enumerate_points(space).valid
    configs = {p: {} for p in valid}
    searcher = StudySearcher(study, space, valid, configs, lambda *_: None)
    first = searcher.suggest("t0")
    assert isinstance(first, dict) and first["stop_over_step_s"] is None  # nothing measured yet
    result = fake_result(Point.from_params(first["point"]))  # a step of 1.0 s
    searcher.on_trial_complete("t0", {RESULT_KEY: json.dumps(dataclasses.asdict(result))})
    second = searcher.suggest("t1")
    assert isinstance(second, dict)
    assert second["stop_over_step_s"] == (pytest.approx(expected) if expected else None)
    trial = study.trials[second["trial_number"]]
    assert trial.user_attrs.get("early_stop_over_step_s") == second["stop_over_step_s"]


def run_noisy(space: Space, draws: dict[Point, list[float]]) -> tuple[optuna.Study, list[Point]]:
    """Drive the searcher with throughputs drawn in order per point: a noisy machine, scripted."""
    study = optuna.create_study(direction="maximize")
    valid = enumerate_points(space).valid
    searcher = StudySearcher(study, space, valid, {p: {} for p in valid}, lambda *_: None)
    run: list[Point] = []
    for i in range(40):
        suggestion = searcher.suggest(f"t{i}")
        if suggestion == Searcher.FINISHED:
            break
        assert isinstance(suggestion, dict)
        point = Point.from_params(suggestion["point"])
        tokens = draws[point][run.count(point)]
        run.append(point)
        result = TrialResult({"tokens_per_s": tokens, "step_time_s": 1.0}, log_path="/x", duration_s=1.0)
        searcher.on_trial_complete(f"t{i}", {RESULT_KEY: json.dumps(dataclasses.asdict(result))})
    return study, run


def test_guided_remeasures_the_points_near_the_best_and_ranks_by_the_mean() -> None:
    from tuner.ranking import best, rank_study

    raw = json.loads(json.dumps(RAW))
    raw["space"] = {"micro_batch_size": [2, 4], "zero_stage": [0, 1, 3]}
    raw["search"] = {"sampler": "guided"}
    space = parse_space(raw, default_study="unit")
    # mb4 z0 is the faster point but its first measurement is unlucky; mb4 z3 is clearly slower.
    draws = {
        Point(4, 0): [1000.0, 1200.0],
        Point(4, 1): [1050.0, 1000.0],
        Point(4, 3): [500.0],
        Point(2, 0): [950.0],
        Point(2, 1): [900.0],
        Point(2, 3): [400.0],
    }
    study, run = run_noisy(space, draws)
    # The two within 10% of the best are measured twice; the repeats lower mb4 z1's lead, which makes
    # points bounded by mb4 z0 (1,000 + 3% slack) plausible again, so guided measures them before stopping.
    assert {p: run.count(p) for p in set(run)} == {
        Point(4, 0): 2,
        Point(4, 1): 2,
        Point(4, 3): 1,
        Point(2, 0): 1,
        Point(2, 1): 1,
    }
    repeats = [t for t in study.trials if "repeat_of" in t.user_attrs]
    assert {t.user_attrs["repeat_of"] for t in repeats} == {
        t.number for t in study.trials if t.params in (Point(4, 0).params(), Point(4, 1).params())
    } - {t.number for t in repeats}
    top = best(rank_study(study))
    assert top is not None and Point.from_params(top.trial.params) == Point(4, 0) and top.trial.value == 1000.0
    assert (top.mean, top.measurements) == (1100.0, 2)

    raw["search"]["remeasure_within"] = 0
    study, run = run_noisy(parse_space(raw, default_study="unit"), draws)
    assert len(run) == len(set(run)) and Point.from_params(study.best_trial.params) == Point(4, 1)
