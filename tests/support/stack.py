"""A whole Sluice deployment for the redemption tests, run the way `sluice up` runs it.

One Anvil, a fresh database on the session PostgreSQL, the contracts deployed,
then the application services of `ledger.stack.apps` — the redemption service
and two simulated nodes (vLLM-API simulator + node agent each) — as real child
processes on free ports. Tests talk to them over HTTP with signed calls.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit
from uuid import uuid4

import httpx
import psycopg
import pytest
from eth_account import Account
from eth_account.signers.local import LocalAccount

from ledger.chain.client import Ledger
from ledger.chain.connection import connect
from ledger.chain.deploy import deploy_all
from ledger.chain.deployment import Deployment, save_deployment
from ledger.config import Settings
from ledger.db import migrate
from ledger.keys import embedded_account
from ledger.paths import StatePaths
from ledger.polling import poll_until
from ledger.stack.apps import EMBEDDED_NODES, EmbeddedNode, api_service, node_services, register_embedded_nodes
from ledger.stack.probes import free_port, free_port_run
from ledger.stack.services import NODE_PREFIX, Service, anvil_binary, anvil_service, redis_service
from ledger.stack.supervisor import Stack
from ledger.units import ONE_TOKEN
from tests.support import escrow
from tests.support.settlement import WorkerProcess

SMALL_MODEL = "meta-llama/Llama-3.1-8B-Instruct"
LARGE_MODEL = "Qwen/Qwen2.5-72B-Instruct"
# Tests want failures quickly: a node that does not answer in 3 s is skipped.
PORTAL_ORIGIN = "http://portal.sluice.test:5173"  # the one browser origin the test service allows
SERVICE_ENV = {
    "SLUICE_CORS_ORIGINS": PORTAL_ORIGIN,
    "SLUICE_NODE_TIMEOUT_SECONDS": "3",
    "SLUICE_NODE_STALE_SECONDS": "6",
    "SLUICE_MIRROR_MAX_LAG_BLOCKS": "0",
}


def with_database(url: str, name: str) -> str:
    return urlunsplit(urlsplit(url)._replace(path=f"/{name}"))


@dataclass
class Deployed:
    settings: Settings
    deployment: Deployment
    ledger: Ledger
    api: str
    db_url: str
    stack: Stack
    api_svc: Service
    node_svcs: list[Service]
    worker: WorkerProcess | None = None

    @property
    def operator(self) -> LocalAccount:
        return embedded_account(0)

    @functools.cached_property
    def auditor(self) -> LocalAccount:
        """A key holding AUDITOR_ROLE, for the signed account reads the tests look at."""
        key: LocalAccount = Account.create()
        self.ledger.grant_role(self.operator, "AUDITOR_ROLE", key.address)
        return key

    def budget(self, payer: str, spender: str | None = None) -> httpx.Response:
        """`/v1/budget` read by the auditor key (account reads are signed)."""
        from redemption.sdk import reader_auth

        params = {"payer": payer, **({"spender": spender} if spender else {})}
        return httpx.get(self.api + "/v1/budget", params=params, timeout=10, auth=reader_auth(self.auditor))

    def sim_url(self, node: str) -> str:
        svc = next(s for s in self.node_svcs if s.name.endswith(f"vllm-sim-{node}"))
        assert svc.url is not None
        return svc.url

    def set_fault(self, node: str, **plan: Any) -> None:
        response = httpx.post(self.sim_url(node) + "/sim/faults", json=plan, timeout=5)
        response.raise_for_status()

    def clear_faults(self) -> None:
        for node in EMBEDDED_NODES:
            self.set_fault(node.name, mode="none")

    def sql(self, query: str, *params: Any) -> list[tuple[Any, ...]]:
        with psycopg.connect(self.db_url, autocommit=True) as conn:
            return conn.execute(query.encode(), params).fetchall()  # type: ignore[arg-type]

    def add_replica(self, **env: str) -> str:
        """Start one more redemption service on the same database and chain; returns its URL."""
        settings = self.settings.model_copy(update={"api_port": free_port()})
        replica = api_service(settings, self.deployment.to_json())
        assert replica.launch is not None and replica.launch.env is not None
        replica = dataclasses.replace(
            replica, name=f"{replica.name}-{settings.api_port}",
            launch=dataclasses.replace(replica.launch, env={**replica.launch.env, **SERVICE_ENV, **env}))
        self.stack.start_services([replica])
        assert replica.url is not None
        poll_until(lambda: httpx.get(str(replica.url) + "/health", timeout=2).json()["nodes"] >= len(EMBEDDED_NODES),
                   30, "the replica seeing the nodes")
        return replica.url

    def restart_api(self) -> None:
        """Stop and start the redemption service process (the database keeps its state)."""
        self.stack.restart(self.api_svc.name)
        self.wait_for_nodes(len(EMBEDDED_NODES))

    def wait_for_nodes(self, count: int, timeout: float = 30) -> None:
        poll_until(lambda: httpx.get(self.api + "/health", timeout=2).json()["nodes"] >= count, timeout,
                   f"{count} nodes registered with the service")

    def fund(self, tokens: int = 100, *, allowlist: bool = True) -> LocalAccount:
        """A new enterprise with `tokens` compute tokens in its escrow account."""
        enterprise: LocalAccount = Account.create()
        if allowlist:
            self.ledger.set_allowlisted(self.operator, enterprise.address, True)
            if tokens:
                escrow.deposit(self.ledger, self.operator, enterprise, tokens * ONE_TOKEN)
        return enterprise

    def developer(self, enterprise: LocalAccount, budget: int) -> LocalAccount:
        """A new developer key with a budget of `budget` base units from `enterprise`'s escrow."""
        dev: LocalAccount = Account.create()
        escrow.set_budget(self.ledger, enterprise, dev.address, budget)
        return dev

    def wait_rates(self, model: str, input_rate: str) -> None:
        """Until the service's model list shows `model` at `input_rate`."""
        def shown() -> bool:
            cards = httpx.get(self.api + "/v1/models", timeout=5).json()["data"]
            return any(c["id"] == model and c["sluice"]["input_rate"] == input_rate for c in cards)

        poll_until(shown, 20, f"the service pricing {model} at input rate {input_rate}")

    def wait_mirrored(self) -> None:
        """Until the mirror has seen the chain head."""
        head = self.ledger.w3.eth.block_number
        poll_until(lambda: bool(self.sql("SELECT 1 FROM mirror_cursor WHERE block >= %s", head)), 20,
                   f"the mirror reaching block {head}")


