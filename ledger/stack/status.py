"""What `sluice status` reports: which services answer, their endpoints, the chain head and the deployment."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ledger.config import Settings
from ledger.paths import StatePaths
from ledger.stack.probes import chain_id_at, http_ok, redact, rpc_call
from ledger.stack.running import read_stack_record, running_pid
from ledger.stack.services import CHAIN, DATABASE, ENDPOINT_KEYS, default_services


@dataclass
class ServiceStatus:
    title: str
    embedded: bool
    url: str
    up: bool

    def to_json(self) -> dict[str, Any]:
        return {"title": self.title, "embedded": self.embedded, "url": self.url, "up": self.up}


@dataclass
class StackStatus:
    """What `sluice status` reports."""

    state_dir: Path
    pid: int | None
    services: dict[str, ServiceStatus] = field(default_factory=dict)
    endpoints: dict[str, Any] = field(default_factory=dict)
    chain_head: int | None = None
    deployment: dict[str, Any] | None = None
    processes: dict[str, Any] = field(default_factory=dict)
    token: dict[str, Any] = field(default_factory=dict)

    @property
    def running(self) -> bool:
        return self.pid is not None

    @property
    def all_up(self) -> bool:
        return all(s.up for s in self.services.values())

    def to_json(self) -> dict[str, Any]:
        return {
            "running": self.running,
            "pid": self.pid,
            "state_dir": str(self.state_dir),
            "services": {name: s.to_json() for name, s in self.services.items()},
            "endpoints": self.endpoints,
            "chain_head": self.chain_head,
            "deployment": self.deployment,
            "processes": self.processes,
            "token": self.token,
        }


_DOWN = ServiceStatus("", False, "", False)


def stack_status(settings: Settings) -> StackStatus:
    """Probe every endpoint the settings name; deployment from the running stack or the chain's record."""
    paths = StatePaths(settings.state_dir)
    status = StackStatus(state_dir=paths.root, pid=running_pid(paths))
    for service in default_services(settings):
        url = redact(service.url or service.address)
        status.services[service.name] = ServiceStatus(service.title, service.embedded, url, service.healthy())
        status.endpoints[ENDPOINT_KEYS[service.name]] = url
    rpc = settings.effective_rpc_url
    if status.services[CHAIN].up:
        try:
            status.chain_head = int(rpc_call(rpc, "eth_blockNumber"), 16)
        except (OSError, ValueError):
            status.chain_head = None
    record = read_stack_record(paths) if status.running else None
    if record is not None:
        status.deployment = {k: v for k, v in record.items() if k != "endpoints"}
        _probe_app_services(status, record.get("endpoints", {}))
    elif status.chain_head is not None:
        status.deployment = _recorded_deployment(settings, rpc)
    _probe_processes(status, settings)
    return status


def _probe_processes(status: StackStatus, settings: Settings) -> None:
    """The service (with its mirror and indexer), the workers and beat, the nodes, and the token's pause state."""
    from ledger.stack import operations
    from ledger.stack.services import client_settings

    clients = client_settings(settings)
    api = status.endpoints.get("api") or f"http://127.0.0.1:{settings.api_port}"
    health = operations.api_health(api)
    status.processes["api"] = {"url": api, "up": health is not None,
                               "mirror_lag_blocks": None if health is None else health.get("mirror_lag_blocks"),
                               "nodes_routed": None if health is None else health.get("nodes")}
    view = operations.database_view(clients.database_url or "") if status.services.get(DATABASE, _DOWN).up else None
    nodes, cursors, workers = view if view is not None else (None, {}, None)
    for follower in ("mirror", "indexer"):
        cursor = cursors.get(follower)
        if cursor is not None and status.chain_head is not None:
            cursor["lag_blocks"] = max(status.chain_head - cursor["block"], 0)
        status.processes[follower] = cursor
    status.processes["workers"] = workers
    status.processes["beat"] = None if workers is None else any(w["beat"] and w["up"] for w in workers)
    status.processes["nodes"] = nodes
    token = (status.deployment or {}).get("contracts", {}).get("token")
    rpc = settings.effective_rpc_url
    paused = operations.token_paused(rpc, token) if token and status.chain_head is not None else None
    status.token = {"address": token, "paused": paused}


def _probe_app_services(status: StackStatus, endpoints: dict[str, Any]) -> None:
    """Add the running stack's API and node agents (from its record) to the status."""
    if "api" in endpoints:
        status.services["api"] = ServiceStatus("redemption service", True, endpoints["api"], http_ok(endpoints["api"]))
        status.endpoints["api"] = endpoints["api"]
    for i, url in enumerate(endpoints.get("nodes", [])):
        status.services[f"node-{i + 1}"] = ServiceStatus("node agent", True, url, http_ok(url))
    if endpoints.get("nodes"):
        status.endpoints["nodes"] = endpoints["nodes"]
    if "worker" in endpoints:  # the settlement worker's metrics
        status.endpoints["worker"] = endpoints["worker"]


def _recorded_deployment(settings: Settings, rpc: str) -> dict[str, Any] | None:
    from ledger.chain.deployment import load_deployment
    from ledger.errors import DeploymentMissing

    chain_id = chain_id_at(rpc)
    if chain_id is None:
        return None
    try:
        return load_deployment(settings.state_dir, chain_id).to_json()
    except DeploymentMissing:
        return None
