"""The application half of the embedded stack: the redemption service, the simulated nodes and the
settlement worker.

`sluice up` starts these after the contracts are deployed, each as a child process
with the stack's environment: the redemption service (`python -m redemption`),
then for every embedded node a vLLM-API simulator (internal, never routed to
directly) and the node agent in front of it, which registers with the service,
then the settlement worker with its beat (`python -m ledger.cli.worker --beat`).
Inference on the embedded stack is simulated; production runs the agent in front
of `vllm serve` on each GPU host.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from typing import Any

from ledger.chain.deploy import parse_models
from ledger.config import Settings
from ledger.keys import embedded_account
from ledger.paths import StatePaths
from ledger.stack.probes import http_ok
from ledger.stack.processes import Launch, PortClaim
from ledger.stack.services import INTERNAL_PREFIX, NODE_PREFIX, Service, client_environment

API = "api"
WORKER = "worker"


@dataclass(frozen=True)
class EmbeddedNode:
    """One simulated node: its name, tier, region, key index and which rate-card models it serves."""

    name: str
    tier: str
    region: str
    key_index: int
    model_indexes: tuple[int, ...]


# An edge site serving the small model and a regional data centre serving every model.
EMBEDDED_NODES = (
    EmbeddedNode("edge-1", "edge", "eu-west-edge", 10, (0,)),
    EmbeddedNode("regional-1", "regional", "eu-west", 11, (0, 1)),
)


def _log(settings: Settings, name: str) -> Any:
    path = StatePaths(settings.state_dir).root / "logs" / f"{name}.log"
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def api_url(settings: Settings) -> str:
    return f"http://127.0.0.1:{settings.api_port}"


def api_service(settings: Settings, record: dict[str, Any]) -> Service:
    url = api_url(settings)
    env = {**client_environment(settings), "SLUICE_API_PORT": str(settings.api_port)}
    return Service(
        name=API, title="redemption service", url=url, address=url, healthy=lambda: http_ok(url),
        launch=Launch(argv=(sys.executable, "-m", "redemption"), log=_log(settings, "api"),
                      ports=(PortClaim(settings.api_port, "SLUICE_API_PORT"),), env=env, start_timeout=60.0),
    )


def node_services(settings: Settings, record: dict[str, Any], nodes: tuple[EmbeddedNode, ...] = EMBEDDED_NODES,
                  sim_overrides: dict[str, Any] | None = None) -> list[Service]:
    """A simulator and a node agent for each of `nodes`; `sim_overrides` adjusts every SimulatorConfig."""
    models = [name for name, *_ in parse_models(settings.models)]
    services: list[Service] = []
    for i, node in enumerate(nodes):
        served = [models[m] for m in node.model_indexes if m < len(models)]
        if not served:
            continue
        sim_port, agent_port = settings.node_base_port + 2 * i, settings.node_base_port + 2 * i + 1
        sim_url, agent_url = f"http://127.0.0.1:{sim_port}", f"http://127.0.0.1:{agent_port}"
        sim_config = json.dumps({"served_model_names": served, "tier": node.tier, "seed": i, **(sim_overrides or {})})
        services.append(Service(
            name=f"{INTERNAL_PREFIX}vllm-sim-{node.name}", title=f"vLLM simulator ({node.name})", url=sim_url,
            address=sim_url, healthy=lambda u=sim_url: http_ok(u),  # type: ignore[misc]
            launch=Launch(argv=(sys.executable, "-m", "inference_node.sim_main", "--port", str(sim_port),
                                "--config-json", sim_config),
                          log=_log(settings, f"vllm-sim-{node.name}"),
                          ports=(PortClaim(sim_port, "SLUICE_NODE_BASE_PORT"),), env=client_environment(settings)),
        ))
        env = {**client_environment(settings),
               "SLUICE_NODE_KEY": "0x" + bytes(embedded_account(node.key_index).key).hex()}
        argv = [sys.executable, "-m", "inference_node.agent_main", "--port", str(agent_port), "--vllm-url", sim_url,
                "--service-url", api_url(settings), "--tier", node.tier, "--region", node.region]
        for model in served:
            argv += ["--model", model]
        services.append(Service(
            name=f"{NODE_PREFIX}{node.name}", title=f"node agent ({node.name}, {node.tier})", url=agent_url,
            address=agent_url, healthy=lambda u=agent_url: http_ok(u),  # type: ignore[misc]
            launch=Launch(argv=tuple(argv), log=_log(settings, f"node-{node.name}"),
                          ports=(PortClaim(agent_port, "SLUICE_NODE_BASE_PORT"),), env=env, start_timeout=60.0),
        ))
    return services


def node_endpoints(settings: Settings,
                   nodes: tuple[EmbeddedNode, ...] = EMBEDDED_NODES) -> list[tuple[EmbeddedNode, str]]:
    """Each embedded node that serves a model on this rate card, with its agent's URL (its NodeRegistry endpoint)."""
    models = [name for name, *_ in parse_models(settings.models)]
    return [(node, f"http://127.0.0.1:{settings.node_base_port + 2 * i + 1}")
            for i, node in enumerate(nodes) if any(m < len(models) for m in node.model_indexes)]


