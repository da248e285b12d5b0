"""Assertions shared by the contract behaviour suites: exact custom errors and event arguments."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from web3.contract.contract import ContractEvent
from web3.logs import DISCARD

from ledger.chain.client import Ledger
from ledger.chain.sender import TxResult
from ledger.errors import ERROR_CLASSES, ContractRevert

ZERO_ADDRESS = "0x" + "00" * 20


@contextmanager
def reverts(error: str, **args: Any) -> Iterator[None]:
    """Expect the typed revert of exactly this custom error, with exactly these values."""
    with pytest.raises(ContractRevert) as info:
        yield
    assert info.value.error == error
    assert info.value.args_by_name == args
    assert type(info.value) is ERROR_CLASSES.get(error, ContractRevert)


def events(event: ContractEvent, tx: TxResult) -> list[dict[str, Any]]:
    """The args of every `event` this contract emitted in `tx` (other contracts share signatures)."""
    logs = event().process_receipt(tx.receipt, errors=DISCARD)
    return [dict(e["args"]) for e in logs if e["address"] == event.address]


def latest_timestamp(ledger: Ledger) -> int:
    return int(ledger.w3.eth.get_block("latest")["timestamp"])
