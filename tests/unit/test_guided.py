"""The guided sampler replayed on measured throughput landscapes, and a few synthetic tests of single rules.

The landscapes are what benchmarks/results/*.json recorded (tests/landscapes.py reads them): every point a
file measured, with its mean tokens/s or its out-of-memory failure. A replay drives `next_point` as the
searcher does: the candidates are the landscape's points, `measured` holds the outcome of each point
measured so far (Outcome(None, oom=True) where it ran out of memory), and it goes on until `next_point`
returns None. That is guided alone, without the searcher's extras (the memory model and the evidence rules
that prune, the re-measurement of points near the best). Every file is from CPUs, where the searcher passes
offload_is_slower=False. The figures asserted were observed on these files; each bound sits a little beyond
its figure, so a change to guided that moves one is seen, and the comments keep the figures.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import pytest

from tests.landscapes import LOADERS, Landscape, landscape, search_efficiency_grid_draw
from tuner.guided import Outcome, next_point
from tuner.points import Point

Trace = list[tuple[Point, Outcome]]
NOISY_SEEDS = range(100)
# Replayed on a landscape's means, guided's pick is worth at least this share of the true best everywhere:
# 100% on five landscapes, 99.7% on ds-autotuner-deepspeed (mb16 z0 for mb32 z2, see its note below).
PICK_SHARE = 0.99


def replay(values: Mapping[Point, float | None], fits: Callable[[Point], bool] = lambda _: True) -> Trace:
    """guided on `values` (None: out of memory) as the searcher drives it, each proposal with its outcome."""
    candidates = sorted(values)
    measured: dict[Point, Outcome] = {}
    trace: Trace = []
    for _ in range(len(candidates) + 1):  # one proposal per point at most, then None
        point = next_point(candidates, measured, fits=fits, offload_is_slower=False)
        if point is None:
            return trace
        value = values[point]
        outcome = Outcome(None, oom=True) if value is None else Outcome(value)
        trace.append((point, outcome))
        measured[point] = outcome
    raise AssertionError(f"guided did not stop: {len(trace)} proposals on {len(candidates)} points")


def pick(trace: Trace) -> Point:
    """The best point guided measured, by the values it saw."""
    return max((o.value, p) for p, o in trace if o.value is not None)[1]


def share(land: Landscape, point: Point) -> float:
    """The point's mean over the landscape's true best (a point that sometimes ran out: its completed mean)."""
    mean = land.fitted_mean(point)
    assert mean is not None
    return mean / land.best()[1]


def family(point: Point) -> tuple[int, str, str, bool]:
    return (point.zero_stage, point.offload_optimizer, point.offload_param, point.activation_checkpointing)


def check_trace(trace: Trace) -> None:
    """Never a point twice; never a point of a family at or above a micro-batch that ran out of memory."""
    proposed = [p for p, _ in trace]
    assert len(set(proposed)) == len(proposed), [p.label() for p in proposed]
    for i, (point, _) in enumerate(trace):
        for earlier, outcome in trace[:i]:
            assert not (
                outcome.oom and family(earlier) == family(point) and earlier.micro_batch_size < point.micro_batch_size
            ), f"{point.label()} proposed after {earlier.label()} ran out of memory"


@dataclass(frozen=True)
class Expected:
    """Bounds on one landscape's replays, each a little beyond the figure observed (in the comments)."""

    trials: int  # at most, on the landscape's means
    noisy_trials: int  # at most, over the noisy draws
    worst: float  # the worst draw's pick, as a share of the true best: at least
    mean: float  # the mean over the draws of that share: at least
    vs_grid: float  # that mean minus the grid's (every point measured once, same draws): at least


