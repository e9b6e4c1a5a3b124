"""What the GPUs of this node offer, asked without creating a CUDA context in the search's own process.

`torch.cuda.get_device_properties` would initialise CUDA in `tuner search` itself, which then holds memory
on a GPU for the whole search, outside every trial's accounting; nvidia-smi answers from the driver.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tuner.space import Space

GPU_DEVICE_FILES = ("nvidiactl", "nvidia0", "dxg", "kfd")  # NVIDIA's driver, WSL's GPU, ROCm's


def detect_accelerator(space: Space) -> str:
    """`cuda` when asked for or when a GPU is visible, else `cpu` (ranks are CPU processes over gloo).

    Without a GPU driver's device file CUDA cannot be available: asking torch would import it (seconds).
    """
    if space.hardware.accelerator != "auto":
        return space.hardware.accelerator
    if not any(Path("/dev", name).exists() for name in GPU_DEVICE_FILES):
        return "cpu"
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def visible_gpu_memory_gb() -> float | None:
    """The smallest GPU's memory on this node in GB of 2**30 bytes, or None without nvidia-smi or a GPU."""
    tool = shutil.which("nvidia-smi")
    if tool is None:
        return None
    try:
        done = subprocess.run(
            [tool, "--query-gpu=memory.total", "--format=csv,noheader,nounits"],
            capture_output=True, text=True, timeout=30, check=True,
        )  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return None
    mib = [float(word) for word in done.stdout.split() if word.replace(".", "", 1).isdigit()]
    return min(mib) / 1024 if mib else None


def device_budget_gb(budget_gb: float | None, card_gb: float | None) -> tuple[float | None, str | None]:
    """The memory per device points are judged against, and a warning when the space asks for more than the card.

    A budget above the card cannot be enforced (the allocator's cap is a fraction of the card), so the card
    counts; no budget means the card's size.
    """
    if budget_gb is None:
        return card_gb, None
    if card_gb is not None and budget_gb > card_gb:
        return card_gb, (
            f"hardware.device_memory_gb={budget_gb:g} is more than this node's GPU has ({card_gb:.2f} GB of 2^30 "
            "bytes, as nvidia-smi counts MiB); points are judged against the card"
        )
    return budget_gb, None
