"""Settlement workers announce themselves in PostgreSQL, for `sluice status`.

When a worker's consumer is ready (Celery's `worker_ready`), a daemon thread upserts its row in
`settlement_workers` (name, pid, pool size, whether it runs the beat) every `HEARTBEAT_S` seconds; a
warm shutdown (`worker_shutdown`) deletes it. A worker killed outright leaves a row whose heartbeat
ages: status shows it as stale after `STALE_S`, and rows silent for `FORGET_S` are dropped by the
next heartbeat of any worker. Reading presence costs status one query instead of a broker
broadcast that waits its whole timeout; an unreachable database only stops the announcements
(logged once), never the worker.
"""

from __future__ import annotations

import logging
import os
import threading
from typing import Any

from celery.signals import worker_ready, worker_shutdown

log = logging.getLogger(__name__)

HEARTBEAT_S = 2.0
STALE_S = 10.0
FORGET_S = 24 * 3600.0

UPSERT_SQL = """
INSERT INTO settlement_workers (name, pid, concurrency, beat) VALUES (%(name)s, %(pid)s, %(concurrency)s, %(beat)s)
ON CONFLICT (name) DO UPDATE SET pid = EXCLUDED.pid, concurrency = EXCLUDED.concurrency, beat = EXCLUDED.beat,
    heartbeat_at = clock_timestamp()
"""
FORGET_SQL = "DELETE FROM settlement_workers WHERE heartbeat_at < clock_timestamp() - make_interval(secs => %s)"
DELETE_SQL = "DELETE FROM settlement_workers WHERE name = %s"
# What `sluice status` reads: every announced worker with the age of its last heartbeat.
WORKERS_SQL = """
SELECT name, pid, concurrency, beat, extract(epoch FROM clock_timestamp() - heartbeat_at)
FROM settlement_workers ORDER BY name
"""


class Presence:
    """One worker's announcements: `start()` on ready, `stop()` on shutdown (deletes its row)."""

    def __init__(self, database_url: str, name: str, concurrency: int, beat: bool,
                 interval: float = HEARTBEAT_S) -> None:
        self.database_url = database_url
        self.row = {"name": name, "pid": os.getpid(), "concurrency": concurrency, "beat": beat}
        self.interval = interval
        self._stop = threading.Event()
        self._failing = False
        self._thread = threading.Thread(target=self._run, name="sluice-presence", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        import psycopg

        while not self._stop.is_set():
            try:
                with psycopg.connect(self.database_url, autocommit=True, connect_timeout=5) as conn:
                    while not self._stop.is_set():
                        conn.execute(UPSERT_SQL, self.row)
                        conn.execute(FORGET_SQL, (FORGET_S,))
                        if self._failing:
                            log.info("worker presence: announcing again in the database")
                            self._failing = False
                        self._stop.wait(self.interval)
            except psycopg.Error as exc:
                if not self._failing:
                    log.warning("worker presence: cannot announce in the database (%s); retrying", exc)
                    self._failing = True
                self._stop.wait(self.interval)

    def stop(self) -> None:
        import psycopg

        self._stop.set()
        self._thread.join(5)
        try:
            with psycopg.connect(self.database_url, autocommit=True, connect_timeout=5) as conn:
                conn.execute(DELETE_SQL, (self.row["name"],))
        except psycopg.Error as exc:
            log.warning("worker presence: could not withdraw %s (%s); it will show as stale", self.row["name"], exc)


_current: Presence | None = None


@worker_ready.connect  # type: ignore[untyped-decorator]
def _announce(sender: Any, **_kwargs: Any) -> None:
    """`sender` is the worker's consumer: its controller knows the pool size and whether it embeds the beat."""
    global _current
    from ledger.settlement.settings import get_settlement_settings

    controller = sender.controller
    _current = Presence(get_settlement_settings().effective_database_url, str(sender.hostname),
                        int(controller.concurrency), bool(getattr(controller, "beat", None)))
    _current.start()


@worker_shutdown.connect  # type: ignore[untyped-decorator]
def _withdraw(**_kwargs: Any) -> None:
    global _current
    if _current is not None:
        _current.stop()
        _current = None
