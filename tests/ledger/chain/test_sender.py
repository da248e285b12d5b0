"""TxSender's nonce allocation: contiguous under concurrency, resynced after another sender used the
key, and untouched by transactions refused at gas estimation."""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, TypeVar

import pytest
from eth_utils import keccak

from ledger.chain.client import Ledger, SettlementItem, role_id
from ledger.chain.sender import TxResult, TxSender
from ledger.errors import ContractRevert, Unauthorized
from ledger.units import ONE_TOKEN

if TYPE_CHECKING:
    from tests.support.ledger import Actors

THREADS = 32
TXS_PER_THREAD = 3

T = TypeVar("T")


def run_together(count: int, work: Callable[[int], T]) -> list[T]:
    """Run work(0..count-1) on `count` threads released at the same moment; re-raise any failure."""
    start = threading.Barrier(count)

    def worker(index: int) -> T:
        start.wait(timeout=30)
        return work(index)

    with ThreadPoolExecutor(max_workers=count) as pool:
        return list(pool.map(worker, range(count)))


def tx_count(ledger: Ledger, address: str) -> int:
    return int(ledger.w3.eth.get_transaction_count(address, "latest"))


def assert_mined_from(ledger: Ledger, results: list[TxResult], address: str) -> None:
    for result in results:
        assert result.receipt["status"] == 1
        tx = ledger.w3.eth.get_transaction(result.tx_hash)
        assert tx["from"] == address
        assert tx["nonce"] == result.nonce


def test_concurrent_senders_use_a_contiguous_nonce_range(ledger: Ledger, actors: Actors) -> None:
    operator, holder = actors.operator, actors.enterprise.address
    ledger.set_allowlisted(operator, holder, True)
    first = tx_count(ledger, operator.address)

    def mint_several(index: int) -> list[TxResult]:
        return [ledger.mint(operator, holder, index * TXS_PER_THREAD + k + 1) for k in range(TXS_PER_THREAD)]

    results = [r for batch in run_together(THREADS, mint_several) for r in batch]

    total = THREADS * TXS_PER_THREAD
    assert len({r.tx_hash for r in results}) == total
    assert sorted(r.nonce for r in results) == list(range(first, first + total))
    assert tx_count(ledger, operator.address) == first + total
    assert_mined_from(ledger, results, operator.address)
    assert ledger.balance_of(holder) == total * (total + 1) // 2


