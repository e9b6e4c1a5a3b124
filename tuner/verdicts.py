"""What `tuner search` learns with torch, transformers and DeepSpeed, kept between runs of the same space.

Checking model.config (a model built on the meta device), DeepSpeed's parser on the base config, and the
architecture's shape for the memory model import torch, transformers and DeepSpeed: 5-7 CPU-seconds of a
search's start on 2 cores, before its first trial. Each answer is a function of its inputs and of the
libraries' and this tool's code, so a run that repeats them (the same space, unchanged installation) reads
them back instead. The key covers the inputs, the installed versions of every library involved, and a
digest of this package's sources: an upgrade, a changed model or a changed tool recomputes. Only passes and
shapes are kept; a space that fails is checked again (and fails the same way, with its message).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from functools import lru_cache
from pathlib import Path
from typing import Any

from tuner.estimate import Adapters, ModelShape
from tuner.trial.extensions import cache_root, installed_version

LIBRARIES = ("torch", "transformers", "deepspeed", "pydantic", "peft")
OFF = "TUNER_VERDICT_CACHE"  # 0: always recompute


@lru_cache(maxsize=1)
def _installation() -> str:
    """The libraries' versions and a digest of this package's own sources (a changed check recomputes)."""
    digest = hashlib.sha256()
    package = Path(__file__).resolve().parent
    for source in sorted(package.rglob("*.py")):
        digest.update(source.relative_to(package).as_posix().encode() + b"\0" + source.read_bytes())
    versions = {name: installed_version(name) for name in LIBRARIES}
    return json.dumps({"versions": versions, "tuner": digest.hexdigest()}, sort_keys=True)


def key(kind: str, inputs: Any) -> str:
    """A file name for `kind` of answer over `inputs` (JSON-able) on this installation."""
    text = json.dumps({"kind": kind, "inputs": inputs, "installation": _installation()}, sort_keys=True, default=str)
    return f"{kind}-{hashlib.sha256(text.encode()).hexdigest()[:32]}.json"


def folder() -> Path:
    """Beside the tool's compiled ops."""
    return cache_root() / "verdicts"


def enabled() -> bool:
    return os.environ.get(OFF, "1") != "0"


def read(name: str) -> dict[str, Any] | None:
    """The answer kept under `name`, or None (none kept, unreadable, or the cache turned off)."""
    if not enabled():
        return None
    try:
        found = json.loads((folder() / name).read_text())
    except (OSError, ValueError):
        return None
    return found if isinstance(found, dict) else None


def write(name: str, answer: dict[str, Any]) -> None:
    """Keep `answer`; a cache that cannot be written only costs the next run its seconds."""
    if not enabled():
        return
    target = folder() / name
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_suffix(f".{os.getpid()}.tmp")
        partial.write_text(json.dumps(answer))
        partial.replace(target)  # whole or absent: concurrent searches never read half a file
    except OSError:
        pass


def shape_answer(shape: ModelShape) -> dict[str, Any]:
    return {"shape": dataclasses.asdict(shape)}


def shape_of(answer: dict[str, Any] | None) -> ModelShape | None:
    """The ModelShape kept in `answer`; None where it is missing or from an older layout."""
    if answer is None or not isinstance(answer.get("shape"), dict):
        return None
    fields = dict(answer["shape"])
    try:
        if fields.get("adapters") is not None:
            adapters = dict(fields["adapters"])
            for name in ("inputs", "target_modules"):
                adapters[name] = tuple(adapters.get(name, ()))
            fields["adapters"] = Adapters(**adapters)
        return ModelShape(**fields)
    except TypeError:
        return None
