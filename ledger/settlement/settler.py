"""Batch settlement of metered usage: cut, submit, confirm, release; debts from shortfalls.

This module owns the settlement tables of migration 0003 and every statement on them. The
Celery tasks (`ledger.settlement.tasks`) and `sluice admin debts` only call in here.

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
   receipts root, so every attempt submits the same `batchId`, which the contract settles once.
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
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from functools import lru_cache
from typing import Any

import psycopg
import requests
from eth_account.signers.local import LocalAccount
from eth_typing import HexStr
from eth_utils.abi import function_abi_to_4byte_selector
from eth_utils.address import to_checksum_address
from eth_utils.crypto import keccak
from hexbytes import HexBytes
from psycopg.rows import TupleRow
from pydantic import Field, model_validator
from web3.exceptions import ContractLogicError, TransactionNotFound, Web3RPCError
from web3.types import TxParams, TxReceipt

from ledger.chain.client import Ledger
from ledger.chain.sender import revert_from, wait_for_receipt
from ledger.config import Settings
from ledger.errors import BatchAlreadySettled, ChainUnavailable, ContractRevert, LedgerError, TransactionTimeout
from ledger.protocol.merkle import MerkleTree, build_tree, receipt_leaf
from ledger.units import BaseUnits

log = logging.getLogger(__name__)

Connection = psycopg.Connection[TupleRow]

# Namespace of the per-batch advisory locks (pg_try_advisory_lock(int4, int4)).
_LOCK_CLASS = int.from_bytes(keccak(text="sluice:settlement-batch")[:4], "big", signed=True)
# How far back `BatchSettled` logs are searched per eth_getLogs call (nodes limit the range).
_LOG_CHUNK = 5_000
_SHORTFALL_REASON = "settlement shortfall"


class SettlementSettings(Settings):
    """The ledger settings plus the settlement workers' own (`SLUICE_*`)."""

    batch_interval: float = Field(2.0, gt=0, description="seconds between batch cuts (Celery beat)")
    batch_max: int = Field(500, ge=1, description="most usage records per batch; a full batch is cut at once")
    batch_max_items: int = Field(
        400, ge=1, description="most (payer, spender) items per batch: bounds its gas (~12-18k per item)"
    )
    settlement_wait: float = Field(
        20.0, gt=0, description="seconds a submit task waits for mining or confirmations before it retries later"
    )
    settlement_stuck: float = Field(
        60.0, gt=0, description="a settlement transaction pending this long is sent again at its nonce"
    )
    settlement_retry_max: float = Field(
        10.0, gt=0, description="longest back-off between two retries of a submit task"
    )
    settlement_sweep: float = Field(
        15.0, gt=0, description="an unconfirmed batch no attempt touched this long is enqueued again "
        "(must exceed SLUICE_SETTLEMENT_RETRY_MAX, so a task still retrying is never doubled)"
    )
    settlement_max_open: int = Field(
        16, ge=1, description="no batch is cut while this many are unconfirmed: an outage of the chain ends "
        "in a few full batches rather than many small ones"
    )
    settlement_queue: str = Field("sluice.settlement", min_length=1,
                                  description="broker queue of the settlement tasks (one per deployment)")
    worker_metrics_port: int = Field(9808, ge=0, description="Prometheus port of `sluice worker` (0: none)")


    @model_validator(mode="after")
    def _sweep_after_retries(self) -> SettlementSettings:
        if self.settlement_sweep <= self.settlement_retry_max:
            raise ValueError("SLUICE_SETTLEMENT_SWEEP must be longer than SLUICE_SETTLEMENT_RETRY_MAX")
        return self


@lru_cache(maxsize=1)
def get_settlement_settings() -> SettlementSettings:
    """The process-wide settlement settings, read once."""
    return SettlementSettings()




class SettlementPending(LedgerError):
    """The batch's transaction is not mined or not confirmed yet: try again later."""


class SettlementMismatch(LedgerError):
    """What the chain recorded for a batch disagrees with the stored batch."""


class DebtNotCovered(LedgerError):
    """The payer's balance or allowance does not cover its debts yet."""


# --------------------------------------------------------------------------- database


