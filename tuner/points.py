"""Points of the space: one DeepSpeed configuration to measure, and which combinations are valid.

Pure: enumeration needs only the `Space`. A point that cannot be valid is dropped with its reason
before anything launches, so no trial is spent finding out what arithmetic already knows. What a point
holds is read from the knob registry (tuner.knobs): a value for every main knob, and the communication
knobs a second-phase trial sets.
"""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from tuner.knobs import BY_NAME, COMM_NAMES, KNOBS, MAIN, MAIN_NAMES
from tuner.knobs import invalid_reason as knob_problem
from tuner.parallel import Context, data_parallel, sizes

if TYPE_CHECKING:
    from tuner.space import Space

COMM_PREFIX = "comm_"  # communication knobs are stored as Optuna params `comm_<knob>`
_ORDER = {k.name: i for i, k in enumerate(KNOBS)}


class Point:
    """The tuned knobs of one trial; the global batch is fixed by the space, not by the point.

    `Point(4, 3, "cpu")` sets the main knobs in the registry's order, `Point(micro_batch_size=4, ...)` by
    name; main knobs left out take their neutral value, and `comm` holds the communication knobs set.
    Knob values read as attributes (`point.zero_stage`). Immutable and hashable.
    """

    __slots__ = ("_values",)
    _values: tuple[tuple[str, Any], ...]

    def __init__(self, *args: Any, comm: Iterable[tuple[str, Any]] = (), **values: Any) -> None:
        if len(args) > len(MAIN_NAMES):
            raise TypeError(f"at most {len(MAIN_NAMES)} positional knobs, got {len(args)}")
        given = dict(zip(MAIN_NAMES, args, strict=False))
        for name, value in (*values.items(), *comm):
            if name not in BY_NAME:
                raise TypeError(f"{name!r} is not a knob")
            if name in given:
                raise TypeError(f"knob {name!r} given twice")
            given[name] = value
        for k in MAIN:
            if k.optional and given.get(k.name, k.neutral) == k.neutral:
                given.pop(k.name, None)  # a knob the space does not vary: the point leaves it out
            elif k.name not in given:
                if k.neutral is None:
                    raise TypeError(f"missing knob {k.name!r}")
                given[k.name] = k.neutral
        object.__setattr__(self, "_values", tuple(sorted(given.items(), key=lambda kv: _ORDER[kv[0]])))

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_") or name not in BY_NAME:
            raise AttributeError(name)
        return dict(object.__getattribute__(self, "_values")).get(name, BY_NAME[name].neutral)

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("Point is immutable")

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild, (self._values,))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Point) and self._values == other._values

    def __hash__(self) -> int:
        return hash(self._values)

    def __lt__(self, other: Point) -> bool:
        return self._key() < other._key()

    def _key(self) -> tuple[Any, ...]:
        return tuple((name, str(value)) if isinstance(value, str) else (name, value) for name, value in self._values)

    def __repr__(self) -> str:
        return "Point(" + ", ".join(f"{name}={value!r}" for name, value in self._values) + ")"

    def items(self) -> Iterator[tuple[str, Any]]:
        """Every knob the point sets, in the registry's order."""
        return iter(self._values)

    def values(self) -> dict[str, Any]:
        """The knob values by name: every main knob, and the communication knobs set."""
        return dict(self._values)

    @property
    def comm(self) -> tuple[tuple[str, Any], ...]:
        """The communication knobs this point sets (a second-phase trial); () is DeepSpeed's defaults."""
        return tuple((name, value) for name, value in self._values if name in COMM_NAMES)

    def main(self) -> Point:
        """This point without its communication knobs: the main point it varies."""
        return Point(**{name: value for name, value in self._values if name in MAIN_NAMES})

    def with_knob(self, name: str, value: Any) -> Point:
        """This point with knob `name` set to `value`."""
        values = self.values()
        values[name] = value
        return Point(**values)

    def params(self) -> dict[str, Any]:
        """The point as Optuna params (and YAML-style keys); communication knobs as `comm_<knob>`."""
        return {(COMM_PREFIX + name if name in COMM_NAMES else name): value for name, value in self._values}

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> Point:
        """Rebuild a point from a trial's params; knobs a trial did not suggest take their neutral values."""
        values = {key: value for key, value in params.items() if key in MAIN_NAMES}
        comm = [(key.removeprefix(COMM_PREFIX), value) for key, value in params.items() if key.startswith(COMM_PREFIX)]
        return cls(**values, comm=comm)

    def label(self) -> str:
        """A short human name: `mb4 z3 opt=cpu param=cpu ckpt`."""
        return " ".join(text for name, value in self._values if (text := BY_NAME[name].label(value)))


def _rebuild(values: tuple[tuple[str, Any], ...]) -> Point:
    return Point(**dict(values))


def grad_accum(global_batch: int, micro_batch: int, data_parallel: int) -> int | None:
    """Gradient-accumulation steps that keep the global batch fixed over the data-parallel ranks, or None."""
    per_step = micro_batch * data_parallel
    return global_batch // per_step if global_batch % per_step == 0 else None


def point_accum(point: Point, global_batch: int, ranks: int) -> int | None:
    """The point's accumulation: the global batch over its micro-batch and data-parallel ranks."""
    return grad_accum(global_batch, point.micro_batch_size, data_parallel(point.values(), ranks))


def invalid_reason(point: Point, global_batch: int, ctx: Context) -> str | None:
    """Why `point` can never run, in words, or None when it is valid: the batch arithmetic first (once the
    parallel sizes leave whole data-parallel ranks), then each knob's own rules."""
    values = point.values()
    tp, sp = sizes(values)
    if ctx.ranks % (tp * sp) == 0 and point_accum(point, global_batch, ctx.ranks) is None:
        dp = data_parallel(values, ctx.ranks)
        ranks = f"{dp} data-parallel ranks" if dp != ctx.ranks else f"{ctx.ranks} ranks"
        return f"micro_batch_size {point.micro_batch_size} x {ranks} does not divide global_batch_size {global_batch}"
    return knob_problem(values, ctx)


@dataclass(frozen=True)
class Enumeration:
    """The valid points in a stable order, and the dropped ones with their reasons."""

    valid: tuple[Point, ...]
    dropped: tuple[tuple[Point, str], ...]

    def dropped_summary(self) -> list[tuple[str, int]]:
        """Each reason with how many points it dropped, most frequent first."""
        return Counter(reason for _, reason in self.dropped).most_common()


def enumerate_points(space: Space) -> Enumeration:
    """Every combination of the space's main-knob lists, split into valid and dropped."""
    valid: list[Point] = []
    dropped: list[tuple[Point, str]] = []
    lists = [space.knob_values(name) for name in MAIN_NAMES]
    ctx = space.context()
    for combo in itertools.product(*lists):
        point = Point(*combo)
        global_batch = space.global_batch_of(point.values())
        reason = (
            invalid_reason(point, global_batch, ctx)
            if global_batch
            else f"training.keep_fixed tokens leaves no whole sample at sequence_length {point.sequence_length}"
        )
        if reason is None:
            valid.append(point)
        else:
            dropped.append((point, reason))
    return Enumeration(tuple(valid), tuple(dropped))