def test_concurrent_senders_with_refused_calls_skip_no_nonce(ledger: Ledger, actors: Actors) -> None:
    operator, holder = actors.operator, actors.enterprise.address
    ledger.set_allowlisted(operator, holder, True)
    first = tx_count(ledger, operator.address)
    item = [SettlementItem(holder, holder, 1)]

    def mint_or_refused_settle(index: int) -> TxResult | ContractRevert:
        if index % 2:
            try:  # the operator lacks SETTLER_ROLE: refused at estimate time
                ledger.settle_batch(operator, keccak(text=f"r{index}"), 1, item)
            except ContractRevert as exc:
                return exc
            raise AssertionError("settle by the operator was not refused")
        return ledger.mint(operator, holder, ONE_TOKEN)

    outcomes = run_together(THREADS, mint_or_refused_settle)

    minted = [o for o in outcomes if isinstance(o, TxResult)]
    refused = [o for o in outcomes if isinstance(o, ContractRevert)]
    assert len(minted) == len(refused) == THREADS // 2
    assert all(
        isinstance(e, Unauthorized)
        and e.args_by_name == {"account": operator.address, "neededRole": role_id("SETTLER_ROLE")}
        and e.tx_hash is None
        for e in refused
    )
    assert sorted(r.nonce for r in minted) == list(range(first, first + THREADS // 2))
    assert tx_count(ledger, operator.address) == first + THREADS // 2


def test_sender_resyncs_after_another_sender_used_the_key(ledger: Ledger, actors: Actors) -> None:
    operator, holder = actors.operator, actors.enterprise.address
    ledger.set_allowlisted(operator, holder, True)
    first = tx_count(ledger, operator.address)
    # A second process (another TxSender for the same key) shares nothing with this one.
    elsewhere = TxSender(ledger.w3, operator, timeout=30)
    mint = ledger.token.functions.mint(holder, 1)
    mint_tx: Any = {"to": mint.address, "data": mint._encode_transaction_data()}

    mine = ledger.mint(operator, holder, 1)  # caches first + 1 as its next nonce
    theirs = [elsewhere.transact(mint_tx) for _ in range(3)]
    again = ledger.mint(operator, holder, 1)  # first + 1 is taken: must resync to first + 4
    after = ledger.mint(operator, holder, 1)

    assert mine.nonce == first
    assert [t.nonce for t in theirs] == [first + 1, first + 2, first + 3]
    assert again.nonce == first + 4
    assert after.nonce == first + 5
    assert tx_count(ledger, operator.address) == first + 6
    assert_mined_from(ledger, [mine, *theirs, again, after], operator.address)
    assert ledger.balance_of(holder) == 6


def test_both_senders_resync_when_interleaved(ledger: Ledger, actors: Actors) -> None:
    operator, holder = actors.operator, actors.enterprise.address
    ledger.set_allowlisted(operator, holder, True)
    first = tx_count(ledger, operator.address)
    senders = [ledger.sender(operator), TxSender(ledger.w3, operator, timeout=30)]
    mint = ledger.token.functions.mint(holder, 1)
    mint_tx: Any = {"to": mint.address, "data": mint._encode_transaction_data()}

    results = [senders[i % 2].transact(mint_tx) for i in range(6)]

    assert [r.nonce for r in results] == list(range(first, first + 6))
    assert ledger.balance_of(holder) == 6


def test_revert_at_estimate_time_consumes_no_nonce(ledger: Ledger, actors: Actors) -> None:
    operator, holder = actors.operator, actors.enterprise.address
    ledger.set_allowlisted(operator, holder, True)
    first = tx_count(ledger, operator.address)

    for _ in range(3):
        with pytest.raises(Unauthorized) as info:
            ledger.settle_batch(operator, keccak(text="r"), 1, [SettlementItem(holder, holder, 1)])
        assert info.value.error == "AccessControlUnauthorizedAccount"
        assert info.value.args_by_name == {"account": operator.address, "neededRole": role_id("SETTLER_ROLE")}
        assert info.value.tx_hash is None  # never broadcast
    assert tx_count(ledger, operator.address) == first

    assert ledger.mint(operator, holder, 1).nonce == first
    assert ledger.mint(operator, holder, 1).nonce == first + 1


def test_revert_at_mining_time_consumes_its_nonce_and_is_explained(ledger: Ledger, actors: Actors) -> None:
    operator, holder = actors.operator, actors.enterprise.address
    first = tx_count(ledger, operator.address)
    sender = ledger.sender(operator)
    mint = ledger.token.functions.mint(holder, 1)  # holder is not allowlisted
    # A fixed gas limit skips estimation, so the refusal happens on chain.
    doomed: Any = {"to": mint.address, "data": mint._encode_transaction_data(), "gas": 200_000}

    with pytest.raises(ContractRevert) as info:
        sender.transact(doomed)

    assert info.value.error == "ComputeTokenNotAllowlisted"
    assert info.value.args_by_name == {"account": holder}
    assert info.value.tx_hash is not None
    receipt = ledger.w3.eth.get_transaction_receipt(info.value.tx_hash)
    assert receipt["status"] == 0
    assert ledger.w3.eth.get_transaction(info.value.tx_hash)["nonce"] == first
    assert ledger.set_allowlisted(operator, holder, True).nonce == first + 1


def test_revert_caused_by_an_earlier_transaction_of_the_same_block_is_explained(ledger: Ledger,
                                                                              actors: Actors) -> None:
    operator, holder, w3 = actors.operator, actors.enterprise, ledger.w3
    ledger.set_allowlisted(operator, holder.address, True)
    ledger.set_allowlisted(operator, actors.other.address, True)
    ledger.mint(operator, holder.address, 5)
    sender = ledger.sender(holder)
    move = ledger.token.functions.transfer(actors.other.address, 5)
    # Both spend the whole balance; fixed gas limits skip estimation, so the second fails on chain.
    tx: Any = {"to": move.address, "data": move._encode_transaction_data(), "gas": 200_000}
    w3.provider.make_request("evm_setAutomine", [False])  # type: ignore[arg-type]
    try:
        first_hash, _ = sender.send(tx)
        second_hash, second_nonce = sender.send(tx)
        w3.provider.make_request("evm_mine", [])  # type: ignore[arg-type]
    finally:
        w3.provider.make_request("evm_setAutomine", [True])  # type: ignore[arg-type]
    assert w3.eth.get_transaction_receipt(first_hash)["status"] == 1
    with pytest.raises(ContractRevert) as info:
        sender.wait(second_hash, second_nonce, tx)
    # Against the state before the block the transfer would pass: the reason is found after it.
    assert info.value.error == "ERC20InsufficientBalance"
    assert info.value.args_by_name == {"sender": holder.address, "balance": 0, "needed": 5}
    assert ledger.w3.eth.get_transaction_receipt(second_hash)["blockNumber"] == ledger.w3.eth.get_transaction_receipt(
        first_hash)["blockNumber"]


def test_sender_recovers_when_the_chain_rolls_back(ledger: Ledger, actors: Actors) -> None:
    operator, holder, w3 = actors.operator, actors.enterprise.address, ledger.w3
    ledger.set_allowlisted(operator, holder, True)
    sender = ledger.sender(operator)
    sender.timeout = 5  # a sender stuck behind a gap would time out here
    snapshot = w3.provider.make_request("evm_snapshot", [])["result"]
    ledger.mint(operator, holder, 1)
    # The chain loses its last block, as after a restart from state persisted a block earlier.
    assert w3.provider.make_request("evm_revert", [snapshot])["result"] is True
    expected = tx_count(ledger, operator.address)

    try:
        result = ledger.mint(operator, holder, 1)
    finally:
        # Leave nothing queued behind the gap: it would mine in a later test once the nonce catches up.
        w3.provider.make_request("anvil_dropAllTransactions", [])

    assert result.nonce == expected
    assert ledger.balance_of(holder) == 1