# On the means no pick misses by more than 0.3%. Under noise a single draw's pick can miss by more than the
# README's median run-to-run spread (13%): by up to 33% (quickstart), 29% (ds-autotuner-ours), 24% (cluster
# on one node), 14% (search-efficiency); measuring every point once misses as badly on the same draws except
# on the two ds-autotuner landscapes, where guided does worse (its assumptions fail there by 14-40%).
EXPECTED = {
    # 70 points, all run by the grid, 19 out of memory (0.62 GB budget). On the means: 25 trials (36%), 18 of
    # them out of memory: without the evidence rules guided tries the largest micro-batch of every family
    # (at mb16, 12 of the 13 it tried ran out). The searcher, with those rules and re-measurement, launched
    # 11-16 (README); the guided of the first file, before them, 33-34. Pick: mb8 z0, best by a mean of 9 runs.
    # Noise 8.6% (pooled over 39 points measured 2-9 times): 24-30 trials; pick 85.9-100% of the best,
    # mean 96.4%, within 5% in 59 draws of 100; the grid's pick on the same draws: mean 95.6%, 44 of 100.
    "search-efficiency": Expected(trials=27, noisy_trials=32, worst=0.85, mean=0.95, vs_grid=0.0),
    # 12 points, each once; no failure. 5 trials (42%); pick mb8 z0. Noise: each trial's step-time CV
    # (2.5-21%; single steps, so an upper estimate for a median of 5): 4-7 trials; pick 66.7-100%, mean
    # 96.7%, within 5% in 86 of 100: the same pick as the grid's in all 100 (the misses are the noise's,
    # mb2 z0 at CV 21% drawn above mb8 z0). With the CV scaled to a median of 5 steps (x 1.25 / sqrt(5))
    # every draw picks mb8 z0.
    "quickstart": Expected(trials=6, noisy_trials=8, worst=0.65, mean=0.95, vs_grid=0.0),
    # 8 of the 84-point space, those our runner measured (6 chosen by the guided run itself, so close to a
    # replay of that run). 6 trials; pick mb16 z1 opt=cpu (its mean of 3). Noise 9.7% pooled: 4-6 trials;
    # pick 71.4-100%, mean 93.9%, within 5% in 66 of 100, against the grid's 98.2% and 83 of 100: here the
    # assumptions fail by 24-40% (mb32 slower than mb16 on one CPU rank; mb32 z2 above mb32 z1) and noise
    # on the bounding point hides the better one.
    "ds-autotuner-ours": Expected(trials=7, noisy_trials=7, worst=0.70, mean=0.93, vs_grid=-0.05),
    # 5 points, DeepSpeed's autotuner's own figures at global batch 32, fast and full mode. 3 trials; pick
    # mb16 z0 at 99.7%: the best, mb32 z2, is never measured because mb32 z1 bounds it (ZeRO-2 beat ZeRO-1 by
    # 14% by these means, 20% in fast mode). Noise 12.1% pooled: 3-4 trials; pick 88.0-100%, mean 96.3%,
    # within 5% in 60 of 100; the grid's: 97.9%, 78 of 100.
    "ds-autotuner-deepspeed": Expected(trials=4, noisy_trials=4, worst=0.87, mean=0.95, vs_grid=-0.02),
    # 4 points (mb2/mb8 x z0/z3) on one Ray node, each once. 3 trials; pick mb8 z0. Noise: step-time CV
    # 10-17%: 3-4 trials; pick 76.4-100%, mean 95.9%, the grid's pick in 98 of 100.
    "cluster-1-node": Expected(trials=3, noisy_trials=4, worst=0.75, mean=0.95, vs_grid=0.0),
    # The same 4 points spanning two nodes: mb8 z3 beat mb8 z0 by 14%, against assumption 2; guided
    # measures mb8 z3 anyway (bounded by the best itself, within the slack) and picks it. Noise: step-time
    # CV 14-18%: 3-4 trials; pick 87.9-100%, mean 96.5%, the grid's pick in all 100.
    "cluster-2-node": Expected(trials=3, noisy_trials=4, worst=0.87, mean=0.95, vs_grid=0.0),
}
assert set(EXPECTED) == set(LOADERS)


