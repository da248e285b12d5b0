"""The one home of Sluice's domain facts: node tiers, model ids, the cost formula, shared figures.

Everything that names a tier, prices model tokens or carries the chain figures a
hold is checked against imports them from here. Pure: no I/O, no services.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum
from typing import Literal, get_args

from ledger.protocol.keccak import keccak256
from ledger.units import BaseUnits

TierName = Literal["edge", "regional", "cloud"]
TIER_NAMES: tuple[TierName, ...] = get_args(TierName)
"""Node tiers, in the order of their on-chain index (RateCard and node records store the index)."""


class Tier(IntEnum):
    """A node tier as the contracts store it."""

    EDGE = 0
    REGIONAL = 1
    CLOUD = 2

    @property
    def label(self) -> TierName:
        return TIER_NAMES[self.value]

    @classmethod
    def parse(cls, name: str) -> Tier:
        """The tier called `name`; ValueError naming the valid ones otherwise."""
        if name not in TIER_NAMES:
            raise ValueError(f"tier {name!r} must be one of {', '.join(TIER_NAMES)}")
        return cls(TIER_NAMES.index(name))


def tier_label(index: int) -> str:
    """The name of on-chain tier `index` ("unknown" for an index no release defines)."""
    return TIER_NAMES[index] if 0 <= index < len(TIER_NAMES) else "unknown"


EMBEDDED_UNLOCK_PERIOD = 15 * 60
"""Seconds a withdrawal or budget cut waits on the embedded chain (keeps the demo quick)."""
PRODUCTION_UNLOCK_PERIOD = 24 * 60 * 60
"""Seconds a withdrawal or budget cut waits on any other chain, unless configured."""
MIN_UNLOCK_PERIOD = 60
MAX_UNLOCK_PERIOD = 30 * 24 * 60 * 60
"""Settlement.setUnlockPeriod's bounds (MIN_UNLOCK_PERIOD, MAX_UNLOCK_PERIOD on chain)."""

RATE_DENOMINATOR = 1_000_000
"""RateCard rates are base units per 1,000,000 model tokens."""


def usage_cost(prompt_tokens: int, completion_tokens: int, input_rate: int, output_rate: int) -> BaseUnits:
    """cost = ceil((prompt * inputRate + completion * outputRate) / 1e6), in integers (RateCard.quote)."""
    return BaseUnits(-(-(prompt_tokens * input_rate + completion_tokens * output_rate) // RATE_DENOMINATOR))


def model_id(name: str) -> bytes:
    """keccak256(utf8(model name)), the rate card's key."""
    return keccak256(name.encode())


def effective_budget(remaining: int, scheduled: int, effective_at: int) -> int:
    """What admission may still count on of a budget: a pending cut (effective_at > 0) counts at once."""
    return min(remaining, scheduled) if effective_at > 0 else remaining


@dataclass(frozen=True, slots=True)
class ChainFigures:
    """What the hold check needs about one (payer, spender), read from the chain at `block`.

    `budget` is the effective budget (`effective_budget`), None when the spender is the payer.
    """

    escrow: BaseUnits
    pending: BaseUnits
    budget: BaseUnits | None
    allowlisted: bool
    paused: bool
    block: int