class Database:
    """This process's PostgreSQL connections (one per thread), reopened after a server restart.

    Connections are in autocommit mode; every write is an explicit `with conn.transaction()`.
    The lock connection holds session-level advisory locks, which the server drops by itself
    when this process dies, so a killed worker never leaves a batch locked.
    """

    def __init__(self, url: str) -> None:
        self.url = url
        self._local = threading.local()

    def conn(self) -> Connection:
        return self._open("conn")

    def _open(self, slot: str) -> Connection:
        conn: Connection | None = getattr(self._local, slot, None)
        if conn is None or conn.closed or conn.broken:
            conn = psycopg.connect(self.url, autocommit=True, connect_timeout=10)
            setattr(self._local, slot, conn)
        return conn

    def discard(self) -> None:
        """Close this thread's connections (after an OperationalError: the next call reconnects)."""
        for slot in ("conn", "lock_conn"):
            conn: Connection | None = getattr(self._local, slot, None)
            if conn is not None:
                conn.close()
                setattr(self._local, slot, None)

    @contextmanager
    def batch_lock(self, batch_id: bytes) -> Iterator[bool]:
        """Try to take the batch's advisory lock; yields whether this process holds it."""
        key = (_LOCK_CLASS, int.from_bytes(batch_id[:4], "big", signed=True))
        conn = self._open("lock_conn")
        row = conn.execute("SELECT pg_try_advisory_lock(%s, %s)", key).fetchone()
        held = bool(row and row[0])
        try:
            yield held
        finally:
            if held:
                try:
                    conn.execute("SELECT pg_advisory_unlock(%s, %s)", key)
                except psycopg.Error:  # the server went away, and the lock with it
                    conn.close()


# --------------------------------------------------------------------------- cutting

# Pick whole (payer, spender) pairs, oldest waiting record first, and all their waiting records up
# to the batch limits: a pair's records travel together, so a backlog settles with few items (gas
# is paid per item) while no record waits behind younger ones of another pair.
CLAIM_SQL = """
WITH pairs AS (
    SELECT u.payer, u.spender, min(o.id) AS first_id, count(*) AS waiting
    FROM settlement_outbox o JOIN usage_records u ON u.job_id = o.job_id
    GROUP BY u.payer, u.spender
), chosen AS (
    SELECT payer, spender FROM (
        SELECT payer, spender, waiting,
               sum(waiting) OVER (ORDER BY first_id) AS upto,
               row_number() OVER (ORDER BY first_id) AS pair_no
        FROM pairs
    ) p
    WHERE upto - waiting < %(max_records)s AND pair_no <= %(max_items)s
)
SELECT o.id, u.job_id, u.payer, u.spender, u.cost
FROM settlement_outbox o
JOIN usage_records u ON u.job_id = o.job_id
JOIN chosen c ON c.payer = u.payer AND c.spender = u.spender
ORDER BY o.id
LIMIT %(max_records)s
FOR UPDATE OF o SKIP LOCKED
"""


@dataclass(frozen=True)
class CutBatch:
    batch_id: bytes
    receipts: int
    items: int
    total: BaseUnits


def _hex_address(raw: bytes) -> str:
    return "0x" + raw.hex()


def _tree_of(leaves: Sequence[bytes]) -> tuple[MerkleTree, bytes]:
    tree = build_tree(leaves)
    return tree, keccak(tree.root)


def open_batches(conn: Connection) -> int:
    """Batches cut and not yet confirmed."""
    row = conn.execute("SELECT count(*) FROM settlement_batches WHERE status <> 'confirmed'").fetchone()
    return int(row[0]) if row else 0


def waiting_records(conn: Connection, limit: int) -> int:
    """How many usage records wait in the outbox, counting at most `limit`."""
    row = conn.execute(
        "SELECT count(*) FROM (SELECT 1 FROM settlement_outbox LIMIT %s) waiting", (limit,)
    ).fetchone()
    return int(row[0]) if row else 0