def register_embedded_nodes(settings: Settings, record: dict[str, Any],
                            nodes: tuple[EmbeddedNode, ...] = EMBEDDED_NODES) -> list[str]:
    """Register the embedded nodes' receipt keys in NodeRegistry at their agents' URLs (once; an already
    registered key is moved to its URL); returns the transaction hashes."""
    from ledger.chain.client import Ledger
    from ledger.chain.connection import connect
    from ledger.chain.deployment import Deployment
    from ledger.keys import operator_account

    ledger = Ledger(connect(settings.effective_rpc_url), Deployment.from_json(record), timeout=settings.tx_timeout)
    operator = operator_account(settings)
    hashes: list[str] = []
    for node, endpoint in node_endpoints(settings, nodes):
        key = embedded_account(node.key_index).address
        known = ledger.node_of(key)
        if known.status == "unknown":
            hashes.append(ledger.register_node(operator, key, endpoint, node.tier, node.region).tx_hash)
        elif known.status == "active" and known.endpoint != endpoint:
            hashes.append(ledger.update_node(operator, key, endpoint, node.tier, node.region).tx_hash)
    return hashes


def worker_service(settings: Settings, record: dict[str, Any]) -> Service:
    """The settlement worker with its beat (`sluice worker --beat`), its metrics on SLUICE_WORKER_METRICS_PORT.

    The stack claims that port before the launch, so a port taken by another process stops `sluice up`
    with the variable to set (the worker itself refuses to start without it too). With the port 0 it
    serves no metrics and counts as up while its process runs (the stack notices when it exits).
    """
    port = settings.worker_metrics_port
    url = f"http://127.0.0.1:{port}" if port else None
    env = {**client_environment(settings), "SLUICE_WORKER_METRICS_PORT": str(port)}
    return Service(
        name=WORKER, title="settlement worker (Celery + beat)", url=url, address=url or "sluice worker --beat",
        healthy=(lambda: http_ok(url, "/metrics")) if url else (lambda: True),
        launch=Launch(argv=(sys.executable, "-m", "ledger.cli.worker", "--beat", "--concurrency", "2"),
                      log=_log(settings, "worker"), env=env, start_timeout=60.0,
                      ports=(PortClaim(port, "SLUICE_WORKER_METRICS_PORT"),) if port else ()),
    )


def app_services(settings: Settings, record: dict[str, Any]) -> list[Service]:
    """Every application service of the embedded stack, in start order (its nodes registered on chain first)."""
    register_embedded_nodes(settings, record)
    return [api_service(settings, record), *node_services(settings, record), worker_service(settings, record)]