def test_the_landscapes_are_what_the_files_record() -> None:
    """Sizes, failures, true bests and noise of the landscapes the figures in this module are about."""
    rows = {
        name: (
            len(land.points),
            land.space_size,
            sum(v is None for v in land.values().values()),
            land.best()[0].label(),
            round(land.best()[1]),
        )
        for name, land in ((name, landscape(name)) for name in LOADERS)
    }
    assert rows == {
        "search-efficiency": (70, 70, 19, "mb8 z0", 7232),  # 7,302 over the 7 runs the evidence report pools
        "quickstart": (12, 12, 0, "mb8 z0", 20027),
        "ds-autotuner-ours": (8, 84, 0, "mb16 z1 opt=cpu", 5711),
        "ds-autotuner-deepspeed": (5, 84, 0, "mb32 z2", 6449),
        "cluster-1-node": (4, 4, 0, "mb8 z0", 11367),
        "cluster-2-node": (4, 4, 0, "mb8 z3", 13615),
    }
    efficiency = landscape("search-efficiency")
    assert max(efficiency.noise.values()) == pytest.approx(0.086, abs=0.001)
    assert len(efficiency.measurements[Point(8, 0)]) == 9
    # At the budget's edge the same point fitted in one run and not in another; it counts as out of memory
    # where it ran out in at least half its trials, and a noisy draw runs it out as often as the file did.
    assert efficiency.oom_share(Point(16, 2, activation_checkpointing=True)) == pytest.approx(0.8)
    assert efficiency.oom_share(Point(16, 2, "cpu", activation_checkpointing=True)) == pytest.approx(0.5)


def work_is_no_faster(fast: Point, slow: Point) -> bool:
    """README rule 2 on CPU: at the same micro-batch, `slow` adds checkpointing or a higher ZeRO stage (from 1
    up, and 0 before 3); offload is not ordered, since on CPU it moves no work off the device."""
    if fast == slow or fast.micro_batch_size != slow.micro_batch_size:
        return False
    if (fast.offload_optimizer, fast.offload_param) != (slow.offload_optimizer, slow.offload_param):
        return False
    if fast.activation_checkpointing and not slow.activation_checkpointing:
        return False
    a, b = fast.zero_stage, slow.zero_stage
    return a == b or (a == 0 and b == 3) or 0 < a < b


def test_the_measured_landscapes_break_guideds_assumptions_in_places() -> None:
    """Where a point the rules say is no faster beats the one that bounds it by more than the 3% slack (by
    the means): the replays below meet these, unlike landscapes built to satisfy the rules."""
    found: dict[str, set[tuple[str, str]]] = {}
    for name in LOADERS:
        values = {p: v for p, v in landscape(name).values().items() if v is not None}
        found[name] = {
            (fast.label(), slow.label())
            for fast, vf in values.items()
            for slow, vs in values.items()
            if vs > vf * 1.03
            and (
                work_is_no_faster(fast, slow)
                or (family(fast) == family(slow) and fast.micro_batch_size > slow.micro_batch_size)
            )
        }
    assert found == {
        "search-efficiency": {
            ("mb4 z1 opt=cpu", "mb2 z1 opt=cpu"),  # +6%
            ("mb16 z0 ckpt", "mb8 z0 ckpt"),  # +12%
            ("mb8 z1 ckpt", "mb8 z2 ckpt"),  # +3.3%
            ("mb8 z1 opt=cpu ckpt", "mb8 z2 opt=cpu ckpt"),  # +13%
        },
        "quickstart": {("mb2 z0", "mb2 z0 ckpt")},  # +11%: checkpointing faster, one draw each
        "ds-autotuner-ours": {
            ("mb32 z0", "mb16 z0"),  # +39%
            ("mb32 z1 opt=cpu", "mb16 z1 opt=cpu"),  # +24%
            ("mb32 z1", "mb32 z2"),  # +40%
        },
        "ds-autotuner-deepspeed": {("mb32 z0", "mb16 z0"), ("mb32 z1", "mb32 z2")},  # +7%, +14%
        "cluster-1-node": set(),
        "cluster-2-node": {("mb8 z0", "mb8 z3")},  # +14%
    }