def cut_batch(conn: Connection, max_records: int, max_items: int) -> CutBatch | None:
    """Claim waiting usage records into one new batch (one transaction); None when nothing waits."""
    with conn.transaction():
        rows = conn.execute(CLAIM_SQL, {"max_records": max_records, "max_items": max_items}).fetchall()
        if not rows:
            return None
        leaves = [receipt_leaf(bytes(job), _hex_address(bytes(p)), _hex_address(bytes(s)), int(cost))
                  for _id, job, p, s, cost in rows]
        tree, batch_id = _tree_of(leaves)
        items: dict[tuple[bytes, bytes], list[int]] = {}
        for _id, _job, payer, spender, cost in rows:
            entry = items.setdefault((bytes(payer), bytes(spender)), [0, 0])
            entry[0] += int(cost)
            entry[1] += 1
        total = sum(amount for amount, _n in items.values())
        conn.execute(
            "INSERT INTO settlement_batches (batch_id, kind, receipts_root, receipt_count, item_count, total)"
            " VALUES (%s, 'usage', %s, %s, %s, %s)",
            (batch_id, tree.root, len(rows), len(items), Decimal(total)),
        )
        with conn.cursor() as cur:
            with cur.copy("COPY settlement_items (batch_id, payer, spender, amount, receipts)"
                          " FROM STDIN (FORMAT BINARY)") as copy:
                copy.set_types(["bytea", "bytea", "bytea", "numeric", "int4"])
                for (payer, spender), (amount, count) in sorted(items.items()):
                    copy.write_row((batch_id, payer, spender, Decimal(amount), count))
            cur.execute("CREATE TEMP TABLE cut_proofs (job_id bytea PRIMARY KEY, proof bytea[]) ON COMMIT DROP")
            with cur.copy("COPY cut_proofs (job_id, proof) FROM STDIN (FORMAT BINARY)") as copy:
                copy.set_types(["bytea", "bytea[]"])
                for (_id, job, *_rest), leaf in zip(rows, leaves, strict=True):
                    copy.write_row((bytes(job), tree.proof(leaf)))
            cur.execute(
                "UPDATE usage_records u SET status = 'batched', batch_id = %s, merkle_proof = p.proof"
                " FROM cut_proofs p WHERE u.job_id = p.job_id AND u.status = 'metered'",
                (batch_id,),
            )
            if cur.rowcount != len(rows):
                raise SettlementMismatch(
                    f"{len(rows) - cur.rowcount} outbox rows point at usage records that are not 'metered'"
                )
            cur.execute("DELETE FROM settlement_outbox WHERE id = ANY(%s)", ([int(r[0]) for r in rows],))
    log.info("cut batch 0x%s: %d records, %d items", batch_id.hex(), len(rows), len(items))
    return CutBatch(batch_id, len(rows), len(items), BaseUnits(total))


def sweep_stale(conn: Connection, older_than: float, limit: int = 200) -> list[bytes]:
    """Unconfirmed batches nobody touched for `older_than` seconds (their task was lost): enqueue them again."""
    with conn.transaction():
        rows = conn.execute(
            "UPDATE settlement_batches SET swept_at = now() WHERE batch_id IN ("
            "  SELECT batch_id FROM settlement_batches WHERE status <> 'confirmed'"
            "    AND greatest(updated_at, coalesce(swept_at, '-infinity')) < now() - make_interval(secs => %s)"
            "  ORDER BY cut_at LIMIT %s FOR UPDATE SKIP LOCKED)"
            " RETURNING batch_id",
            (older_than, limit),
        ).fetchall()
    return [bytes(r[0]) for r in rows]


def release_settled(conn: Connection) -> int:
    """Drop reservations of confirmed batches whose burn the mirror has seen; returns batches released."""
    row = conn.execute("SELECT release_settled()").fetchone()
    return int(row[0]) if row else 0


# --------------------------------------------------------------------------- batches


@dataclass(frozen=True)
class BatchItem:
    """One (payer, spender) of a batch, addresses as raw 20 bytes (checksumming costs a keccak each)."""

    payer: bytes
    spender: bytes
    amount: int


@dataclass(frozen=True)
class Batch:
    """A stored batch as a submit attempt needs it."""

    batch_id: bytes
    kind: str
    root: bytes
    receipt_count: int
    status: str
    attempts: int
    tx_hash: str | None
    nonce: int | None
    sent_age: float | None  # seconds since the last transaction went out
    items: tuple[BatchItem, ...]


