"""What every chain follower shares (the balance mirror and the event indexer).

Both read the chain window by window into PostgreSQL, commit each window with a
cursor (block, hash, head), retry a window the chain or another follower moved
under them, and stop on a `threading.Event`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

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