@pytest.mark.parametrize("name", list(LOADERS))
def test_guided_on_a_measured_landscape_stops_early_and_finds_the_best(name: str) -> None:
    """On the landscape's means: it stops, never repeats a point or climbs past a family's out-of-memory
    micro-batch, spends a fraction of the points, and its best is (within 1%) the true best."""
    land = landscape(name)
    trace = replay(land.values())
    check_trace(trace)
    assert len(trace) <= EXPECTED[name].trials, [p.label() for p, _ in trace]
    assert share(land, pick(trace)) >= PICK_SHARE, pick(trace).label()


def test_on_the_grids_own_draw_guided_keeps_the_best_by_the_mean() -> None:
    """The grid's single measurement of each of the 70 points is one real noisy draw: guided, seeing it, ends
    on mb8 z0 (the best by the mean of 9 runs) after 25 trials, 18 out of memory, as on the means."""
    trace = replay(search_efficiency_grid_draw())
    check_trace(trace)
    assert pick(trace) == Point(8, 0)
    assert (len(trace), sum(o.oom for _, o in trace)) == (25, 18)


@pytest.mark.parametrize("name", list(LOADERS))
def test_guided_under_each_landscapes_own_noise(name: str) -> None:
    """Each draw perturbs every point by its measured noise (and runs it out of memory as often as the file
    did); the pick is judged by the true means. The rules hold on every draw; the pick's worth is compared
    with measuring every point once (the grid) on the same draws, which the noise misleads as well."""
    land, expected = landscape(name), EXPECTED[name]
    shares, grid_shares, trials = [], [], []
    for seed in NOISY_SEEDS:
        drawn = land.draw(seed)
        trace = replay(drawn)
        check_trace(trace)
        trials.append(len(trace))
        shares.append(share(land, pick(trace)))
        grid_pick = max((v, p) for p, v in drawn.items() if v is not None)[1]
        grid_shares.append(share(land, grid_pick))
    figures = f"trials {min(trials)}-{max(trials)}, pick {min(shares):.3f}-{max(shares):.3f}"
    assert max(trials) <= expected.noisy_trials, figures
    assert min(shares) >= expected.worst, figures
    assert statistics.mean(shares) >= expected.mean, figures
    assert statistics.mean(shares) - statistics.mean(grid_shares) >= expected.vs_grid - 1e-9, figures


def test_with_a_memory_model_that_knows_every_failure_nothing_runs_out_of_memory() -> None:
    """`fits` is honoured: with the file's own verdicts as the memory model, guided launches none of the 19
    points that ran out and spends 7 trials of 70 (10%) instead of 25, with the same pick."""
    land = landscape("search-efficiency")
    values = land.values()
    trace = replay(values, fits=lambda p: values[p] is not None)
    assert not any(o.oom for _, o in trace)
    assert len(trace) <= 8, [p.label() for p, _ in trace]
    assert pick(trace) == Point(8, 0)


# Synthetic tests: each checks one rule on a few hand-made points, where a measured landscape would not
# isolate it.


def test_an_out_of_memory_micro_batch_blocks_the_larger_ones_of_its_family_and_the_next_smaller_runs() -> None:
    """Synthetic, for rule 1: mb32 z0 ran out, so mb64 z0 is never proposed; mb16 z0 is next."""
    candidates = [Point(m, 0) for m in (8, 16, 32, 64)]
    assert next_point(candidates, {Point(32, 0): Outcome(None, oom=True)}) == Point(16, 0)
    assert next_point(candidates[2:], {Point(32, 0): Outcome(None, oom=True)}) is None


def test_an_out_of_memory_failure_blocks_only_its_own_family() -> None:
    """Synthetic, for rule 1's scope: mb32 z0 running out says nothing about mb32 z1 or mb32 z0 ckpt."""
    candidates = [Point(32, 0), Point(32, 1), Point(32, 0, activation_checkpointing=True)]
    nxt = next_point(candidates, {Point(32, 0): Outcome(None, oom=True)})
    assert nxt == Point(32, 1)  # unbounded, least work first


