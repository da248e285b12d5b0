"""The settlement tables of migration 0003 and every statement on them.

`settlement_outbox`, `settlement_batches`, `settlement_items`, `settlement_attempts`, `debts` (and
`suspended_accounts`, migration 0002) are read and written here only: the cut that claims outbox
rows into a batch, the batch rows a submit attempt reads and records its steps in, the sweeper,
the confirmation (`confirm_batch`, SQL) and the release behind the mirror (`release_settled`,
SQL), and the debts a `Shortfall` leaves. The chain side, the state machine and how the two
together settle every record exactly once are `ledger.settlement.settler`.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

import psycopg
from eth_utils.address import to_checksum_address
from eth_utils.crypto import keccak
from hexbytes import HexBytes
from psycopg.rows import TupleRow

from ledger.errors import SettlementMismatch
from ledger.protocol.merkle import MerkleTree, build_tree, receipt_leaf
from ledger.units import BaseUnits

log = logging.getLogger(__name__)

Connection = psycopg.Connection[TupleRow]

# Namespace of the per-batch advisory locks (pg_try_advisory_lock(int4, int4)).
_LOCK_CLASS = int.from_bytes(keccak(text="sluice:settlement-batch")[:4], "big", signed=True)


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


def tree_of(leaves: Sequence[bytes]) -> tuple[MerkleTree, bytes]:
    """A batch's receipts tree and its id, keccak256(receiptsRoot) as the contract derives it."""
    tree = build_tree(leaves)
    return tree, keccak(tree.root)


def open_batches(conn: Connection) -> int:
    """Batches cut and not yet confirmed."""
    row = conn.execute("SELECT count(*) FROM settlement_batches WHERE status <> 'confirmed'").fetchone()
    return int(row[0]) if row else 0


def waiting_pairs(conn: Connection, limit: int) -> int:
    """How many (payer, spender) pairs have usage records waiting in the outbox, counting at most `limit`."""
    row = conn.execute(
        "SELECT count(*) FROM (SELECT DISTINCT u.payer, u.spender FROM settlement_outbox o"
        " JOIN usage_records u ON u.job_id = o.job_id LIMIT %s) waiting", (limit,)
    ).fetchone()
    return int(row[0]) if row else 0


def cut_batch(conn: Connection, max_records: int, max_items: int) -> CutBatch | None:
    """Claim waiting usage records into one new batch (one transaction); None when nothing waits."""
    with conn.transaction():
        rows = conn.execute(CLAIM_SQL, {"max_records": max_records, "max_items": max_items}).fetchall()
        if not rows:
            return None
        leaves = [receipt_leaf(bytes(job), bytes(p), bytes(s), int(cost)) for _id, job, p, s, cost in rows]
        tree, batch_id = tree_of(leaves)
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


def record_sent(conn: Connection, batch_id: bytes, tx_hash: str, nonce: int | None, action: str) -> None:
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
        record_failure(db.conn(), batch_id, f"{exc.__class__.__name__}: {exc}")
    except psycopg.Error:
        db.discard()


def record_failure(conn: Connection, batch_id: bytes, error: str) -> None:
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


def confirm_batch(conn: Connection, batch_id: bytes, tx_hash: str, block: int, gas_used: int,
                  paid: dict[tuple[bytes, bytes], int]) -> bool:
    """Record the mined settlement and what each (payer, spender) paid; False when it was already confirmed."""
    keys = sorted(paid)
    with conn.transaction():
        row = conn.execute(
            "SELECT confirm_batch(%s, %s, %s, %s, %s, %s, %s)",
            (batch_id, bytes(HexBytes(tx_hash)), block, gas_used, [p for p, _s in keys], [s for _p, s in keys],
             [Decimal(paid[k]) for k in keys]),
        ).fetchone()
    return bool(row and row[0])


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
        leaves = [receipt_leaf(bytes(b), payer, bytes(s), int(amount)) for _i, b, s, amount, *_ in rows]
        tree, batch_id = tree_of(leaves)
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
class SettledFigures:
    """What a confirmed batch's transaction did: where it was mined, what it paid of what it owed."""

    tx_hash: str
    block: int
    paid: BaseUnits
    total: BaseUnits


def settled_figures(conn: Connection, batch_id: bytes) -> SettledFigures:
    """The recorded outcome of a confirmed batch; SettlementMismatch when it has none."""
    row = conn.execute(
        "SELECT tx_hash, settled_block, paid, total FROM settlement_batches WHERE batch_id = %s", (batch_id,)
    ).fetchone()
    if row is None or row[0] is None:
        raise SettlementMismatch(f"batch 0x{batch_id.hex()} has no recorded settlement")
    return SettledFigures("0x" + bytes(row[0]).hex(), int(row[1]), BaseUnits(int(row[2])), BaseUnits(int(row[3])))


def is_suspended(conn: Connection, account: str) -> bool:
    row = conn.execute(
        "SELECT EXISTS (SELECT 1 FROM suspended_accounts WHERE account = %s)",
        (bytes.fromhex(to_checksum_address(account)[2:]),),
    ).fetchone()
    return bool(row and row[0])
