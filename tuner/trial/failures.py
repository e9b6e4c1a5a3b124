"""Failure categories: why a trial produced no figures, as data the store can keep and group by."""

from __future__ import annotations

import signal
from enum import StrEnum


class Failure(StrEnum):
    """Why a trial produced no figures. A StrEnum: stored and compared as its plain string value."""

    OOM = "oom"  # out of memory on the device (or over hardware.device_memory_gb)
    TIMEOUT = "timeout"  # past trial.timeout_s; every rank killed
    CRASH = "crash"  # a rank raised or died
    INVALID_CONFIG = "invalid_config"  # DeepSpeed refused the configuration, or has no kernel for it here
    LAUNCH_ERROR = "launch_error"  # the ranks could not be started
    TUNER_ERROR = "tuner_error"  # the tuner could not read the trial's result
    DUPLICATE = "duplicate"  # TPE proposed a point already failed or running: not run again
    INTERRUPTED = "interrupted"  # the search stopped (Ctrl-C, a killed search) before the trial ended


OOM, TIMEOUT, CRASH = Failure.OOM, Failure.TIMEOUT, Failure.CRASH
INVALID_CONFIG, LAUNCH_ERROR, TUNER_ERROR = Failure.INVALID_CONFIG, Failure.LAUNCH_ERROR, Failure.TUNER_ERROR
CATEGORIES = tuple(Failure)

_OOM_MARKERS = ("out of memory", "cannot allocate memory", "std::bad_alloc", "defaultcpuallocator: can't allocate")


def one_line(exc: BaseException, limit: int = 300) -> str:
    """`Type: message` on one line, cut to `limit` characters, for tables and the store."""
    text = f"{type(exc).__name__}: {exc}".replace("\n", " ").strip()
    return text if len(text) <= limit else text[: limit - 3] + "..."


def is_oom(text: str) -> bool:
    """Whether an error message reads as an out-of-memory error (CUDA, the CPU allocator, the C++ runtime)."""
    lowered = text.lower()
    return any(marker in lowered for marker in _OOM_MARKERS)


def classify_exception(exc: BaseException, phase: str) -> str:
    """The category of an exception raised inside a rank during `phase`."""
    if isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError" or is_oom(str(exc)):
        return OOM
    if phase == "initialize" and isinstance(exc, (AssertionError, ValueError, TypeError, NotImplementedError)):
        return INVALID_CONFIG
    if type(exc).__name__ == "ValidationError":  # DeepSpeed's pydantic config models
        return INVALID_CONFIG
    return CRASH


def describe_exit(returncode: int) -> str:
    """A process exit status in words: `exit code 1` or `killed by SIGKILL`."""
    if returncode < 0:
        try:
            return f"killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    return f"exit code {returncode}"