def load_batch(conn: Connection, batch_id: bytes) -> Batch | None:
    row = conn.execute(
        "SELECT kind, receipts_root, receipt_count, status, attempts, tx_hash, nonce,"
        " extract(epoch FROM now() - submitted_at) FROM settlement_batches WHERE batch_id = %s",
        (batch_id,),
    ).fetchone()
    if row is None:
        return None
    items = conn.execute(
        "SELECT payer, spender, amount FROM settlement_items WHERE batch_id = %s ORDER BY payer, spender",
        (batch_id,),
    ).fetchall()
    kind, root, count, status, attempts, tx_hash, nonce, age = row
    return Batch(
        batch_id=batch_id,
        kind=str(kind),
        root=bytes(root),
        receipt_count=int(count),
        status=str(status),
        attempts=int(attempts),
        tx_hash=None if tx_hash is None else "0x" + bytes(tx_hash).hex(),
        nonce=None if nonce is None else int(nonce),
        sent_age=None if age is None else float(age),
        items=tuple(BatchItem(bytes(p), bytes(s), int(a)) for p, s, a in items),
    )


def _record_sent(conn: Connection, batch_id: bytes, tx_hash: str, nonce: int | None, action: str) -> None:
    raw = bytes(HexBytes(tx_hash))
    with conn.transaction():
        conn.execute(
            "UPDATE settlement_batches SET status = 'submitted', tx_hash = %s, nonce = %s,"
            " attempts = attempts + %s, submitted_at = now(), updated_at = now(), last_error = NULL"
            " WHERE batch_id = %s AND status <> 'confirmed'",
            (raw, nonce, 0 if action == "found" else 1, batch_id),
        )
        conn.execute(
            "INSERT INTO settlement_attempts (batch_id, action, tx_hash, nonce) VALUES (%s, %s, %s, %s)",
            (batch_id, action, raw, nonce),
        )


def touch_batch(conn: Connection, batch_id: bytes) -> None:
    """Note that an attempt is working on the batch: the sweeper leaves batches touched recently alone."""
    conn.execute("UPDATE settlement_batches SET updated_at = now() WHERE batch_id = %s AND status <> 'confirmed'",
                 (batch_id,))


def note_failure(db: Database, batch_id: bytes, exc: BaseException) -> None:
    """Record a failed attempt if the database answers (best effort: the caller re-raises anyway)."""
    log.warning("batch 0x%s: attempt failed, will retry: %s: %s", batch_id.hex(), exc.__class__.__name__, exc)
    try:
        _record_failure(db.conn(), batch_id, f"{exc.__class__.__name__}: {exc}")
    except psycopg.Error:
        db.discard()


def _record_failure(conn: Connection, batch_id: bytes, error: str) -> None:
    with conn.transaction():
        conn.execute(
            "UPDATE settlement_batches SET status = 'failed', last_error = %s, updated_at = now()"
            " WHERE batch_id = %s AND status <> 'confirmed'",
            (error[:2000], batch_id),
        )
        conn.execute(
            "INSERT INTO settlement_attempts (batch_id, action, error) VALUES (%s, 'failed', %s)",
            (batch_id, error[:2000]),
        )


