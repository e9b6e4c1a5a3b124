"""`tuner plan --device/--ranks` (pure): the plan on hardware the team does not own, before renting it.

The space's hardware section is replaced for the plan only, so everything downstream is recomputed as a
search there would see it: the memory budget per device, host memory per node, the ranks (tensor and
sequence parallel sizes must divide them, the data-parallel ranks and the accumulation follow), the nodes.

Memory per device is what the driver reports as the card's total (nvidia-smi's memory.total, MiB), the
figure `tuner search` itself judges against on that card, beside the size the vendor sells it as: an H100
"80GB" reports 81,559 MiB (79.6 GiB). Figures as nvidia-smi prints them on each card (H100 80GB HBM3
81559MiB, H200 143771MiB, A100-SXM4-40GB 40960MiB, A100-SXM4-80GB 81920MiB, L40S 46068MiB, L4 23034MiB);
vendor sizes from NVIDIA's data sheets. Host memory per node is that of NVIDIA's reference 8-GPU system
where there is one (DGX A100 640GB: 2 TB, DGX H100 and DGX H200: 2 TB, their data sheets; DGX A100 320GB:
1 TB); L40S and L4 servers vary, so their host memory is not assumed. Peak dense TFLOP/s come from the GPU
table MFU uses (tuner.flops.PEAK_TFLOPS, NVIDIA's data sheets).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from tuner.errors import SpaceError
from tuner.flops import peak_tflops
from tuner.sections import HardwareSection
from tuner.space import Space

NODE_DEVICES = 8  # devices per node assumed when ranks are overridden: an HGX/DGX node


@dataclass(frozen=True)
class Device:
    """A GPU as the plan assumes it: the name torch reports (for the peak table) and its memory."""

    name: str  # the --device name
    product: str  # as torch.cuda.get_device_name reports it
    sold_gb: int  # the size the vendor states
    memory_mib: int  # nvidia-smi's memory.total: what the card offers
    host_gb: float | None  # host memory per node of NVIDIA's reference system, in GB of 2**30 bytes
    per_node: int = NODE_DEVICES

    @property
    def memory_gb(self) -> float:
        """The card's memory in GB of 2**30 bytes, as the plan's budget counts it."""
        return self.memory_mib / 1024

    def peak(self, precision: str) -> float | None:
        return peak_tflops(self.product, precision)


DEVICES: dict[str, Device] = {
    d.name: d
    for d in (
        Device("a100-40gb", "NVIDIA A100-SXM4-40GB", 40, 40960, 1024.0),
        Device("a100-80gb", "NVIDIA A100-SXM4-80GB", 80, 81920, 2048.0),
        Device("h100-80gb", "NVIDIA H100 80GB HBM3", 80, 81559, 2048.0),
        Device("h200", "NVIDIA H200", 141, 143771, 2048.0),
        Device("l40s", "NVIDIA L40S", 48, 46068, None),
        Device("l4", "NVIDIA L4", 24, 23034, None),
    )
}


def device_named(name: str) -> Device:
    """The table's device, or a SpaceError naming the allowed ones."""
    found = DEVICES.get(name.lower())
    if found is None:
        raise SpaceError("--device", f"unknown device {name!r}; allowed: {', '.join(DEVICES)}")
    return found


def parse_ranks(text: str) -> int:
    """--ranks as a positive int (parsed here so a bad value is one line, as every bad input)."""
    try:
        ranks = int(text)
    except ValueError:
        ranks = 0
    if ranks < 1:
        raise SpaceError("--ranks", f"must be a positive whole number of ranks per trial, not {text!r}")
    return ranks


