"""What every chain follower shares (the balance mirror and the event indexer).

Both read the chain window by window into PostgreSQL, commit each window with a
cursor (block, hash, head), retry a window the chain or another follower moved
under them, and stop on a `threading.Event`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

import psycopg
from eth_utils.crypto import keccak
from psycopg.rows import TupleRow

from ledger.errors import LedgerError

log = logging.getLogger(__name__)


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


def follow(stop: StopSignal, label: str, sync: Callable[[], FollowStatus], reset: Callable[[], None],
           synced: Callable[[FollowStatus], None], interval: float, max_backoff: float) -> None:
    """Call `sync` every `interval` seconds until `stop` is set, outliving every RPC and database failure.

    A window the chain or another follower moved is planned again at once; any other failure drops the
    connections (`reset`) and backs off exponentially up to `max_backoff`. `synced` sees each status.
    """
    failures = 0
    while not stop.is_set():
        try:
            status = sync()
        except (ChainMoved, CursorMoved) as exc:
            log.info("%s: %s; planning again", label, exc)
            continue
        except Exception as exc:  # the loop must outlive every RPC and database failure
            failures += 1
            reset()
            delay = min(max_backoff, interval * 2**failures)
            log.warning("%s failed (%d in a row), retrying in %.1f s: %s", label, failures, delay, exc,
                        exc_info=failures == 1)
            stop.wait(delay)
            continue
        synced(status)
        if failures:
            log.info("%s recovered at block %d after %d failures", label, status.block, failures)
        failures = 0
        stop.wait(interval)
