"""Real services for the test suite: Anvil, PostgreSQL and Redis, started like `sluice up` starts them.

Every fixture launches through `ledger.stack` (services, supervisor) on a free port and in a pytest
tmp dir, so tests exercise the same flags (zero gas, persisted state, unix
sockets) as the product. `DATABASE_URL` / `BROKER_URL` in the environment point
`postgres_url` / `redis_url` at external servers instead (CI with service
containers); the chain fixtures always start their own Anvil.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from ledger.bench.harness import proc_stats
from ledger.config import Settings
from ledger.db import migrate
from ledger.paths import StatePaths
from ledger.polling import poll_until
from ledger.stack.errors import PortInUse
from ledger.stack.probes import free_port
from ledger.stack.services import DATABASE, Service, anvil_binary, anvil_service, postgres_service, redis_service
from ledger.stack.supervisor import Stack

TEST_CHAIN_ID = 31337
# A port picked by the kernel can be taken by another process before Anvil binds it; then pick another.
_PORT_ATTEMPTS = 3


@contextmanager
def running(service: Service) -> Iterator[Service]:
    """Start one service, wait until it answers, stop it on exit."""
    stack = Stack([service])
    stack.start()
    try:
        yield service
    finally:
        stack.stop()


@contextmanager
def running_on_free_port(build: Callable[[int], Service]) -> Iterator[Service]:
    """Like `running`, for a service built for a port: retries with a new port if the first one got taken."""
    for attempt in range(_PORT_ATTEMPTS):
        service = build(free_port())
        try:
            stack = Stack([service])
            stack.start()
        except PortInUse:
            if attempt == _PORT_ATTEMPTS - 1:
                raise
            continue
        try:
            yield service
        finally:
            stack.stop()
        return


def anvil_at(state_dir: Path) -> Callable[[int], Service]:
    """Builds the embedded Anvil (zero gas, state persisted in `state_dir`) for a given port."""
    settings = Settings()
    binary = anvil_binary(settings)
    return lambda port: anvil_service(StatePaths(state_dir), port=port, chain_id=TEST_CHAIN_ID, binary=binary,
                                      block_time=settings.block_time)


@pytest.fixture(scope="session")
def anvil_rpc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """RPC URL of one zero-gas Anvil shared by the session (chain id 31337, embedded dev keys funded)."""
    with running_on_free_port(anvil_at(tmp_path_factory.mktemp("anvil"))) as service:
        assert service.url is not None
        yield service.url


@pytest.fixture
def fresh_anvil(tmp_path: Path) -> Iterator[str]:
    """RPC URL of an Anvil of this test's own (about 0.1 s to start), for tests that must see an empty chain."""
    with running_on_free_port(anvil_at(tmp_path / "anvil")) as service:
        assert service.url is not None
        yield service.url


@pytest.fixture(scope="session")
def postgres_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """URL of a migrated PostgreSQL database: DATABASE_URL when set, else an embedded server for the session."""
    external = Settings().database_url
    if external:
        migrate(external)
        yield external
        return
    with running(postgres_service(StatePaths(tmp_path_factory.mktemp("postgres")))) as service:
        assert service.url is not None
        migrate(service.url)
        yield service.url


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Celery broker URL: BROKER_URL when set, else an embedded Redis (`redis+socket://...`) for the session."""
    external = Settings().broker_url
    if external:
        yield external
        return
    with running(redis_service(StatePaths(tmp_path_factory.mktemp("redis")))) as service:
        assert service.url is not None
        yield service.url


class CrashablePostgres:
    """An embedded PostgreSQL of one test's own that the test can crash (SIGKILL) and start again on its data."""

    def __init__(self, state_dir: Path) -> None:
        self.service = postgres_service(StatePaths(state_dir))
        self.stack = Stack([self.service])
        self.stack.start()

    @property
    def url(self) -> str:
        assert self.service.url is not None
        return self.service.url

    def crash(self) -> None:
        """SIGKILL the postmaster and every backend at once (one process group: no clean shutdown, no last
        WAL flush), then wait until none of them is left."""
        group = self.stack.pid(DATABASE)  # the postmaster leads its own process group; backends are its children
        os.killpg(group, signal.SIGKILL)
        poll_until(lambda: not _live_members(group), 10, "every PostgreSQL process gone")

    def start(self) -> None:
        """Start it again on the same data (crash recovery replays the WAL), until it answers."""
        self.stack.restart(DATABASE)

    def close(self) -> None:
        self.stack.stop()


def _live_members(group: int) -> list[int]:
    """Processes of process group `group` that are not zombies (read from /proc)."""
    # The fields after "pid (comm) ": state, ppid, pgrp, ...
    return [process for process, fields in proc_stats() if int(fields[2]) == group and fields[0] != "Z"]
