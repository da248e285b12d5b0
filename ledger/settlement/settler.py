"""The chain side of batch settlement: submit a cut batch, find or replace its transaction, confirm it.

The Celery tasks (`ledger.settlement.tasks`) and `sluice admin debts` (`ledger.settlement.debts`)
drive batches through `Settler.settle`; every row it reads or writes goes through
`ledger.settlement.store`.

A batch moves through a state machine kept in `settlement_batches.status`:

    cut ──send──▶ submitted ──mined, SLUICE_CONFIRMATIONS deep──▶ confirmed
     │             │    ▲ stuck: the same nonce again (fees bumped where the chain charges any)
     └──error──▶ failed ┘ retried: the same batch, from whatever the chain says happened

and once the chain mirror has seen the burn, `release_settled` drops the batch's reservations
(`released_at`; its usage records go settled -> released).

Exactly once, in three steps:

1. A usage record joins exactly one batch. The cut claims outbox rows with `FOR UPDATE SKIP
   LOCKED`, and in the same transaction stores the batch, sets each record's `batch_id` (only
   from `metered`) and deletes the outbox rows; a crashed cut rolls back whole.
2. A batch burns at most once. Its contents are fixed at the cut and its id is keccak256 of its
   receipts root, so every attempt submits the same root, which the contract settles once
   (it derives `batchId = keccak256(receiptsRoot)` itself).
   No attempt sends before learning whether an earlier one (a crashed worker, a redelivered
   task) already settled it: with a transaction on record it asks the chain (`isSettled`, the
   `BatchSettled` log, the receipt, the nonce); otherwise the new transaction's gas estimate
   reverts with SettlementBatchAlreadySettled, and the settling transaction is looked up instead.
3. A batch is confirmed once: `confirm_batch` (SQL) takes the batch row lock and does nothing
   when it is already confirmed; the paid amounts come from the mined receipt's events, checked
   against the stored items.

Nothing here depends on the broker delivering a task exactly once: the tasks take batch ids,
an advisory lock keeps two workers off one batch, and a sweeper re-enqueues batches left behind.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import requests
from eth_account.signers.local import LocalAccount
from eth_typing import HexStr
from eth_utils.abi import function_abi_to_4byte_selector
from hexbytes import HexBytes
from web3.exceptions import ContractLogicError, TransactionNotFound, Web3RPCError
from web3.types import TxParams, TxReceipt

from ledger.chain.client import Ledger
from ledger.chain.connection import connect
from ledger.chain.deployment import load_deployment
from ledger.chain.sender import revert_from, wait_for_receipt
from ledger.errors import (
    BatchAlreadySettled,
    ChainUnavailable,
    ContractRevert,
    LedgerError,
    SettlementMismatch,
    SettlementPending,
    TransactionTimeout,
)
from ledger.keys import settler_account
from ledger.settlement.settings import SettlementSettings
from ledger.settlement.store import (
    Batch,
    Connection,
    Database,
    confirm_batch,
    load_batch,
    record_failure,
    record_sent,
    release_settled,
    touch_batch,
)

log = logging.getLogger(__name__)

# How far back `BatchSettled` logs are searched per eth_getLogs call (nodes limit the range).
_LOG_CHUNK = 5_000


def _words(data: Any) -> list[int]:
    raw = bytes(HexBytes(data))
    return [int.from_bytes(raw[i : i + 32], "big") for i in range(0, len(raw), 32)]


@dataclass(frozen=True)
class Mined:
    """The transaction that settled a batch, as its receipt tells."""

    tx_hash: str
    block: int
    block_hash: bytes
    gas_used: int
    nonce: int | None
    receipt: TxReceipt


@contextmanager
def chain_errors() -> Iterator[None]:
    """web3 lets the HTTP library's errors through: name them as the ledger's."""
    try:
        yield
    except (requests.ConnectionError, requests.Timeout) as exc:
        raise ChainUnavailable(f"the chain did not answer: {exc.__class__.__name__}") from exc


class Settler:
    """Submits and confirms batches from the settler key; one per process (its sender owns the nonces)."""

    def __init__(self, ledger: Ledger, account: LocalAccount, db: Database, settings: SettlementSettings) -> None:
        self.ledger = ledger
        self.w3 = ledger.w3
        self.db = db
        self.settings = settings
        self.sender = ledger.sender(account)
        events = ledger.settlement.events
        self._topics = {name: "0x" + bytes(HexBytes(getattr(events, name).topic)).hex()
                        for name in ("BatchSettled", "Redeemed", "Shortfall")}
        self._settled_topic = self._topics["BatchSettled"]
        settle_abi = next(e for e in ledger.settlement.abi if e.get("type") == "function" and e.get("name") == "settle")
        self._settle_selector = function_abi_to_4byte_selector(settle_abi)

    # -- the state machine ------------------------------------------------------------------
    def settle(self, batch_id: bytes) -> str:
        """Drive one batch as far as it goes now; 'confirmed', 'busy' (another worker has it) or raises.

        Raises SettlementPending while the transaction waits for mining or confirmations, and the
        chain's or database's error otherwise; the failure is recorded and the caller retries.
        """
        with self.db.batch_lock(batch_id) as held:
            if not held:
                return "busy"
            conn = self.db.conn()
            batch = load_batch(conn, batch_id)
            if batch is None:
                raise SettlementMismatch(f"no settlement batch 0x{batch_id.hex()}")
            if batch.status == "confirmed":
                return "confirmed"
            touch_batch(conn, batch_id)
            try:
                with chain_errors():
                    mined = self._find_or_send(batch)
                    self._await_confirmations(mined)
                    paid = self._paid_by_item(batch, mined)
            except SettlementPending as exc:
                touch_batch(conn, batch_id)
                log.info("batch 0x%s: %s", batch_id.hex(), exc)
                raise
            except (LedgerError, Web3RPCError) as exc:
                record_failure(conn, batch_id, f"{exc.__class__.__name__}: {exc}")
                log.warning("batch 0x%s: attempt failed, will retry: %s: %s", batch_id.hex(),
                            exc.__class__.__name__, exc)
                raise
            self._confirm(conn, batch, mined, paid)
            release_settled(conn)
            return "confirmed"

    def _find_or_send(self, batch: Batch) -> Mined:
        if batch.tx_hash is None:
            # Never sent as far as we know; had a crashed attempt settled it, the gas estimate of the
            # next transaction reverts with BatchAlreadySettled and `_send` goes looking for it.
            return self._send(batch, nonce=None, replacing=None)
        found = self._find_settlement(batch)
        if found is not None:
            return found
        if batch.nonce is not None:
            receipt = self._receipt(batch.tx_hash)
            if receipt is not None and receipt["status"] == 1:
                return self._mined(receipt, batch.nonce)  # mined since the isSettled check; events checked later
            if receipt is None and not self._nonce_used(batch.nonce):
                in_pool = self._in_pool(batch.tx_hash)
                if in_pool and (batch.sent_age or 0.0) < self.settings.settlement_stuck:
                    return self._wait_mined(batch, batch.tx_hash, nonce=batch.nonce)
                # Stuck in the pool, or dropped from it (a restarted node): the same nonce again.
                return self._send(batch, nonce=batch.nonce, replacing=batch.tx_hash if in_pool else None)
            # Reverted, or its nonce went to another transaction: this batch needs a new one.
        return self._send(batch, nonce=None, replacing=None)

    def _send(self, batch: Batch, *, nonce: int | None, replacing: str | None) -> Mined:
        tx: TxParams = {"to": self.ledger.settlement.address, "data": self._settle_calldata(batch)}
        try:
            params = self.sender.build(tx)  # the gas estimate surfaces reverts before a nonce is used
        except BatchAlreadySettled:
            found = self._find_settlement(batch)
            if found is None:
                raise SettlementPending("the chain reports the batch settled but has no receipt for it yet") from None
            return found
        if replacing is not None:
            params = self._bumped(params, replacing)
        try:
            tx_hash, used = self.sender.send(params, nonce=nonce)
        except Web3RPCError as exc:
            message = str(exc).lower()
            if nonce is None:
                raise
            pending = ("already imported", "already known", "underpriced")
            if any(p in message for p in pending) and batch.tx_hash is not None:
                return self._wait_mined(batch, batch.tx_hash, nonce=nonce)  # ours is still in the pool
            if "nonce too low" in message or "nonce has already been used" in message:
                found = self._find_settlement(batch)
                return found if found is not None else self._send(batch, nonce=None, replacing=None)
            raise
        record_sent(self.db.conn(), batch.batch_id, tx_hash, used, "sent" if nonce is None else "replaced")
        log.info("batch 0x%s: sent %s (nonce %d)", batch.batch_id.hex(), tx_hash, used)
        return self._wait_mined(batch, tx_hash, tx, used)

    def _settle_calldata(self, batch: Batch) -> HexStr:
        """settle(receiptsRoot, receiptCount, items), encoded straight from the raw values (the contract
        derives the batch id, keccak256(receiptsRoot), itself)."""
        args = self.w3.codec.encode(
            ["bytes32", "uint256", "(address,address,uint256)[]"],
            [batch.root, batch.receipt_count, [(i.payer, i.spender, i.amount) for i in batch.items]],
        )
        return HexStr("0x" + (self._settle_selector + args).hex())

    def _bumped(self, params: TxParams, replacing: str) -> TxParams:
        """The replacement of the pending transaction `replacing`: fees at least 12.5% over its own, so
        nodes accept it. A free-gas chain (fees 0) keeps fees and gas as they were: the settler holds no
        ether there, and the identical transaction simply goes into the pool again if it was dropped.
        """
        try:
            old = self.w3.eth.get_transaction(HexBytes(replacing))
        except TransactionNotFound:
            return params
        out: dict[str, Any] = dict(params)
        free = True
        for key in ("maxFeePerGas", "maxPriorityFeePerGas", "gasPrice"):
            previous = int(old.get(key, 0) or 0)  # type: ignore[call-overload]
            if key in out and previous > 0:
                out[key] = max(int(out[key]), previous * 9 // 8 + 1)
                free = False
        if free:
            out["gas"] = int(old["gas"])
        return out  # type: ignore[return-value]

    def _wait_mined(self, batch: Batch, tx_hash: str, tx: TxParams | None = None, nonce: int | None = None) -> Mined:
        try:
            receipt = wait_for_receipt(self.w3, tx_hash, self.settings.settlement_wait)
        except TransactionTimeout:
            raise SettlementPending(f"transaction {tx_hash} of batch 0x{batch.batch_id.hex()} not mined yet") from None
        if receipt["status"] == 1:
            return self._mined(receipt, nonce)
        error = self._revert_reason(tx, receipt, tx_hash)
        if isinstance(error, BatchAlreadySettled):
            found = self._find_settlement(batch)
            if found is not None:
                return found
        raise error

    def _revert_reason(self, tx: TxParams | None, receipt: TxReceipt, tx_hash: str) -> ContractRevert:
        if tx is None:
            return ContractRevert("", {}, "0x", tx_hash)
        call: dict[str, Any] = {"to": tx.get("to"), "data": tx.get("data"), "from": self.sender.address}
        try:  # replay against the state the transaction saw
            self.w3.eth.call(call, int(receipt["blockNumber"]) - 1)  # type: ignore[arg-type]
        except ContractLogicError as exc:
            return revert_from(exc, tx_hash)
        except (Web3RPCError, ValueError):  # that state is gone (a restarted dev chain keeps no history)
            pass
        return ContractRevert("", {}, "0x", tx_hash)

    def _await_confirmations(self, mined: Mined) -> None:
        """Wait until the receipt is SLUICE_CONFIRMATIONS blocks deep and still on the canonical chain."""
        if self.settings.confirmations == 0:
            return  # final as mined (QBFT's immediate finality; Anvil)
        needed = mined.block + self.settings.confirmations
        deadline = time.monotonic() + self.settings.settlement_wait
        delay = 0.01
        while self.w3.eth.block_number < needed:
            if time.monotonic() > deadline:
                raise SettlementPending(
                    f"transaction {mined.tx_hash} waits for {self.settings.confirmations} confirmations"
                )
            time.sleep(delay)
            delay = min(delay * 2, 0.5)
        block = self.w3.eth.get_block(mined.block)
        if bytes(block["hash"]) != mined.block_hash:
            raise SettlementPending(f"block {mined.block} of transaction {mined.tx_hash} was reorganised away")

    # -- what the chain knows -----------------------------------------------------------------
    def _find_settlement(self, batch: Batch) -> Mined | None:
        """The transaction that settled the batch, whoever sent it; None while it is not settled."""
        if not self.ledger.is_settled(batch.batch_id):
            return None
        address = self.ledger.settlement.address
        end = int(self.w3.eth.block_number)
        floor = self.ledger.deployment.deploy_block
        while end >= floor:
            start = max(floor, end - _LOG_CHUNK + 1)
            logs = self.w3.eth.get_logs({
                "address": address, "fromBlock": start, "toBlock": end,
                "topics": [self._settled_topic, "0x" + batch.batch_id.hex()],
            })
            if logs:
                receipt = self.w3.eth.get_transaction_receipt(logs[-1]["transactionHash"])
                mined = self._mined(receipt)
                if mined.tx_hash != batch.tx_hash:
                    record_sent(self.db.conn(), batch.batch_id, mined.tx_hash, mined.nonce, "found")
                return mined
            end = start - 1
        raise SettlementMismatch(f"batch 0x{batch.batch_id.hex()} is settled but no BatchSettled log was found")

    def _mined(self, receipt: TxReceipt, nonce: int | None = None) -> Mined:
        tx_hash = "0x" + bytes(receipt["transactionHash"]).hex()
        if nonce is None:
            with contextlib.suppress(TransactionNotFound):
                nonce = int(self.w3.eth.get_transaction(HexBytes(tx_hash))["nonce"])
        return Mined(tx_hash, int(receipt["blockNumber"]), bytes(receipt["blockHash"]), int(receipt["gasUsed"]),
                     nonce, receipt)

    def _receipt(self, tx_hash: str) -> TxReceipt | None:
        try:
            return self.w3.eth.get_transaction_receipt(HexBytes(tx_hash))
        except TransactionNotFound:
            return None

    def _in_pool(self, tx_hash: str) -> bool:
        try:
            self.w3.eth.get_transaction(HexBytes(tx_hash))
        except TransactionNotFound:
            return False
        return True

    def _nonce_used(self, nonce: int) -> bool:
        return int(self.w3.eth.get_transaction_count(self.sender.address, "latest")) > nonce

    def _paid_by_item(self, batch: Batch, mined: Mined) -> dict[tuple[bytes, bytes], int]:
        """What each item paid, from the receipt's events, after checking them against the stored batch.

        The three events have fixed layouts (indexed batchId, payer, spender; uint256 data words),
        decoded here directly: web3's generic decoder costs ~0.1 ms per log, a batch has hundreds.
        """
        address = self.ledger.settlement.address.lower()
        topic_batch = "0x" + batch.batch_id.hex()
        settled: list[list[int]] = []
        redeemed: dict[tuple[bytes, bytes], int] = {}
        shortfalls: dict[tuple[bytes, bytes], tuple[int, int]] = {}
        for entry in mined.receipt["logs"]:
            topics = ["0x" + bytes(t).hex() for t in entry["topics"]]
            if str(entry["address"]).lower() != address or len(topics) < 2 or topics[1] != topic_batch:
                continue
            words = _words(entry["data"])
            if topics[0] == self._topics["BatchSettled"]:
                settled.append(words)
            elif topics[0] in (self._topics["Redeemed"], self._topics["Shortfall"]):
                key = (bytes.fromhex(topics[2][-40:]), bytes.fromhex(topics[3][-40:]))
                if topics[0] == self._topics["Redeemed"]:
                    redeemed[key] = redeemed.get(key, 0) + words[0]
                else:
                    shortfalls[key] = (words[0], words[1])
        if len(settled) != 1:
            raise SettlementMismatch(f"transaction {mined.tx_hash} has {len(settled)} BatchSettled events of the batch")
        root, count = settled[0][0].to_bytes(32, "big"), settled[0][1]
        if root != batch.root or count != batch.receipt_count:
            raise SettlementMismatch(f"batch 0x{batch.batch_id.hex()} settled with another root or receipt count")
        paid: dict[tuple[bytes, bytes], int] = {}
        for item in batch.items:
            key = (item.payer, item.spender)
            amount = redeemed.pop(key, 0)
            pair = f"(0x{item.payer.hex()}, 0x{item.spender.hex()})"
            if amount > item.amount:
                raise SettlementMismatch(f"{pair} redeemed {amount}, more than the {item.amount} owed")
            if amount < item.amount and shortfalls.get(key) != (item.amount, amount):
                raise SettlementMismatch(f"{pair} paid {amount} of {item.amount} without a matching Shortfall")
            paid[key] = amount
        if redeemed:
            raise SettlementMismatch(f"Redeemed events for {len(redeemed)} pairs that are not in the batch")
        return paid

    def _confirm(self, conn: Connection, batch: Batch, mined: Mined, paid: dict[tuple[bytes, bytes], int]) -> None:
        now = confirm_batch(conn, batch.batch_id, mined.tx_hash, mined.block, mined.gas_used, paid)
        short = sum(1 for item in batch.items if paid[(item.payer, item.spender)] < item.amount)
        log.info("batch 0x%s confirmed in block %d by %s (%d gas)%s%s", batch.batch_id.hex(), mined.block,
                 mined.tx_hash, mined.gas_used, f", {short} shortfalls" if short else "",
                 "" if now else " (already confirmed)")


def open_settler(settings: SettlementSettings, db: Database) -> Settler:
    """The chain side for this process: the recorded deployment on the configured chain, the settler key."""
    w3 = connect(settings.effective_rpc_url)
    with chain_errors():
        deployment = load_deployment(settings.state_dir, int(w3.eth.chain_id))
    ledger = Ledger(w3, deployment, timeout=settings.tx_timeout)
    return Settler(ledger, settler_account(settings), db, settings)
