"""`tuner check`, the pure part: a committed config's provenance -> the one trial to run again, and the verdict.

The gate compares a fresh measurement of the exported configuration with the figures its trial recorded, so
the trial must be rebuilt exactly as the search ran it: the resolved space the study kept (the provenance
carries it), the point, and the committed config at the ranks it was measured on. Nothing here does I/O;
tuner.check_run reads the files, runs the trial and records it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from tuner.errors import SpaceError

if TYPE_CHECKING:
    from tuner.space import Space
    from tuner.trial.spec import TrialSpec

THROUGHPUTS = ("tokens_per_s", "samples_per_s")  # the first one both sides have is compared
MEMORY = "peak_mem_gb"
VERSIONED = ("torch", "deepspeed", "transformers", "device")  # what a regression is usually traced to
DEFAULT_MAX_SLOWDOWN = 0.05
DEFAULT_MAX_MEMORY_GROWTH = 0.05


def check_limit(value: float, flag: str) -> float:
    """A tolerance as a fraction (0.05 is 5%): at least 0; a slowdown of 1 (100%) or more would pass anything."""
    if not value >= 0 or (flag == "--max-slowdown" and value >= 1):
        allowed = "a fraction from 0 to below 1" if flag == "--max-slowdown" else "a fraction of at least 0"
        raise SpaceError(flag, f"{allowed} (0.05 is 5%), got {value:g}")
    return value


def change(recorded: float, measured: float) -> float | None:
    """The relative change from `recorded` to `measured` (+0.1 is 10% more); None when nothing was recorded."""
    return (measured - recorded) / recorded if recorded > 0 else None


@dataclass(frozen=True)
class Delta:
    """One figure, recorded vs measured, and whether it moved past its limit the wrong way."""

    name: str
    recorded: float
    measured: float | None
    limit: float  # the allowed change, signed in the bad direction (-0.05: at most 5% slower)

    @property
    def change(self) -> float | None:
        return None if self.measured is None else change(self.recorded, self.measured)

    @property
    def over(self) -> bool:
        c = self.change
        return c is not None and (c < self.limit if self.limit < 0 else c > self.limit)

    def reason(self) -> str:
        """`tokens_per_s fell 52.0% (recorded 2,000, measured 960; --max-slowdown 5%)`."""
        c = self.change or 0.0
        moved = f"fell {-c:.1%}" if c < 0 else f"rose {c:.1%}"
        flag = "--max-slowdown" if self.limit < 0 else "--max-memory-growth"
        return (
            f"{self.name} {moved} (recorded {self.recorded:,.4g}, measured {self.measured or 0:,.4g}; "
            f"{flag} {abs(self.limit):.0%})"
        )

    def to_json(self) -> dict[str, Any]:
        return {"recorded": self.recorded, "measured": self.measured, "change": self.change, "limit": self.limit}


@dataclass(frozen=True)
class Verdict:
    """The gate's answer: the figures compared and why it failed (nothing: it passed)."""

    deltas: tuple[Delta, ...]
    reasons: tuple[str, ...]
    failure: tuple[str, str] | None = None  # the run's failure category and reason

    @property
    def ok(self) -> bool:
        return not self.reasons

    @property
    def exit_code(self) -> int:
        return 0 if self.ok else 1


def compared_throughput(recorded: Mapping[str, Any]) -> str:
    """The throughput figure the gate compares: tokens/s where the trial recorded it, else samples/s."""
    name = next((n for n in THROUGHPUTS if isinstance(recorded.get(n), (int, float))), None)
    if name is None:
        raise SpaceError("--provenance", f"its figures record no {' or '.join(THROUGHPUTS)} to compare with")
    if not isinstance(recorded.get(MEMORY), (int, float)):
        raise SpaceError("--provenance", f"its figures record no {MEMORY} to compare with")
    return name


def judge(
    recorded: Mapping[str, Any],
    measured: Mapping[str, float] | None,
    failure: tuple[str, str] | None = None,
    max_slowdown: float = DEFAULT_MAX_SLOWDOWN,
    max_memory_growth: float = DEFAULT_MAX_MEMORY_GROWTH,
) -> Verdict:
    """Compare the check's figures (`measured`, None when the run failed) with the recorded ones."""
    throughput = compared_throughput(recorded)
    got = measured or {}
    deltas = (
        Delta(throughput, float(recorded[throughput]), got.get(throughput), -max_slowdown),
        Delta(MEMORY, float(recorded[MEMORY]), got.get(MEMORY), max_memory_growth),
    )
    if failure is not None:
        return Verdict(deltas, (f"the run failed: {failure[0]}: {failure[1]}",), failure)
    reasons = [d.reason() for d in deltas if d.over]
    reasons += [f"the run measured no {d.name}" for d in deltas if d.measured is None]
    return Verdict(deltas, tuple(reasons))


@dataclass(frozen=True)
class VersionChange:
    name: str
    recorded: str | None
    now: str | None

    def describe(self) -> str:
        return f"{self.name} {self.recorded or 'not recorded'} -> {self.now or 'unknown'}"


def version_changes(recorded: Mapping[str, Any], now: Mapping[str, Any]) -> list[VersionChange]:
    """The versions (and device) that differ between the recording and the check, in VERSIONED order; one the
    check could not tell is no change."""
    out = []
    for name in VERSIONED:
        was, is_ = recorded.get(name), now.get(name)
        if was != is_ and is_ is not None:
            out.append(VersionChange(name, None if was is None else str(was), None if is_ is None else str(is_)))
    return out


