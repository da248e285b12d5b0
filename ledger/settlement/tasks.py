"""The settlement tasks. They take batch ids, re-read everything from PostgreSQL and the chain,
are idempotent, and declare their retry policy here; the work itself is `ledger.settlement.settler`
and `ledger.settlement.store`. They are shared tasks: each binds to the app of the process that
runs it (`ledger.settlement.celery_app`), which also sets the submit task's back-off cap from
SLUICE_SETTLEMENT_RETRY_MAX.

- `cut_batches` (beat, every SLUICE_BATCH_INTERVAL; and every FULL_BATCH_POLL_MAX_S with
  `full_only` to cut as soon as SLUICE_BATCH_MAX_ITEMS (payer, spender) pairs wait): releases reservations the mirror
  has caught up with, cuts batches, enqueues one `submit_batch` per batch after the cut committed,
  and re-enqueues batches whose task was lost (killed worker, broker failure).
- `submit_batch`: sends, replaces or finds the batch's transaction and confirms it.
"""

from __future__ import annotations

import logging
import os
import threading

import psycopg
import requests
from celery import shared_task
from web3.exceptions import Web3RPCError

from ledger.errors import LedgerError
from ledger.settlement.celery_app import CUT_TASK, SUBMIT_TASK
from ledger.settlement.settings import SettlementSettings, get_settlement_settings
from ledger.settlement.settler import Settler, open_settler
from ledger.settlement.store import (
    Database,
    cut_batch,
    note_failure,
    open_batches,
    release_settled,
    sweep_stale,
    waiting_pairs,
)

log = logging.getLogger(__name__)

# Batches one cut task may cut before it yields the worker (the next tick continues).
MAX_BATCHES_PER_CUT = 50
# Retries of one submit before it gives up; the sweeper enqueues the batch again after that.
SUBMIT_MAX_RETRIES = 60
# Chain outages, reverts (e.g. a paused token), database restarts, not-yet-mined transactions.
RETRYABLE = (LedgerError, Web3RPCError, psycopg.OperationalError, requests.RequestException)


class _Process:
    """What one worker process opens once: its database connections and, once the chain answers, its settler."""

    def __init__(self, settings: SettlementSettings) -> None:
        self.settings = settings
        self.db = Database(settings.effective_database_url)
        self._settler: Settler | None = None
        self._lock = threading.Lock()

    def settler(self) -> Settler:
        with self._lock:
            if self._settler is None:
                self._settler = open_settler(self.settings, self.db)
            return self._settler


_process: _Process | None = None
_process_pid = 0
_process_lock = threading.Lock()


def process() -> _Process:
    """This process's resources; a forked pool child opens its own instead of sharing its parent's sockets."""
    global _process, _process_pid
    with _process_lock:
        if _process is None or _process_pid != os.getpid():
            _process = _Process(get_settlement_settings())
            _process_pid = os.getpid()
        return _process


# The next beat tick is this task's retry: it never retries itself.
@shared_task(name=CUT_TASK, max_retries=0)  # type: ignore[untyped-decorator]
def cut_batches(full_only: bool = False) -> int:
    """Cut every waiting record into batches (only full ones with `full_only`); returns batches cut."""
    proc = process()
    settings = proc.settings
    cut = 0
    try:
        conn = proc.db.conn()
        if not full_only:
            release_settled(conn)
        room = settings.settlement_max_open - open_batches(conn)
        while cut < min(MAX_BATCHES_PER_CUT, room):
            if full_only and waiting_pairs(conn, settings.batch_max_items) < settings.batch_max_items:
                break
            batch = cut_batch(conn, settings.batch_max, settings.batch_max_items)
            if batch is None:
                break
            submit_batch.delay(batch.batch_id.hex())  # the cut is committed: the task can never outrun it
            cut += 1
            if batch.items < settings.batch_max_items and batch.receipts < settings.batch_max:
                break  # everything waiting went into it
        if not full_only:
            for batch_id in sweep_stale(conn, settings.settlement_sweep):
                log.info("batch 0x%s untouched for %.0f s: enqueued again", batch_id.hex(), settings.settlement_sweep)
                submit_batch.delay(batch_id.hex())
    except psycopg.OperationalError:
        proc.db.discard()
        raise
    return cut


# The back-off cap (retry_backoff_max) is SLUICE_SETTLEMENT_RETRY_MAX, set by the app's task annotations.
@shared_task(  # type: ignore[untyped-decorator]
    name=SUBMIT_TASK,
    autoretry_for=RETRYABLE,
    retry_backoff=1,
    retry_jitter=True,
    max_retries=SUBMIT_MAX_RETRIES,
)
def submit_batch(batch_id: str) -> str:
    """Settle batch `batch_id` (hex): 'confirmed', or 'busy' when another worker holds it; raises to retry."""
    proc = process()
    raw = bytes.fromhex(batch_id.removeprefix("0x"))
    try:
        settler = proc.settler()
    except RETRYABLE as exc:  # the chain or the key is not there yet
        note_failure(proc.db, raw, exc)
        raise
    try:
        return settler.settle(raw)
    except psycopg.OperationalError:
        proc.db.discard()
        raise
