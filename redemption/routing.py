"""The nodes a call may go to, and the choice of a node for each call.

Only keys active in NodeRegistry on chain (`ledger.chain.registry_events`), at their registered
endpoint, count (Invariant 8): their heartbeats (inference_node.protocol.NodeHeartbeat) are kept in
memory, mirrored in PostgreSQL for other replicas, and a node is dropped the moment the chain retires
or moves it. A call goes to a live node serving its model, within an optional tier/region constraint,
with the lowest load score: queue depth over capacity plus a latency average.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field

from ledger.chain.registry_events import RegisteredNode, RegistryLog


def same_endpoint(url: str, endpoint: str) -> bool:
    return url.rstrip("/") == endpoint.rstrip("/")


@dataclass
class NodeState:
    node: str
    url: str
    models: frozenset[str]
    tier: str
    region: str
    capacity: int
    running: int = 0
    waiting: int = 0
    last_seen: float = field(default_factory=time.monotonic)
    latency_ms: float = 50.0
    in_flight: int = 0
    failed_until: float = 0.0
    retired: bool = False

    def score(self) -> float:
        queue = (self.running + self.waiting + self.in_flight) / max(self.capacity, 1)
        return queue + self.latency_ms / 1000.0


class NodeRegistry:
    LATENCY_WEIGHT = 0.2  # EWMA weight of the newest time-to-first-byte sample
    FAILURE_COOLDOWN = 5.0

    def __init__(self, stale_seconds: float, chain: RegistryLog | None = None) -> None:
        self.stale_seconds = stale_seconds
        self.chain = chain  # None only in unit tests of the routing itself
        self.nodes: dict[str, NodeState] = {}

    def registered(self, node: str) -> RegisteredNode | None:
        return None if self.chain is None else self.chain.record(node)

    def apply_chain(self, changed: Iterable[RegisteredNode]) -> None:
        """Drop at once every node the chain retired or moved to another endpoint."""
        for record in changed:
            state = self.nodes.get(record.node)
            if state is not None and (not record.active or not same_endpoint(state.url, record.endpoint)):
                del self.nodes[record.node]

    def _eligible(self, node: str, url: str) -> RegisteredNode | None:
        record = self.registered(node)
        if record is None or not record.active or not same_endpoint(url, record.endpoint):
            return None
        return record

    def heartbeat(self, node: str, url: str, models: list[str], tier: str, region: str, capacity: int,
                  running: int, waiting: int, age: float = 0.0, retired: bool = False) -> None:
        if self.chain is not None:
            record = self._eligible(node, url)
            if record is None:  # not (or no longer) an active registered node at this endpoint
                self.nodes.pop(node, None)
                return
            url, tier, region = record.endpoint, record.tier, record.region  # the chain's word, not the node's
        state = self.nodes.get(node)
        seen = time.monotonic() - age
        if state is None:
            self.nodes[node] = NodeState(node, url, frozenset(models), tier, region, capacity, running, waiting,
                                         seen, retired=retired)
            return
        state.url, state.models, state.tier, state.region = url, frozenset(models), tier, region
        state.capacity, state.running, state.waiting, state.retired = capacity, running, waiting, retired
        state.last_seen = max(state.last_seen, seen)

    def standing(self, node: str) -> str | None:
        """'active', 'retired', or None for a node NodeRegistry does not know."""
        if self.chain is not None:
            return self.chain.standing(node)
        state = next((n for n in self.nodes.values() if n.node.lower() == node.lower()), None)
        if state is None:
            return None
        return "retired" if state.retired else "active"

    def candidates(self, model: str, tier: str | None = None, region: str | None = None,
                   exclude: frozenset[str] = frozenset()) -> list[NodeState]:
        """Live nodes able to serve, best first."""
        now = time.monotonic()
        live = [
            n for n in self.nodes.values()
            if model in n.models and not n.retired and n.node not in exclude
            and (self.chain is None or self._eligible(n.node, n.url) is not None)
            and now - n.last_seen <= self.stale_seconds and n.failed_until <= now
            and (tier is None or n.tier == tier) and (region is None or n.region == region)
        ]
        return sorted(live, key=NodeState.score)

    def serves(self, model: str) -> bool:
        now = time.monotonic()
        return any(model in n.models and not n.retired and now - n.last_seen <= self.stale_seconds
                   for n in self.nodes.values())

    def record_latency(self, node: str, ms: float) -> None:
        state = self.nodes.get(node)
        if state is not None:
            state.latency_ms += self.LATENCY_WEIGHT * (ms - state.latency_ms)

    def record_failure(self, node: str) -> None:
        state = self.nodes.get(node)
        if state is not None:
            state.failed_until = time.monotonic() + self.FAILURE_COOLDOWN
