"""One chain follower for every service process on a database.

Each process runs a `SharedFollower` thread. The one holding the session advisory lock
`sluice:chain-follower` is the follower: it syncs its jobs (the balance mirror, the event indexer)
once per new block (`ledger.followers.heads`), and after each sync, and at least every
`heartbeat_seconds`, it NOTIFYs `sluice_chain_follow` with where the jobs stand. Every other
process LISTENs, takes those figures as its own jobs' `last_status`, and tries the lock once per
`heartbeat_seconds`.

- A follower that dies (SIGKILL included) ends its session, which releases the lock: the next try
  of another process takes over, within about `heartbeat_seconds`.
- A follower that hangs keeps its lock but stops notifying: the others' `last_synced` ages, and
  readers that bound how stale the mirror may be (the service: 5 s) read the chain directly.
- A follower whose database connection fails steps down and competes for the lock again.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Sequence
from typing import Protocol

import psycopg
from eth_utils.crypto import keccak
from psycopg.rows import TupleRow

from ledger.followers.follower import ChainMoved, CursorMoved, FollowStatus, StopSignal
from ledger.followers.heads import Heads

log = logging.getLogger(__name__)

LOCK_NAME = "sluice:chain-follower"
CHANNEL = "sluice_chain_follow"
LOCK_KEY = int.from_bytes(keccak(text=LOCK_NAME)[:8], "big", signed=True)


class Job(Protocol):
    """A follower of its own tables (ChainMirror, ChainIndexer)."""

    last_status: FollowStatus | None
    last_synced: float

    def sync_once(self) -> FollowStatus: ...

    def close(self) -> None: ...


class SharedFollower:
    """Follows the chain for `jobs` (named by `names`) in whichever process holds the lock."""

    def __init__(self, db_url: str, heads: Heads, jobs: Sequence[Job], names: Sequence[str], *,
                 heartbeat_seconds: float = 1.0, full_sync_seconds: float = 5.0, max_backoff: float = 10.0) -> None:
        if len(jobs) != len(names):
            raise ValueError("one name per job")
        self.db_url = db_url
        self.heads = heads
        self.jobs = dict(zip(names, jobs, strict=True))
        self.heartbeat_seconds = heartbeat_seconds
        self.full_sync_seconds = full_sync_seconds
        self.max_backoff = max_backoff
        self.is_follower = False
        self.follower_pid: int | None = None  # the pid of the process that last notified (or ours)
        self.took_over_at: float | None = None  # monotonic time this process last became the follower
        self._conn: psycopg.Connection[TupleRow] | None = None
        self._failures = 0

    @property
    def head(self) -> int | None:
        """The newest chain head the follower reported (or saw, in the follower process)."""
        heads = [job.last_status.head for job in self.jobs.values() if job.last_status is not None]
        if self.is_follower and self.heads.head is not None:
            heads.append(self.heads.head)
        return max(heads, default=None)

    # -- the thread ----------------------------------------------------------------------------
    def spawn(self, stop: threading.Event) -> threading.Thread:
        thread = threading.Thread(target=self.run, args=(stop,), name="chain-follower", daemon=True)
        thread.start()
        return thread

    def run(self, stop: StopSignal) -> None:
        """Stand by or follow until `stop` is set, outliving every database and chain failure."""
        failures = 0
        try:
            while not stop.is_set():
                try:
                    self._stand_by(stop)
                    if not stop.is_set():
                        self._follow(stop)
                    failures = 0
                except psycopg.Error as exc:  # the lock's connection: step down, compete again
                    failures += 1
                    self._step_down()
                    delay = min(self.max_backoff, 0.5 * 2**failures)
                    log.warning("chain follower: database failed (%s); retrying in %.1f s", exc, delay)
                    stop.wait(delay)
        finally:
            self._step_down()
            self.heads.close()
            for job in self.jobs.values():
                job.close()

    # -- standing by ---------------------------------------------------------------------------
    def _stand_by(self, stop: StopSignal) -> None:
        """LISTEN and take the follower's figures until the lock is ours (returns) or `stop` is set."""
        conn = self._connect()
        conn.execute(f"LISTEN {CHANNEL}".encode())
        while not stop.is_set():
            if conn.execute("SELECT pg_try_advisory_lock(%s)", (LOCK_KEY,)).fetchone() == (True,):
                conn.execute(f"UNLISTEN {CHANNEL}".encode())
                return
            for notify in conn.notifies(timeout=self.heartbeat_seconds, stop_after=64):
                self._take(notify.payload)
                if stop.is_set():
                    return

    def _take(self, payload: str) -> None:
        try:
            message = json.loads(payload)
            pid = int(message["pid"])
            figures = {name: message["jobs"].get(name) for name in self.jobs}
        except (ValueError, KeyError, TypeError):
            log.warning("chain follower: ignoring a malformed notification %r", payload[:200])
            return
        now = time.monotonic()
        self.follower_pid = pid
        for name, job in self.jobs.items():
            figure = figures[name]
            if figure is None:
                continue
            block, head, block_hash = int(figure[0]), int(figure[1]), bytes.fromhex(figure[2])
            job.last_status = FollowStatus(block, head, max(0, head - block), block_hash)
            job.last_synced = now

    # -- following -----------------------------------------------------------------------------
    def _follow(self, stop: StopSignal) -> None:
        """Sync the jobs once per new block and notify, until `stop` is set (the lock is held)."""
        self.is_follower, self.follower_pid, self.took_over_at = True, os.getpid(), time.monotonic()
        log.info("chain follower: this process (pid %d) follows the chain", os.getpid())
        self.heads.start()
        self._sync_all(stop)
        self._notify()
        last_full = time.monotonic()
        while not stop.is_set():
            try:
                head = self.heads.wait(self.heartbeat_seconds)
            except Exception as exc:  # the chain is away: the jobs' figures age, readers read the chain
                log.warning("chain follower: cannot read the chain head: %s", exc)
                stop.wait(min(self.max_backoff, self.heartbeat_seconds * 2))
                continue
            if stop.is_set():
                return
            if head is not None or self._failures or time.monotonic() - last_full >= self.full_sync_seconds:
                self._sync_all(stop)
                last_full = time.monotonic()
            else:
                # The head source saw no new block since the last sync: the figures are still current.
                now = time.monotonic()
                for job in self.jobs.values():
                    if job.last_status is not None and self._failures == 0:
                        job.last_synced = now
            self._notify()

    def _sync_all(self, stop: StopSignal) -> None:
        ok = True
        for name, job in self.jobs.items():
            for _attempt in range(3):
                try:
                    status = job.sync_once()
                except (ChainMoved, CursorMoved) as exc:
                    log.info("chain follower: %s: %s; planning again", name, exc)
                    continue
                except Exception as exc:  # the loop must outlive every RPC and database failure
                    ok = False
                    job.close()
                    log.warning("chain follower: %s sync failed (%d in a row): %s", name, self._failures + 1, exc,
                                exc_info=self._failures == 0)
                    break
                job.last_status, job.last_synced = status, time.monotonic()
                break
        self._failures = 0 if ok else self._failures + 1
        if not ok:
            # Back off without notifying: readers see the figures age.
            stop.wait(min(self.max_backoff, 0.1 * 2**self._failures))

    def _notify(self) -> None:
        if self._failures:
            return
        jobs: dict[str, list[object] | None] = {}
        for name, job in self.jobs.items():
            s = job.last_status
            jobs[name] = None if s is None else [s.block, s.head, s.block_hash.hex()]
        payload = json.dumps({"pid": os.getpid(), "jobs": jobs}, separators=(",", ":"))
        conn = self._conn
        assert conn is not None
        conn.execute("SELECT pg_notify(%s, %s)", (CHANNEL, payload))

    # -- plumbing ------------------------------------------------------------------------------
    def _connect(self) -> psycopg.Connection[TupleRow]:
        if self._conn is None or self._conn.closed or self._conn.broken:
            self._conn = psycopg.connect(self.db_url, autocommit=True, connect_timeout=10,
                                         application_name=f"sluice chain follower {os.getpid()}")
        return self._conn

    def _step_down(self) -> None:
        self.is_follower = False
        if self._conn is not None:
            self._conn.close()  # ends the session: the lock, if held, is released
            self._conn = None
