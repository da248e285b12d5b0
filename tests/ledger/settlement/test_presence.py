"""Workers announce themselves in PostgreSQL and `sluice status` reads them (ledger.settlement.presence)."""

from __future__ import annotations

import logging
import os
import uuid

import psycopg
import pytest

from ledger.settlement.presence import Presence
from ledger.stack.operations import WORKER_STALE_S, database_view
from tests.support.polling import wait_until


def _workers(url: str, name: str) -> list[dict[str, object]]:
    view = database_view(url)
    assert view is not None
    return [w for w in view[2] if w["name"] == name]


def test_a_worker_is_announced_while_it_runs_and_withdrawn_when_it_stops(postgres_url: str) -> None:
    name = f"sluice-beat-{uuid.uuid4().hex[:8]}@test"
    presence = Presence(postgres_url, name, concurrency=3, beat=True, interval=0.05)
    presence.start()
    try:
        found = wait_until(lambda: _workers(postgres_url, name), 10, "the worker's row")
        assert [(w["pid"], w["concurrency"], w["beat"], w["up"]) for w in found] == [(os.getpid(), 3, True, True)]
        with psycopg.connect(postgres_url, autocommit=True) as conn:
            first = conn.execute("SELECT heartbeat_at FROM settlement_workers WHERE name = %s", (name,)).fetchone()
        # the heartbeat moves on while the worker runs
        wait_until(lambda: _heartbeat(postgres_url, name) != first, 10, "a later heartbeat")
    finally:
        presence.stop()
    assert _workers(postgres_url, name) == []


def _heartbeat(url: str, name: str) -> object:
    with psycopg.connect(url, autocommit=True) as conn:
        return conn.execute("SELECT heartbeat_at FROM settlement_workers WHERE name = %s", (name,)).fetchone()


def test_a_worker_that_stopped_announcing_shows_as_stale(postgres_url: str) -> None:
    name = f"sluice-{uuid.uuid4().hex[:8]}@killed"
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute("INSERT INTO settlement_workers (name, pid, concurrency, beat, heartbeat_at) "
                     "VALUES (%s, 4242, 2, false, clock_timestamp() - make_interval(secs => %s))",
                     (name, WORKER_STALE_S + 20))
    try:
        [worker] = _workers(postgres_url, name)
        assert (worker["pid"], worker["concurrency"], worker["beat"], worker["up"]) == (4242, 2, False, False)
        assert isinstance(worker["heartbeat_age_seconds"], float)
        assert WORKER_STALE_S + 20 <= worker["heartbeat_age_seconds"] < WORKER_STALE_S + 80
    finally:
        with psycopg.connect(postgres_url, autocommit=True) as conn:
            conn.execute("DELETE FROM settlement_workers WHERE name = %s", (name,))


def test_rows_silent_for_a_day_are_forgotten_by_the_next_heartbeat(postgres_url: str) -> None:
    gone, announcing = f"sluice-{uuid.uuid4().hex[:8]}@gone", f"sluice-{uuid.uuid4().hex[:8]}@live"
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute("INSERT INTO settlement_workers (name, pid, concurrency, beat, heartbeat_at) "
                     "VALUES (%s, 1, 1, false, clock_timestamp() - interval '25 hours')", (gone,))
    presence = Presence(postgres_url, announcing, concurrency=1, beat=False, interval=0.05)
    presence.start()
    try:
        wait_until(lambda: _workers(postgres_url, announcing), 10, "the live worker's row")
        wait_until(lambda: not _workers(postgres_url, gone), 10, "the day-old row dropped")
    finally:
        presence.stop()


def test_a_database_that_is_down_only_stops_the_announcements(caplog: pytest.LogCaptureFixture) -> None:
    down = "postgresql://postgres@127.0.0.1:1/none?connect_timeout=1"
    presence = Presence(down, "sluice-1@nowhere", concurrency=1, beat=False, interval=0.05)
    with caplog.at_level(logging.WARNING, logger="ledger.settlement.presence"):
        presence.start()
        wait_until(lambda: "cannot announce in the database" in caplog.text, 10, "the warning")
        presence.stop()  # returns: the worker's shutdown is never held up
    assert caplog.text.count("cannot announce in the database") == 1  # said once, not every retry
    assert "could not withdraw sluice-1@nowhere" in caplog.text
    assert database_view(down) is None
