"""What every chain follower shares (the balance mirror and the event indexer).

Both read the chain window by window into PostgreSQL, commit each window with a
cursor (block, hash, head), retry a window the chain or another follower moved
under them, and stop on a `threading.Event`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

import psycopg
from eth_utils.crypto import keccak
from psycopg.rows import TupleRow

from ledger.errors import LedgerError


class ChainMoved(LedgerError):
    """The chain reorganised while a window was read; the window is dropped and planned again."""


class CursorMoved(LedgerError):
    """Another follower committed first; the window is planned again from its cursor."""


class StopSignal(Protocol):
    """What a follower's `run` waits on: `threading.Event` (set it from any thread)."""

    def is_set(self) -> bool: ...

    def wait(self, timeout: float | None = None) -> bool: ...


@dataclass(frozen=True)
class FollowStatus:
    """Where a follower stands: `block` is committed, `head` was the chain head when it last looked."""

    block: int
    head: int
    lag: int
    block_hash: bytes
    updated_at: datetime | None = None


@dataclass(frozen=True)
class Cursor:
    """The last block a follower committed, on which chain, with that block's hash."""

    chain_id: int
    block: int
    block_hash: bytes


class CursorTable:
    """A follower's one-row cursor table (`id = 1`) and the advisory lock its writers serialise on."""

    def __init__(self, table: str, lock_name: str) -> None:
        # One key per follower kind: windows of two followers of one kind never interleave.
        self.lock_key = int.from_bytes(keccak(text=lock_name)[:8], "big", signed=True)
        self._read = f"SELECT chain_id, block, block_hash FROM {table} WHERE id = 1".encode()
        self._lock_and_read = (
            "SELECT c.chain_id, c.block, c.block_hash FROM (SELECT pg_advisory_xact_lock(%s)) AS lock"
            f" LEFT JOIN {table} AS c ON c.id = 1"
        ).encode()
        self._status = f"SELECT block, head, block_hash, updated_at FROM {table} WHERE id = 1".encode()

    def read(self, conn: psycopg.Connection[TupleRow]) -> Cursor | None:
        row = conn.execute(self._read).fetchone()
        return None if row is None else Cursor(int(row[0]), int(row[1]), bytes(row[2]))

    def lock_and_read(self, conn: psycopg.Connection[TupleRow]) -> Cursor | None:
        """Take the follower's transaction lock and read the cursor, in one round trip."""
        row = conn.execute(self._lock_and_read, (self.lock_key,)).fetchone()
        if row is None or row[0] is None:
            return None
        return Cursor(int(row[0]), int(row[1]), bytes(row[2]))

    def status(self, conn: psycopg.Connection[Any]) -> FollowStatus | None:
        """The recorded position, read on the caller's connection."""
        row = conn.execute(self._status).fetchone()
        if row is None:
            return None
        block, head = int(row[0]), int(row[1])
        return FollowStatus(block, head, max(0, head - block), bytes(row[2]), row[3])
