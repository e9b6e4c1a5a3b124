"""The orderings the search rules read from the knob registry (pure): more memory, and more work.

A knob's `memory` says which of its values needs more device memory when nothing else changes: "more"
(a larger value: the micro-batch), "less" (checkpointing), "same" (no order: offload moves states, so only
equal values compare; on a CPU-only machine it moves nothing off the device and is ignored), "learned" (the
ZeRO stage: partitioning saves memory, but on a small model its buckets and flat copies outweigh the saving,
so the direction is read from trials). Its `work` says which value adds work to a step: "adds" (a non-neutral
value never makes a step faster: checkpointing, and offload where a device exists), "same" (no order: only
equal values compare, the micro-batch), or the ZeRO stage's own order (1 <= 2 <= 3 and 0 <= 3 in
communication; 0 not ordered against 1 and 2), or "more" (the tensor- and sequence-parallel sizes: at the same
micro-batch a larger one splits the same work over more ranks and adds collectives to every layer, so it is
never faster). Communication-phase knobs take no part: the rules are about main points.

Two refinements the registry alone does not say. A knob listed under `data:` (the sequence length) changes
what is trained, not how: each value is a workload of its own, with its own best (`workload_key`). And
AutoTP's ranks leave the group ZeRO partitions over (deepspeed/utils/groups.py
_get_sequence_data_parallel_group: the sequence x data group, Ulysses' ranks stay in it): at ZeRO 1-3 a
larger tp shards the layers but divides the states ZeRO partitions by fewer ranks, and keeps what AutoTP
replicates (embeddings, norms) whole, so tp2 z3 can need more than tp1 z3. Its memory order ("less") holds
only where ZeRO partitions nothing: both points at stage 0.
"""

from __future__ import annotations

from collections.abc import Sequence

from tuner.knobs import MAIN, Knob
from tuner.parallel import TP
from tuner.points import Point

LEARNED = next(k for k in MAIN if k.memory == "learned")
LEAVES_ZERO_GROUP = frozenset({TP})  # knobs whose larger value takes ranks out of ZeRO's partition group


def workload_key(point: Point) -> tuple[object, ...]:
    """The knobs that change what is trained (those listed under `data:`: the sequence length): points compare,
    and each has its best, only within one workload."""
    return tuple(getattr(point, k.name) for k in MAIN if k.section == "data")


def _partitions(point: Point) -> bool:
    return getattr(point, LEARNED.name) != LEARNED.neutral


def _counts(k: Knob, on_device: bool) -> bool:
    """Whether the knob's value matters here: device-only knobs do nothing on a CPU-only machine."""
    return on_device or not k.device_only


def same_but_learned(a: Point, b: Point, on_device: bool = True) -> bool:
    """Whether `a` and `b` differ at most in the knob whose memory order is learned (the ZeRO stage)."""
    return all(
        getattr(a, k.name) == getattr(b, k.name)
        for k in MAIN
        if k is not LEARNED and _counts(k, on_device) and k.memory != "none"
    )


def learned_direction(fitted: Sequence[Point], ran_out: Sequence[Point], on_device: bool = True) -> int:
    """+1 when trials show a larger value of the learned knob needs more memory here, -1 less, 0 unknown/mixed.

    Read from a pair of trials that differ only in that knob, one fitted and one ran out of memory.
    """
    name = LEARNED.name
    seen = {
        (1 if getattr(oom, name) > getattr(fit, name) else -1)
        for fit in fitted
        for oom in ran_out
        if getattr(oom, name) != getattr(fit, name) and same_but_learned(fit, oom, on_device)
    }
    return seen.pop() if len(seen) == 1 else 0


def needs_at_least(hungry: Point, than: Point, direction: int, on_device: bool = True) -> bool:
    """True when `hungry` needs at least the memory of `than` on every axis the trials or the registry order."""
    for k in MAIN:
        a, b = getattr(hungry, k.name), getattr(than, k.name)
        if a is None or b is None:  # an optional knob (the sequence length) a point leaves out
            if a != b:
                return False
            continue
        if k.memory == "more" and not a >= b:
            return False
        if k.memory == "less" and not a <= b:
            return False
        if k.name in LEAVES_ZERO_GROUP and a != b and (_partitions(hungry) or _partitions(than)):
            return False  # at ZeRO 1-3 more tp can need more memory: its order holds at stage 0 only
        if k.memory == "same" and _counts(k, on_device) and a != b:
            return False
        if k.memory == "learned" and a != b and (a - b) * direction <= 0:
            return False
    return True


def _stage_no_faster(fast: int, slow: int) -> bool:
    """ZeRO stage 1 <= 2 <= 3 in communication, and 0 <= 3; stage 0 is not ordered against 1 and 2."""
    return fast == slow or (fast == 0 and slow == 3) or (0 < fast < slow)


def at_least_as_fast(fast: Point, slow: Point, offload_is_slower: bool = True) -> bool:
    """`fast` is at least as fast as `slow`: the same on every unordered knob, and `slow` only adds work.

    Device-only knobs (offload) add work only where they move it off a device (`offload_is_slower`): on a
    CPU-only machine the optimizer runs on the CPU either way, and DeepSpeed's CPU Adam can beat torch's.
    """
    if fast == slow:
        return False
    for k in MAIN:
        a, b = getattr(fast, k.name), getattr(slow, k.name)
        if k.work == "zero_stage":
            if not _stage_no_faster(a, b):
                return False
        elif k.work == "adds" and _counts(k, offload_is_slower):
            if a != k.neutral and a != b:
                return False  # `fast` does work `slow` does not (or other work)
        elif k.work == "more":
            if not a <= b:
                return False  # more tensor or sequence parallelism: more communication per step
        elif a != b:
            return False
    return True


def more_parallel_only(fast: Point, slow: Point) -> bool:
    """`slow` is `fast` with more tensor or sequence parallelism and nothing else changed: at the same memory a
    layout with less of it is faster, so `slow` is worth measuring only where `fast` does not fit."""
    if fast == slow:
        return False
    for k in MAIN:
        a, b = getattr(fast, k.name), getattr(slow, k.name)
        if (k.work == "more" and not a <= b) or (k.work != "more" and a != b):
            return False
    return True


def work_key(point: Point) -> tuple[int, ...]:
    """Less work first: the parallel sizes, the work-adding knobs set (those that add on every machine
    first), then the stage."""
    more = sum(int(getattr(point, k.name)) for k in MAIN if k.work == "more")
    everywhere = sum(getattr(point, k.name) != k.neutral for k in MAIN if k.work == "adds" and not k.device_only)
    device = sum(getattr(point, k.name) != k.neutral for k in MAIN if k.work == "adds" and k.device_only)
    stages = [int(getattr(point, k.name)) for k in MAIN if k.work == "zero_stage"]
    return (more, everywhere, device, *stages)