@dataclass(frozen=True)
class Hardware:
    """The hardware a plan assumed: the space to plan (its hardware replaced where asked) and in words."""

    space: Space
    device: Device | None  # None: the space's own device
    overridden: bool
    assumption: str | None = None  # how the ranks were placed on nodes, where the plan chose it

    @property
    def device_gb(self) -> float | None:
        """The budget per device the device sets; None: the space's (or this node's GPU) decides."""
        return self.device.memory_gb if self.device else None

    def describe(self, accelerator: str) -> str:
        """The plan's hardware line: what it assumed and where that came from."""
        h = self.space.hardware
        where = "what-if (--device/--ranks)" if self.overridden else "from the space"
        if self.device:
            memory = (
                f"{self.device.name} ({self.device.sold_gb} GB as sold, {self.device.memory_gb:.1f} GB of 2^30 "
                f"bytes as nvidia-smi reports it)"
            )
            peak = self.device.peak(self.space.training.precision)
            memory += f", {peak:g} TFLOP/s dense {self.space.training.precision} peak" if peak else ""
        elif h.device_memory_gb is not None:
            memory = f"{accelerator} devices of {h.device_memory_gb:g} GB"
        else:
            memory = f"{accelerator} devices"
        if h.host_memory_gb:
            host = f"host memory {h.host_memory_gb:g} GB per node"
        elif self.device:
            host = f"host memory per node not known for {self.device.name} servers: offload not judged against it"
        else:
            host = "host memory not judged (hardware.host_memory_gb not set)"
        nodes = f"{h.gpus_per_trial} rank(s) on {h.nodes_per_trial} node(s) of {h.ranks_per_node}"
        extra = f" ({self.assumption})" if self.assumption else ""
        return f"hardware {where}: {memory}; {nodes}{extra}; {host}"

    def as_dict(self, accelerator: str) -> dict[str, object]:
        """The same for --json."""
        h = self.space.hardware
        return {
            "overridden": self.overridden,
            "device": self.device.name if self.device else None,
            "accelerator": accelerator,
            "device_memory_gb": self.device_gb if self.device else h.device_memory_gb,
            "host_memory_gb": h.host_memory_gb,
            "peak_tflops": h.peak_tflops,
            "ranks": h.gpus_per_trial,
            "nodes": h.nodes_per_trial,
            "ranks_per_node": h.ranks_per_node,
            "assumption": self.assumption,
        }


def place(ranks: int, per_node: int) -> int:
    """Nodes for `ranks` at most `per_node` on each, the same number on every node; a SpaceError otherwise."""
    nodes = math.ceil(ranks / per_node)
    if ranks % nodes:
        raise SpaceError(
            "--ranks",
            f"{ranks} ranks do not split evenly over {nodes} nodes of at most {per_node} devices: give a multiple "
            f"of {nodes} (e.g. {nodes * per_node}) or at most {per_node}",
        )
    return nodes


def what_if(space: Space, accelerator: str | None, device: str | None, ranks: str | None) -> Hardware:
    """The space with its hardware replaced by --device and --ranks (as given on the command line), or as is.

    A device sets the budget per device to the card's memory, the host memory per node to its reference
    system's (none where there is none), the peak to the table's, and the accelerator to cuda. Ranks beyond
    one node are placed on nodes of `NODE_DEVICES` (or the space's own ranks per node, where the space spans
    several), the same number on each.
    """
    if device is None and ranks is None:
        return Hardware(space, None, False)
    found = device_named(device) if device is not None else None
    if found is not None and accelerator == "cpu":
        raise SpaceError("--accelerator", f"--device {found.name} is a GPU: leave --accelerator out or give cuda")
    hardware = space.hardware
    count = parse_ranks(ranks) if ranks is not None else hardware.gpus_per_trial
    per_node = found.per_node if found else hardware.ranks_per_node if hardware.nodes_per_trial > 1 else NODE_DEVICES
    nodes = place(count, per_node)
    updates: dict[str, object] = {"gpus_per_trial": count, "nodes_per_trial": nodes}
    if found is not None:
        updates.update(
            accelerator="cuda", device_memory_gb=found.memory_gb, host_memory_gb=found.host_gb,
            peak_tflops=found.peak(space.training.precision),
        )  # fmt: skip
    assumption = f"assumed: nodes of {per_node} devices, the ranks split evenly" if nodes > 1 else None
    replaced = HardwareSection.model_validate({**hardware.model_dump(), **updates})
    return Hardware(space.model_copy(update={"hardware": replaced}), found, True, assumption)
