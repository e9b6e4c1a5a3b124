"""Cost per token and time to train: what a measured throughput means in money and in days (pure).

The price is the user's (hardware.price_per_device_hour, and price_per_node_hour per node a trial spans):
rented devices cost the same per hour whatever they do, so a trial's cost per token is its hourly price over
the tokens it trains in an hour. Within one study the price and the device count are fixed, so cost is
proportional to 1/throughput (to step time at a fixed batch): as an objective it ranks points exactly as
tokens/s does, and the guided sampler's throughput rules and early stopping on step time carry over unchanged.
Across studies (other GPU types, other node counts) it is what `tuner results --compare` lines up.

A script workload whose samples have no stated length measures samples/s only: its trials get
usd_per_million_samples and no usd_per_million_tokens.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from tuner.errors import SpaceError

TOKENS_COST = "usd_per_million_tokens"
SAMPLES_COST = "usd_per_million_samples"
HOURLY = "usd_per_hour"  # what the trial's devices and nodes cost an hour
SECONDS_PER_DAY = 86_400.0
ASSUMPTION = (
    "linear scaling from the measured ranks: each device keeps the measured per-device tokens/s; the "
    "communication that grows with more data-parallel ranks is not measured"
)


def hourly_price(per_device: float | None, per_node: float | None, devices: int, nodes: int) -> float | None:
    """USD an hour for `devices` devices on `nodes` nodes, or None when no price is given."""
    if per_device is None and per_node is None:
        return None
    return (per_device or 0.0) * devices + (per_node or 0.0) * nodes


def usd_per_million(rate_per_s: float, usd_per_hour: float) -> float:
    """USD per million tokens (or samples) at `rate_per_s` of them while paying `usd_per_hour`."""
    return usd_per_hour / (rate_per_s * 3600.0) * 1e6


def cost_figures(figures: dict[str, float], usd_per_hour: float | None) -> dict[str, float]:
    """The cost figures of a trial's measured `figures` (none without a price, or for a zero rate)."""
    if usd_per_hour is None:
        return {}
    out = {HOURLY: usd_per_hour}
    for rate, name in (("tokens_per_s", TOKENS_COST), ("samples_per_s", SAMPLES_COST)):
        value = figures.get(rate)
        if value is not None and value > 0:
            out[name] = usd_per_million(value, usd_per_hour)
    return out


def priced(attrs: dict[str, Any]) -> str:
    """`, $0.42 per million tokens` for a priced trial's attributes, else nothing (for prose)."""
    value = attrs.get(TOKENS_COST)
    return f", ${value:,.4g} per million tokens" if isinstance(value, (int, float)) else ""


@dataclass(frozen=True)
class TimeToTrain:
    """Days (and USD, when priced) to train `tokens` tokens on `ranks` devices, scaled from a measured trial."""

    tokens: float
    ranks: int
    measured_ranks: int
    tokens_per_s_per_device: float  # as measured: the trial's tokens/s over its ranks
    tokens_per_s: float  # assumed at `ranks`
    days: float
    usd: float | None
    assumption: str = ASSUMPTION

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def line(self) -> str:
        """`2e+12 tokens on 1024 ranks: 3.1 days at ...`, for the CLI."""
        cost = f", about ${self.usd:,.0f}" if self.usd is not None else ""
        return (
            f"time to train {self.tokens:.3g} tokens on {self.ranks} rank(s): {self.days:,.2f} days{cost} at "
            f"{self.tokens_per_s_per_device:,.4g} tokens/s per device x {self.ranks} = {self.tokens_per_s:,.4g} "
            f"tokens/s (measured on {self.measured_ranks} rank(s); assumes {self.assumption})"
        )


def time_to_train(
    tokens: float, tokens_per_s: float, measured_ranks: int, ranks: int, usd_per_million_tokens: float | None = None
) -> TimeToTrain:
    """The days to train `tokens` at the measured per-device throughput times `ranks` (linear scaling).

    The cost keeps the measured cost per token: the price per device (and per node, at the same ranks per
    node) grows with the ranks exactly as the assumed throughput does.
    """
    assert tokens > 0 and tokens_per_s > 0 and measured_ranks > 0 and ranks > 0, "positive quantities"
    per_device = tokens_per_s / measured_ranks
    total = per_device * ranks
    usd = tokens / 1e6 * usd_per_million_tokens if usd_per_million_tokens is not None else None
    return TimeToTrain(tokens, ranks, measured_ranks, per_device, total, tokens / total / SECONDS_PER_DAY, usd)


def trained_in(attrs: dict[str, Any], number: int, tokens: float, ranks: int, world: int) -> TimeToTrain:
    """`tokens` at trial `number`'s measured tokens/s (its `attrs`) per device times `world` ranks."""
    measured = attrs.get("tokens_per_s")
    if not isinstance(measured, (int, float)) or not measured > 0:
        raise SpaceError("--tokens", f"trial {number} measured no tokens/s (a script space needs data.sequence_length)")
    cost = attrs.get(TOKENS_COST)
    return time_to_train(tokens, float(measured), ranks, world, float(cost) if isinstance(cost, (int, float)) else None)
