"""The admission window against the chain's unlock period (Invariant 7): defaults fit, tight ones are refused
with every figure named."""

from __future__ import annotations

import pytest

from ledger.config import Settings
from ledger.domain import EMBEDDED_UNLOCK_PERIOD, PRODUCTION_UNLOCK_PERIOD
from ledger.window import UnlockPeriodTooShort, Window


def test_the_defaults_fit_the_embedded_and_the_production_unlock_period() -> None:
    embedded = Settings()
    production = Settings(rpc_url="http://127.0.0.1:1")
    assert embedded.window == Window(hold_lifetime=300, receipt_allowance=30, settlement_bound=120,
                                     mirror_lag_allowance=30)
    assert production.window.settlement_bound == 3600
    embedded.window.check(EMBEDDED_UNLOCK_PERIOD)  # 480 s < 900 s
    production.window.check(PRODUCTION_UNLOCK_PERIOD)  # 3960 s < 86400 s


def test_an_unlock_period_the_window_does_not_fit_is_refused_with_the_numbers() -> None:
    window = Window(hold_lifetime=300, receipt_allowance=30, settlement_bound=3600, mirror_lag_allowance=30)
    with pytest.raises(UnlockPeriodTooShort) as refused:
        window.check(EMBEDDED_UNLOCK_PERIOD)
    message = str(refused.value)
    assert message.startswith("unlock_period_too_short: the chain's unlockPeriod is 900 s")
    assert "30 s + hold lifetime 300 s + receipt allowance 30 s + settlement bound 3600 s = 3960 s" in message
    assert "sluice admin unlock-period 3961" in message
    window.check(3961)
    with pytest.raises(UnlockPeriodTooShort):
        window.check(3960)  # equal is not inside: strictly shorter


def test_the_settlement_bound_can_be_set() -> None:
    assert Settings(settlement_bound_seconds=60).window.settlement_bound == 60
