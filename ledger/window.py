"""The admission window (Invariant 7): what the service may admit against escrow and budgets, and how
long it may take to settle what it admitted, measured against the chain's `unlockPeriod`.

Escrow cannot leave, and a budget cannot shrink, sooner than `unlockPeriod` after the payer asks. A call
admitted just before the mirror saw such a request must be settled before the request takes effect:

    mirror lag allowance + hold lifetime + receipt allowance + settlement bound  <  unlockPeriod

The service checks this at start-up and refuses to start when it does not hold.
"""

from __future__ import annotations

from dataclasses import dataclass

from ledger.errors import LedgerError

# The unlock period itself is set at deploy (ledger.domain: 15 min embedded, 24 h elsewhere); these
# are the service's side of the window, defaults that fit both with room to spare.
EMBEDDED_SETTLEMENT_BOUND = 2 * 60
PRODUCTION_SETTLEMENT_BOUND = 3600
HOLD_LIFETIME = 5 * 60
RECEIPT_ALLOWANCE = 30
MIRROR_LAG_ALLOWANCE = 30


class UnlockPeriodTooShort(LedgerError):
    """The chain's unlockPeriod leaves no room to settle what the service admits."""

    code = "unlock_period_too_short"


@dataclass(frozen=True, slots=True)
class Window:
    """The service's side of the window, in seconds."""

    hold_lifetime: int
    receipt_allowance: int
    settlement_bound: int
    mirror_lag_allowance: int

    @property
    def total(self) -> int:
        return self.mirror_lag_allowance + self.hold_lifetime + self.receipt_allowance + self.settlement_bound

    def check(self, unlock_period: int) -> None:
        """Raise `UnlockPeriodTooShort`, naming every figure, unless the window fits inside `unlock_period`."""
        if self.total < unlock_period:
            return
        raise UnlockPeriodTooShort(
            f"{UnlockPeriodTooShort.code}: the chain's unlockPeriod is {unlock_period} s, but mirror lag allowance "
            f"{self.mirror_lag_allowance} s + hold lifetime {self.hold_lifetime} s + receipt allowance "
            f"{self.receipt_allowance} s + settlement bound {self.settlement_bound} s = {self.total} s must be "
            f"shorter; raise it (`sluice admin unlock-period {self.total + 1}` or more) or lower "
            "SLUICE_HOLD_LIFETIME_SECONDS / SLUICE_SETTLEMENT_BOUND_SECONDS"
        )