def test_a_bounded_point_is_measured_only_within_the_slack_of_the_best() -> None:
    """Synthetic, for rule 3: mb4 z2 can reach at most mb8 z2's value (a larger micro-batch of its family);
    it is measured while that bound, widened by 3%, is above the best, and never once it is not."""
    candidates = [Point(8, 1), Point(8, 2), Point(4, 2)]
    near = {Point(8, 1): Outcome(100.0), Point(8, 2): Outcome(98.0)}
    assert next_point(candidates, near) == Point(4, 2)  # 98 x 1.03 > 100
    far = {Point(8, 1): Outcome(100.0), Point(8, 2): Outcome(96.0)}
    assert next_point(candidates, far) is None  # 96 x 1.03 < 100


def test_offload_bounds_only_where_it_moves_work_off_the_device() -> None:
    """Synthetic, for rule 2's offload clause: with mb8 z1 at 100 and mb8 z0 best at 120, mb8 z1 opt=cpu is
    bounded by 100 on a GPU (never measured) but unbounded on a CPU, where offload moves nothing."""
    candidates = [Point(8, 0), Point(8, 1), Point(8, 1, "cpu")]
    measured = {Point(8, 0): Outcome(120.0), Point(8, 1): Outcome(100.0)}
    assert next_point(candidates, measured, offload_is_slower=True) is None
    assert next_point(candidates, measured, offload_is_slower=False) == Point(8, 1, "cpu")


def test_nothing_measured_yet_starts_with_the_largest_micro_batch_and_least_work() -> None:
    """Synthetic, for the order of rule 1 and 2: nothing bounds anything yet."""
    candidates = [
        Point(m, z, opt, activation_checkpointing=ckpt)
        for m in (8, 16)
        for z in (0, 1, 3)
        for opt in ("none", "cpu")
        for ckpt in (False, True)
        if not (opt == "cpu" and z == 0)
    ]
    assert next_point(candidates, {}) == Point(16, 0)


# Tensor and sequence parallelism, tiling and the sequence length (rules 2-4 of tuner.guided), on synthetic
# landscapes replayed as the searcher drives guided. Values are tokens/s; None ran out of memory.
TP2 = {"tensor_parallel_size": 2}


def layouts(values: Mapping[tuple[int, int, int], float | None]) -> dict[Point, float | None]:
    """{(micro-batch, stage, tp): value} as points."""
    return {Point(mb, z, tensor_parallel_size=tp): v for (mb, z, tp), v in values.items()}


def test_where_tp1_fits_no_tp2_point_is_measured_and_tp1_wins() -> None:
    """Rule 3: every tp2 point has a tp1 twin that fitted, so none is measured, even one whose value (never
    seen) would be higher: the rule is taken as certain, not widened by the slack."""
    values = layouts({
        (4, 0, 1): 900.0, (8, 0, 1): 1000.0, (4, 1, 1): 850.0, (8, 1, 1): 990.0,
        (4, 0, 2): 700.0, (8, 0, 2): 1005.0, (4, 1, 2): 650.0, (8, 1, 2): 800.0,
    })  # fmt: skip
    trace = replay(values)
    check_trace(trace)
    assert not [p.label() for p, _ in trace if p.tensor_parallel_size == 2]
    assert pick(trace) == Point(8, 0)
    # mb4 z0 and z1 are bounded by their mb8 (1,000 and 990) within the slack of the best, so measured (rule 1)
    assert [p.label() for p, _ in trace] == ["mb8 z0", "mb8 z1", "mb4 z0", "mb4 z1"]


def test_where_tp1_runs_out_of_memory_tp2_is_measured_and_wins() -> None:
    """The tp1 twin ran out at mb8, so mb8 tp2 is unbounded and measured; it beats mb4 tp1. mb4 tp2 is never
    measured: its tp1 twin fitted (and mb8 tp2 bounds it)."""
    values = layouts({(4, 0, 1): 900.0, (8, 0, 1): None, (4, 0, 2): 700.0, (8, 0, 2): 1100.0})
    trace = replay(values)
    check_trace(trace)
    assert [(p.label(), o.value) for p, o in trace] == [("mb8 z0", None), ("mb8 z0 tp2", 1100.0), ("mb4 z0", 900.0)]
    assert pick(trace) == Point(8, 0, **TP2)


