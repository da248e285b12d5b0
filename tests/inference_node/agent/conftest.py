"""Fixtures of the agent tests: the servers each test module starts once."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from inference_node.protocol import DISPATCH_INFO_PATH
from tests.inference_node.agent.support import (
    HTTP,
    FakeService,
    RunningServer,
    agent_server,
    simulator_server,
    uvicorn_server,
)


@pytest.fixture(scope="session", autouse=True)
def _close_http() -> Iterator[None]:
    """The pooled client is shared by every module here, so it closes once, at the end."""
    yield
    HTTP.close()


@pytest.fixture(scope="module")
def sim() -> Iterator[RunningServer]:
    server = simulator_server(ttft_seconds=0, per_token_seconds=0).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def slow_sim() -> Iterator[RunningServer]:
    """One sequence at a time (the next one waits), 0.05 s to the first token and 0.02 s per token."""
    server = simulator_server(ttft_seconds=0.05, per_token_seconds=0.02, max_num_seqs=1).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def service_server() -> Iterator[tuple[FakeService, str]]:
    fake = FakeService()
    server = RunningServer(lambda url: uvicorn_server(fake.app, url), ready_path=DISPATCH_INFO_PATH).start()
    yield fake, server.base_url
    server.stop()


@pytest.fixture(scope="module")
def agent(sim: RunningServer, service_server: tuple[FakeService, str]) -> Iterator[RunningServer]:
    server = agent_server(sim.base_url, service_server[1]).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def slow_agent(slow_sim: RunningServer, service_server: tuple[FakeService, str]) -> Iterator[RunningServer]:
    server = agent_server(slow_sim.base_url, service_server[1]).start()
    yield server
    server.stop()


@pytest.fixture
def recorder(service_server: tuple[FakeService, str]) -> FakeService:
    return service_server[0]


@pytest.fixture
def faulty(sim: RunningServer) -> Iterator[RunningServer]:
    yield sim
    HTTP.post(sim.base_url + "/sim/faults", json={"mode": "none"})
