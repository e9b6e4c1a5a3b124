"""Tie a trial's processes to their parent's life, so no rank outlives the tuner that started it.

When Ray stops a Tune trial it kills the trial's actor outright; the torchrun it started would live on
as an orphan, and with it the ranks. On Linux, PR_SET_PDEATHSIG asks the kernel to signal a process
when its parent dies: torchrun gets SIGTERM (it then stops its ranks), and each rank gets SIGKILL if
torchrun itself dies. Used as `python -m tuner.trial.guard PARENT_PID COMMAND...` it sets the signal and
then becomes COMMAND (exec keeps the setting).
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys

_PR_SET_PDEATHSIG = 1


def die_with_parent(sig: int, parent_pid: int | None = None) -> None:
    """Ask the kernel for `sig` when the parent dies; exit at once if it is already gone."""
    if not sys.platform.startswith("linux"):
        return
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0)
    if parent_pid is not None and os.getppid() != parent_pid:
        os._exit(1)  # the parent died before the request was in place


def main(argv: list[str]) -> None:
    """`guard PARENT_PID COMMAND...`: set SIGTERM-on-parent-death, then exec COMMAND."""
    die_with_parent(signal.SIGTERM, int(argv[0]))
    os.execv(argv[1], argv[1:])


if __name__ == "__main__":
    main(sys.argv[1:])