def test_where_the_memory_model_rules_tp1_out_tp2_is_measured_first() -> None:
    """A tp1 point the memory model rules out is never measured, so nothing bounds its tp2 twin; at the
    largest micro-batch still open, tp2 goes first."""
    values = layouts({(4, 0, 1): 900.0, (8, 0, 1): 1000.0, (4, 0, 2): 700.0, (8, 0, 2): 950.0})
    trace = replay(values, fits=lambda p: p != Point(8, 0))
    assert [p.label() for p, _ in trace] == ["mb8 z0 tp2", "mb4 z0"]
    assert pick(trace) == Point(8, 0, **TP2)


def test_sequence_parallelism_follows_the_same_rule() -> None:
    sp2 = {"sequence_parallel_size": 2}
    candidates = [Point(8, 0), Point(8, 0, **sp2), Point(8, 1, **sp2)]
    assert next_point(candidates, {Point(8, 0): Outcome(100.0)}) == Point(8, 1, **sp2)  # z1 is not z0's twin
    assert next_point(candidates, {Point(8, 0): Outcome(100.0), Point(8, 1, **sp2): Outcome(60.0)}) is None
    assert next_point(candidates, {Point(8, 0): Outcome(None, oom=True)}) == Point(8, 0, **sp2)


@pytest.mark.parametrize("knob", ["tiled_mlp", "tiled_logits"])
def test_tiling_is_bounded_by_its_untiled_twin_and_measured_where_that_ran_out(knob: str) -> None:
    """Rule 2 as for checkpointing: a tiled point is never predicted faster than its untiled twin; it is
    measured where the twin ran out of memory, and within the slack of the best as checkpointing is."""
    tiled = {knob: True}
    candidates = [Point(8, 0), Point(8, 1), Point(8, 1, **tiled)]
    far = {Point(8, 0): Outcome(120.0), Point(8, 1): Outcome(100.0)}
    assert next_point(candidates, far) is None  # bounded by 100, 17% below the best
    near = {Point(8, 0): Outcome(101.0), Point(8, 1): Outcome(100.0)}
    assert next_point(candidates, near) == Point(8, 1, **tiled)  # within the slack
    ran_out = {Point(8, 0): Outcome(120.0), Point(8, 1): Outcome(None, oom=True)}
    assert next_point(candidates, ran_out) == Point(8, 1, **tiled)  # another family: unbounded


def test_each_sequence_length_has_its_own_best() -> None:
    """Rule 4: longer sequences run fewer tokens/s, yet guided goes on at 128 tokens until nothing there can
    beat the best at 128: mb8 z2 is within the slack of that best (bounded by mb8 z1), never of the 64-token
    best, and wins at 128 although rule 2 says it cannot beat mb8 z1."""
    values = {
        Point(8, 0, sequence_length=64): 1000.0, Point(8, 1, sequence_length=64): 950.0,
        Point(8, 2, sequence_length=64): 900.0,
        Point(8, 0, sequence_length=128): 500.0, Point(8, 1, sequence_length=128): 490.0,
        Point(8, 2, sequence_length=128): 520.0,
    }  # fmt: skip
    trace = replay(values)
    best = {}
    for point, outcome in trace:
        if outcome.value is not None and outcome.value > best.get(point.sequence_length, (0.0,))[0]:
            best[point.sequence_length] = (outcome.value, point.label())
    assert best == {64: (1000.0, "mb8 z0 s64"), 128: (520.0, "mb8 z2 s128")}
    assert Point(8, 2, sequence_length=64) not in dict(trace)  # 950 x 1.03 < 1000 at 64 tokens


def test_the_slack_widens_negative_values_too() -> None:
    """A minimised objective reaches guided negated (higher is better): the slack still widens the bound."""
    candidates = [Point(8, 1), Point(8, 2), Point(4, 2)]
    near = {Point(8, 1): Outcome(-1.00), Point(8, 2): Outcome(-1.02)}
    assert next_point(candidates, near) == Point(4, 2)  # -1.02 + 3% of 1.02 > -1.00
    far = {Point(8, 1): Outcome(-1.00), Point(8, 2): Outcome(-1.05)}
    assert next_point(candidates, far) is None