# --------------------------------------------------------------------------- the chain side


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
def _chain_errors() -> Iterator[None]:
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
                with _chain_errors():
                    mined = self._find_or_send(batch)
                    self._await_confirmations(mined)
                    paid = self._paid_by_item(batch, mined)
            except SettlementPending as exc:
                touch_batch(conn, batch_id)
                log.info("batch 0x%s: %s", batch_id.hex(), exc)
                raise
            except (LedgerError, Web3RPCError) as exc:
                _record_failure(conn, batch_id, f"{exc.__class__.__name__}: {exc}")
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
        _record_sent(self.db.conn(), batch.batch_id, tx_hash, used, "sent" if nonce is None else "replaced")
        log.info("batch 0x%s: sent %s (nonce %d)", batch.batch_id.hex(), tx_hash, used)
        return self._wait_mined(batch, tx_hash, tx, used)

    def _settle_calldata(self, batch: Batch) -> HexStr:
        """settle(batchId, receiptsRoot, receiptCount, items), encoded straight from the raw values."""
        args = self.w3.codec.encode(
            ["bytes32", "bytes32", "uint256", "(address,address,uint256)[]"],
            [batch.batch_id, batch.root, batch.receipt_count, [(i.payer, i.spender, i.amount) for i in batch.items]],
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
                    _record_sent(self.db.conn(), batch.batch_id, mined.tx_hash, mined.nonce, "found")
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
        keys = sorted(paid)
        with conn.transaction():
            row = conn.execute(
                "SELECT confirm_batch(%s, %s, %s, %s, %s, %s, %s)",
                (batch.batch_id, bytes(HexBytes(mined.tx_hash)), mined.block, mined.gas_used,
                 [p for p, _s in keys], [s for _p, s in keys], [Decimal(paid[k]) for k in keys]),
            ).fetchone()
        short = sum(1 for item in batch.items if paid[(item.payer, item.spender)] < item.amount)
        log.info("batch 0x%s confirmed in block %d by %s (%d gas)%s%s", batch.batch_id.hex(), mined.block,
                 mined.tx_hash, mined.gas_used, f", {short} shortfalls" if short else "",
                 "" if row and row[0] else " (already confirmed)")


# --------------------------------------------------------------------------- debts


@dataclass(frozen=True)
class Debt:
    id: int
    payer: str
    spender: str
    batch_id: bytes
    owed: BaseUnits
    paid: BaseUnits
    created_at: datetime
    clearing_batch: bytes | None

    @property
    def outstanding(self) -> BaseUnits:
        return BaseUnits(self.owed - self.paid)


@dataclass(frozen=True)
class Suspension:
    account: str
    reason: str
    since: datetime


def outstanding_debts(conn: Connection, payer: str | None = None) -> list[Debt]:
    rows = conn.execute(
        "SELECT id, payer, spender, batch_id, owed, paid, created_at, clearing_batch FROM debts"
        " WHERE cleared_at IS NULL AND (%(payer)s::bytea IS NULL OR payer = %(payer)s::bytea) ORDER BY id",
        {"payer": None if payer is None else bytes.fromhex(to_checksum_address(payer)[2:])},
    ).fetchall()
    return [
        Debt(int(i), to_checksum_address(bytes(p)), to_checksum_address(bytes(s)), bytes(b), BaseUnits(int(o)),
             BaseUnits(int(pd)), at, None if cb is None else bytes(cb))
        for i, p, s, b, o, pd, at, cb in rows
    ]


def suspended_accounts(conn: Connection) -> list[Suspension]:
    rows = conn.execute("SELECT account, reason, since FROM suspended_accounts ORDER BY since").fetchall()
    return [Suspension(to_checksum_address(bytes(a)), str(r), s) for a, r, s in rows]


def create_debt_batch(conn: Connection, payer: str) -> bytes | None:
    """A `debt` batch settling every outstanding debt of `payer` (the pending one if it exists); None if none."""
    raw_payer = bytes.fromhex(to_checksum_address(payer)[2:])
    with conn.transaction():
        rows = conn.execute(
            "SELECT d.id, d.batch_id, d.spender, d.owed - d.paid, d.clearing_batch, b.status"
            " FROM debts d LEFT JOIN settlement_batches b ON b.batch_id = d.clearing_batch"
            " WHERE d.payer = %s AND d.cleared_at IS NULL ORDER BY d.id FOR UPDATE OF d",
            (raw_payer,),
        ).fetchall()
        if not rows:
            return None
        pending = {bytes(r[4]) for r in rows if r[4] is not None and r[5] != "confirmed"}
        if pending:
            return min(pending)
        # One leaf per debt: (the batch that recorded it, payer, spender, amount outstanding).
        leaves = [receipt_leaf(bytes(b), payer, _hex_address(bytes(s)), int(amount)) for _i, b, s, amount, *_ in rows]
        tree, batch_id = _tree_of(leaves)
        items: dict[bytes, list[int]] = {}
        for _i, _b, spender, amount, *_ in rows:
            entry = items.setdefault(bytes(spender), [0, 0])
            entry[0] += int(amount)
            entry[1] += 1
        conn.execute(
            "INSERT INTO settlement_batches (batch_id, kind, receipts_root, receipt_count, item_count, total)"
            " VALUES (%s, 'debt', %s, %s, %s, %s)",
            (batch_id, tree.root, len(rows), len(items), Decimal(sum(a for a, _n in items.values()))),
        )
        with conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO settlement_items (batch_id, payer, spender, amount, receipts) VALUES (%s, %s, %s, %s, %s)",
                [(batch_id, raw_payer, s, Decimal(a), n) for s, (a, n) in sorted(items.items())],
            )
            cur.executemany(
                "UPDATE debts SET clearing_batch = %s, clearing_proof = %s WHERE id = %s",
                [(batch_id, tree.proof(leaf), int(r[0])) for r, leaf in zip(rows, leaves, strict=True)],
            )
    return batch_id