@dataclass(frozen=True)
class Recorded:
    """What the provenance says about the exported trial: where it is stored, what it measured, on what."""

    study: str
    storage: str | None
    trial: int
    point: dict[str, Any]
    figures: dict[str, Any]
    versions: dict[str, Any]
    fmt: str
    world_size: int
    measured_ranks: int
    space: dict[str, Any] | None  # the resolved space the study kept; None in an older provenance
    space_file: str | None
    script_sha256: str | None = None  # a script study: the hash of the script file its trials ran
    accelerator: str | None = None  # cuda or cpu: what the trials ran on


def _need(data: Mapping[str, Any], key: str, kind: type | tuple[type, ...]) -> Any:
    value = data.get(key)
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is int):
        raise SpaceError("--provenance", f"the key {key!r} is missing or not valid: is this a tuner export's file?")
    return value


def _mapping(data: Mapping[str, Any], key: str) -> dict[str, Any]:
    value = data.get(key)
    return dict(value) if isinstance(value, dict) else {}


def read_provenance(data: Any) -> Recorded:
    """The provenance's fields the check needs, each checked: a file that lacks one is bad input."""
    if not isinstance(data, dict):
        raise SpaceError("--provenance", "must hold a JSON object (the .provenance.json tuner export writes)")
    figures = _need(data, "figures", dict)
    compared_throughput(figures)
    space = data.get("space")
    measured_with = _mapping(data, "measured_with")
    ranks, measured_on = data.get("measured_ranks") or measured_with.get("ranks"), measured_with.get("accelerator")
    if not isinstance(ranks, int) or ranks < 1:
        raise SpaceError("--provenance", "the key 'measured_ranks' is missing: is this a tuner export's file?")
    return Recorded(
        study=_need(data, "study", str),
        storage=data.get("storage") if isinstance(data.get("storage"), str) else None,
        trial=_need(data, "trial", int),
        point=_need(data, "point", dict),
        figures=figures,
        versions=_mapping(data, "versions"),
        fmt=str(data.get("format") or "deepspeed"),
        world_size=int(data.get("world_size") or ranks),
        measured_ranks=ranks,
        space=space if isinstance(space, dict) else None,
        space_file=data.get("space_file") if isinstance(data.get("space_file"), str) else None,
        script_sha256=_mapping(data, "script").get("sha256"),
        accelerator=measured_on if measured_on in ("cuda", "cpu") else None,
    )


def recorded_cpus(figures: Mapping[str, Any], ranks_per_node: int) -> int | None:
    """The CPUs a node's ranks get in the check: the threads per rank the trial measured with, times its ranks
    (a tiny model on CPU ran 11x faster with 1 thread than with 2 on a busy machine); None when not recorded."""
    threads = figures.get("threads_per_rank")
    return int(threads) * ranks_per_node if isinstance(threads, (int, float)) and threads >= 1 else None


BATCH_KEYS = ("train_micro_batch_size_per_gpu", "gradient_accumulation_steps")


def same_batch(config: Mapping[str, Any], measured: Mapping[str, Any]) -> None:
    """The committed config must train the batch layout the recorded figures are of, or they compare nothing."""
    for key in BATCH_KEYS:
        if config.get(key) != measured.get(key):
            raise SpaceError(
                key,
                f"the committed config has {config.get(key)!r}, the measured trial {measured.get(key)!r}: the "
                "recorded figures are of another configuration; export it again (tuner export) or search it",
            )


def rebuild(
    recorded: Recorded, space: Space, config: dict[str, Any], accelerator: str, device_memory_gb: float | None
) -> tuple[TrialSpec, list[str]]:
    """The spec of the check's one trial: the recorded point of `space` training the committed `config` brought
    back to the ranks it was measured on, for this machine's `accelerator`; and notes for the user.

    An `hf` export leaves the batch keys to Trainer ("auto"), so its trial trains the config the search built
    for the point, as the recorded trial did.
    """
    from tuner.dsconfig import build_ds_config, retarget
    from tuner.handoff import for_world_size
    from tuner.points import Point
    from tuner.trial.spec import TrialSpec

    notes = []
    try:
        point = Point.from_params(recorded.point)
    except Exception as exc:  # a point the knobs of this tuner no longer read
        raise SpaceError("--provenance", f"its point {recorded.point} cannot be rebuilt: {exc}") from None
    ranks = space.hardware.gpus_per_trial
    if ranks != recorded.measured_ranks:
        raise SpaceError(
            "--provenance",
            f"measured on {recorded.measured_ranks} rank(s), its space says {ranks}: not the same search",
        )
    global_batch = space.global_batch_of(point.values()) or space.training.global_batch_size
    if recorded.fmt == "hf":
        run = build_ds_config(
            space.base_config_dict, point, global_batch=global_batch, ranks=ranks,
            precision=space.training.precision, accelerator="cuda" if accelerator == "cuda" else "cpu",
        )  # fmt: skip
        notes.append("an hf export leaves the batch to Trainer: the check trains the config the search measured")
    else:
        run = for_world_size(config, ranks, recorded.world_size)[0] if recorded.world_size != ranks else config
        if recorded.world_size != ranks:
            notes.append(f"written for {recorded.world_size} rank(s): checked on the {ranks} it was measured on")
    run, changed = retarget(run, accelerator, space.base_config_dict)
    if changed:
        notes.append(f"run on {accelerator}: " + "; ".join(changed))
    try:
        spec = TrialSpec.build(space, point, run)
    except AssertionError:
        raise SpaceError("--provenance", f"its point {point.label()} is not valid in its own space") from None
    same_batch(run, {BATCH_KEYS[0]: spec.micro_batch_size, BATCH_KEYS[1]: spec.grad_accum})
    if device_memory_gb is not None:
        spec = spec.replace(device_memory_gb=device_memory_gb)
    return spec, notes