NodeServices = Callable[[Settings, dict[str, Any]], list[Service]]


def settlement_env(settings: Settings, broker_url: str) -> dict[str, str]:
    """The environment of a settlement worker for this deployment: quick batches, the embedded settler key."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLUICE_") and k not in
           ("RPC_URL", "DATABASE_URL", "BROKER_URL")}
    env.update({
        "SLUICE_HOME": str(settings.home), "RPC_URL": settings.effective_rpc_url,
        "DATABASE_URL": settings.database_url or "", "BROKER_URL": broker_url, "SLUICE_BATCH_INTERVAL": "0.5",
        "SLUICE_SETTLER_KEY": "0x" + bytes(embedded_account(1).key).hex(), "SLUICE_WORKER_METRICS_PORT": "0",
        "SLUICE_SETTLEMENT_SWEEP": "2", "SLUICE_SETTLEMENT_RETRY_MAX": "1", "SLUICE_SETTLEMENT_WAIT": "3",
        "PYTHONUNBUFFERED": "1",
    })
    return env


@contextmanager
def deployment(postgres_url: str, home: Path, *, models: str | None = None,
               nodes: NodeServices = node_services, service_env: dict[str, str] | None = None,
               settlement: bool = False,
               registered: tuple[EmbeddedNode, ...] = EMBEDDED_NODES) -> Iterator[Deployed]:
    """A whole deployment, stopped and its database dropped on exit.

    `models` is the rate card (default: Settings'), `nodes` builds the node services from the settings and
    the deployment record (default: the embedded simulated nodes), `service_env` adds to the service's
    environment; `settlement` also runs a Redis broker and a settlement worker with its beat.
    """
    chain_port = free_port()
    chain = anvil_service(StatePaths(home), port=chain_port, chain_id=31337,
                          binary=anvil_binary(Settings(home=home)), block_time=Settings().block_time)
    name = f"redemption_{uuid4().hex[:10]}"
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}".encode())
    db_url = with_database(postgres_url, name)
    migrate(db_url)
    stack = Stack([chain])
    stack.start()
    d: Deployed | None = None
    try:
        rate_card = {} if models is None else {"models": models}
        settings = Settings(home=home, rpc_url=f"http://127.0.0.1:{chain_port}", database_url=db_url,
                            api_port=free_port(), node_base_port=free_port_run(2 * len(EMBEDDED_NODES)), **rate_card)
        w3 = connect(settings.effective_rpc_url)
        deployment = deploy_all(settings, w3, embedded_account(0), embedded_account(1))
        save_deployment(settings.state_dir, deployment)
        record = deployment.to_json()
        register_embedded_nodes(settings, record, registered)  # as `sluice up` does: only these nodes serve
        api = api_service(settings, record)
        assert api.launch is not None and api.launch.env is not None
        env = {**api.launch.env, **SERVICE_ENV, **(service_env or {})}
        api = dataclasses.replace(api, launch=dataclasses.replace(api.launch, env=env))
        node_svcs = nodes(settings, record)
        stack.start_services([api, *node_svcs])
        assert api.url is not None
        d = Deployed(settings, deployment, Ledger(w3, deployment, timeout=30), api.url, db_url, stack, api, node_svcs)
        d.wait_for_nodes(sum(1 for svc in node_svcs if svc.name.startswith(NODE_PREFIX)))
        if settlement:
            broker = redis_service(StatePaths(home / "broker"))
            stack.start_services([broker])
            worker = WorkerProcess(settlement_env(settings, broker.url or ""), home / "worker.log",
                                   "--beat", "--concurrency", "2")
            d.worker = worker.wait_ready(60)
        yield d
    finally:
        if d is not None and d.worker is not None:
            d.worker.stop()
        stack.stop()
        with psycopg.connect(postgres_url, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)".encode())


@pytest.fixture(scope="module")
def deployed(postgres_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployed]:
    with deployment(postgres_url, tmp_path_factory.mktemp("sluice")) as d:
        yield d
