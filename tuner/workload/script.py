"""The user's own training script as a trial's workload (pure): its argument template and placeholders.

A script runs unchanged under the trial's ranks; what varies per trial reaches it through `workload.args`,
whose `{placeholders}` are filled in for each trial, each as one argument (never through a shell). The
tuner measures the script by wrapping the engine `deepspeed.initialize` returns (tuner.trial.script_meter).
"""

from __future__ import annotations

import string
from collections.abc import Mapping, Sequence
from typing import Any

from tuner.knobs import MAIN, MAIN_NAMES

# Placeholders beside every main knob's name ({micro_batch_size}, {zero_stage}, ...):
TRIAL_PLACEHOLDERS = (
    "ds_config",  # the trial's complete DeepSpeed config, as a JSON file
    "gradient_accumulation_steps",
    "world_size",
    "seed",
    "output_dir",  # a folder of the trial's own, for whatever the script writes
)
PLACEHOLDERS: tuple[str, ...] = (*TRIAL_PLACEHOLDERS, *MAIN_NAMES)


def placeholders_in(arg: str) -> list[str]:
    """The `{name}` fields of one argument (`{{` and `}}` are literal braces)."""
    return [field for _, field, _, _ in string.Formatter().parse(arg) if field is not None]


def args_problem(args: Sequence[str]) -> str | None:
    """Why an argument template cannot be filled in, or None."""
    for arg in args:
        try:
            fields = placeholders_in(arg)
        except ValueError as exc:
            return f"{arg!r}: {exc} (write {{{{ and }}}} for literal braces)"
        for field in fields:
            if field not in PLACEHOLDERS:
                return f"unknown placeholder {{{field}}} in {arg!r}; allowed: " + ", ".join(
                    f"{{{name}}}" for name in PLACEHOLDERS
                )
    return None


def _text(value: Any) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


def fill_args(args: Sequence[str], values: Mapping[str, Any]) -> list[str]:
    """The template with every placeholder filled in; booleans as `true`/`false`."""
    texts = {name: _text(value) for name, value in values.items()}
    return [arg.format_map(texts) for arg in args]


def trial_values(
    point: Mapping[str, Any],
    *,
    ds_config: Any,
    output_dir: Any,
    grad_accum: int,
    world_size: int,
    seed: int,
    sequence_length: int | None = None,
) -> dict[str, Any]:
    """What the placeholders stand for: the point's main knobs, the config file, the batch layout, the seed.

    A knob the point leaves out stands at its neutral value ({tensor_parallel_size} 1, {tiled_mlp} false), and
    {sequence_length} at the space's fixed length when the space does not search it.
    """
    values = {name: value for name, value in point.items() if name in MAIN_NAMES}
    for knob in MAIN:
        if knob.neutral is not None:
            values.setdefault(knob.name, knob.neutral)
    if sequence_length is not None:
        values.setdefault("sequence_length", sequence_length)
    values.update(
        ds_config=ds_config,
        output_dir=output_dir,
        gradient_accumulation_steps=grad_accum,
        world_size=world_size,
        seed=seed,
    )
    return values