@dataclass(frozen=True)
class Clearance:
    batch_id: bytes
    tx_hash: str
    block: int
    paid: BaseUnits
    owed: BaseUnits
    still_suspended: bool


def check_covered(ledger: Ledger, debts: Sequence[Debt]) -> None:
    """Raise DebtNotCovered unless the payer's balance (and each spender's allowance) covers the debts."""
    if not debts:
        return
    payer = debts[0].payer
    total = sum(d.outstanding for d in debts)
    balance = ledger.balance_of(payer)
    if balance < total:
        raise DebtNotCovered(f"{payer} owes {total} base units but holds {balance}; it must top up first")
    per_spender: dict[str, int] = {}
    for d in debts:
        if d.spender != payer:
            per_spender[d.spender] = per_spender.get(d.spender, 0) + d.outstanding
    for spender, owed in per_spender.items():
        allowance = ledger.allowance(payer, spender)
        if allowance < owed:
            raise DebtNotCovered(
                f"{payer} owes {owed} base units for {spender}'s usage but allows it only {allowance}; "
                "it must approve more first"
            )


def clear_debts(settler: Settler, payer: str, *, force: bool = False, timeout: float = 120.0) -> Clearance | None:
    """Settle `payer`'s outstanding debts on chain as a new batch and wait for it; None when it owes nothing.

    Unless `force`, refuses (DebtNotCovered) while the payer's balance or allowances fall short.
    The suspension is lifted by the confirmation when nothing remains owed.
    """
    conn = settler.db.conn()
    debts = outstanding_debts(conn, payer)
    if not debts:
        return None
    if not force:
        with _chain_errors():
            check_covered(settler.ledger, debts)
    batch_id = create_debt_batch(conn, payer)
    if batch_id is None:
        return None
    deadline = time.monotonic() + timeout
    delay = 0.1
    while True:
        try:
            if settler.settle(batch_id) == "confirmed":
                break
        except SettlementPending:
            pass
        if time.monotonic() > deadline:
            raise SettlementPending(f"debt batch 0x{batch_id.hex()} is not confirmed after {timeout:.0f} s; "
                                    "the settlement workers will finish it")
        time.sleep(delay)  # a worker holds the batch, or the transaction waits for confirmations
        delay = min(delay * 2, 1.0)
    row = conn.execute(
        "SELECT tx_hash, settled_block, paid, total FROM settlement_batches WHERE batch_id = %s", (batch_id,)
    ).fetchone()
    assert row is not None
    still = conn.execute(
        "SELECT EXISTS (SELECT 1 FROM suspended_accounts WHERE account = %s)",
        (bytes.fromhex(to_checksum_address(payer)[2:]),),
    ).fetchone()
    return Clearance(batch_id, "0x" + bytes(row[0]).hex(), int(row[1]), BaseUnits(int(row[2])),
                     BaseUnits(int(row[3])), bool(still and still[0]))


# --------------------------------------------------------------------------- per-process wiring


def open_settler(settings: SettlementSettings, db: Database) -> Settler:
    """The chain side for this process: the recorded deployment on the configured chain, the settler key."""
    from ledger.chain.connection import connect
    from ledger.chain.deployment import load_deployment
    from ledger.keys import settler_account

    w3 = connect(settings.effective_rpc_url)
    with _chain_errors():
        deployment = load_deployment(settings.state_dir, int(w3.eth.chain_id))
    ledger = Ledger(w3, deployment, timeout=settings.tx_timeout)
    return Settler(ledger, settler_account(settings), db, settings)
