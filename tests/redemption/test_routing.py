"""The node registry (`redemption.routing.NodeRegistry`): which live nodes may serve a call, best first.

A candidate serves the model, is in the asked tier and region, is neither retired, stale nor cooling
down after a failure, and is ranked by queue depth over capacity plus its latency average. The
registry's clock is replaced by one the tests move, so staleness and cool-downs are exact.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from redemption import routing
from redemption.routing import NodeRegistry, NodeState

STALE = 10.0
M1, M2 = "model-one", "model-two"


class Clock:
    def __init__(self) -> None:
        self.now = 1_000.0

    def monotonic(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Iterator[Clock]:
    fake = Clock()
    monkeypatch.setattr(routing, "time", fake)
    yield fake


def beat(registry: NodeRegistry, node: str, models: list[str], tier: str = "edge", region: str = "eu",
         capacity: int = 4, running: int = 0, waiting: int = 0, age: float = 0.0, retired: bool = False) -> None:
    registry.heartbeat(node, f"http://{node}.test", models, tier, region, capacity, running, waiting, age=age,
                       retired=retired)


def names(nodes: list[NodeState]) -> list[str]:
    return [n.node for n in nodes]


def test_candidates_are_filtered_by_model_tier_and_region(clock: Clock) -> None:
    registry = NodeRegistry(STALE)
    beat(registry, "a", [M1], "edge", "eu", running=1)
    beat(registry, "b", [M1, M2], "regional", "us", running=2)
    beat(registry, "c", [M2], "cloud", "eu", running=0)
    beat(registry, "d", [M1], "edge", "us", running=3)
    assert names(registry.candidates(M1)) == ["a", "b", "d"]
    assert names(registry.candidates(M2)) == ["c", "b"]
    assert names(registry.candidates(M1, tier="edge")) == ["a", "d"]
    assert names(registry.candidates(M1, region="us")) == ["b", "d"]
    assert names(registry.candidates(M1, tier="edge", region="us")) == ["d"]
    assert registry.candidates(M1, tier="cloud") == []
    assert registry.candidates("unknown-model") == []
    assert (registry.serves(M1), registry.serves(M2), registry.serves("unknown-model")) == (True, True, False)


def test_a_node_silent_longer_than_the_stale_window_is_not_routed_to(clock: Clock) -> None:
    registry = NodeRegistry(STALE)
    beat(registry, "fresh", [M1], age=STALE)  # exactly at the limit: still live
    beat(registry, "stale", [M1], age=STALE + 0.5)
    beat(registry, "only-m2", [M2], age=STALE + 0.5)
    assert names(registry.candidates(M1)) == ["fresh"]
    assert registry.nodes["stale"].last_seen == clock.now - STALE - 0.5
    assert registry.serves(M2) is False
    clock.now += 0.5
    assert registry.candidates(M1) == []
    beat(registry, "stale", [M1])  # a new heartbeat brings it back
    assert names(registry.candidates(M1)) == ["stale"]
    beat(registry, "stale", [M1], age=60.0)  # an older report (another replica's row) never ages it
    assert registry.nodes["stale"].last_seen == clock.now


def test_a_retired_node_is_not_routed_to_until_it_heartbeats_unretired(clock: Clock) -> None:
    registry = NodeRegistry(STALE)
    beat(registry, "a", [M1], retired=True)
    beat(registry, "b", [M2])
    assert registry.candidates(M1) == [] and registry.serves(M1) is False
    beat(registry, "a", [M1])
    assert names(registry.candidates(M1)) == ["a"] and registry.serves(M1) is True


def test_queue_depth_over_capacity_orders_the_candidates(clock: Clock) -> None:
    registry = NodeRegistry(STALE)
    beat(registry, "half-full", [M1], capacity=4, running=2)  # 2/4 + 0.05 = 0.55
    beat(registry, "queued", [M1], capacity=8, running=2, waiting=1)  # 3/8 + 0.05 = 0.425
    beat(registry, "no-capacity", [M1], capacity=0, running=1)  # capacity 0 counts as 1: 1/1 + 0.05
    beat(registry, "idle", [M1], capacity=2)  # 0/2 + 0.05
    assert names(registry.candidates(M1)) == ["idle", "queued", "half-full", "no-capacity"]
    assert [n.score() for n in registry.candidates(M1)] == pytest.approx([0.05, 0.425, 0.55, 1.05])
    registry.nodes["queued"].in_flight = 3  # the service's own calls in flight count too: 6/8 + 0.05
    assert names(registry.candidates(M1)) == ["idle", "half-full", "queued", "no-capacity"]
    assert registry.nodes["queued"].score() == pytest.approx(0.8)
    beat(registry, "idle", [M1], capacity=2, running=1, waiting=2)  # 3/2 + 0.05
    assert names(registry.candidates(M1)) == ["half-full", "queued", "no-capacity", "idle"]


def test_the_latency_average_orders_nodes_with_equal_queues(clock: Clock) -> None:
    registry = NodeRegistry(STALE)
    beat(registry, "a", [M1])
    beat(registry, "b", [M1])
    assert registry.nodes["a"].latency_ms == registry.nodes["b"].latency_ms == 50.0
    registry.record_latency("a", 550.0)  # 50 + 0.2 * (550 - 50)
    assert registry.nodes["a"].latency_ms == 150.0
    assert names(registry.candidates(M1)) == ["b", "a"]
    registry.record_latency("b", 1050.0)  # 50 + 0.2 * (1050 - 50)
    assert registry.nodes["b"].latency_ms == 250.0
    assert names(registry.candidates(M1)) == ["a", "b"]
    registry.record_latency("a", 150.0)  # an average: a sample equal to it leaves it where it is
    assert registry.nodes["a"].latency_ms == 150.0
    registry.record_latency("gone", 10.0)  # an unknown node is ignored
    assert "gone" not in registry.nodes


def test_failover_walks_the_candidates_best_first_and_a_failed_node_cools_down(clock: Clock) -> None:
    registry = NodeRegistry(STALE)
    beat(registry, "first", [M1], running=0)
    beat(registry, "second", [M1], running=1)
    beat(registry, "third", [M1], running=2)
    tried: set[str] = set()
    order = []
    while candidates := registry.candidates(M1, exclude=frozenset(tried)):  # the dispatcher's loop
        order.append(candidates[0].node)
        tried.add(candidates[0].node)
    assert order == ["first", "second", "third"]

    registry.record_failure("first")
    assert registry.nodes["first"].failed_until == clock.now + NodeRegistry.FAILURE_COOLDOWN == clock.now + 5.0
    assert names(registry.candidates(M1)) == ["second", "third"]
    assert registry.serves(M1) is True  # a cooling node still counts as serving the model
    clock.now += 4.999
    assert names(registry.candidates(M1)) == ["second", "third"]
    clock.now += 0.001
    assert names(registry.candidates(M1)) == ["first", "second", "third"]
    registry.record_failure("gone")  # an unknown node is ignored
    assert "gone" not in registry.nodes


def test_a_heartbeat_updates_the_node_and_keeps_what_the_service_learned(clock: Clock) -> None:
    registry = NodeRegistry(STALE)
    beat(registry, "a", [M1], "edge", "eu", capacity=4, running=1, waiting=2)
    registry.record_latency("a", 550.0)
    registry.nodes["a"].in_flight = 2
    registry.record_failure("a")
    beat(registry, "a", [M2], "cloud", "us", capacity=16, running=3, waiting=0)
    node = registry.nodes["a"]
    assert (node.url, node.models, node.tier, node.region, node.capacity, node.running, node.waiting) == (
        "http://a.test", frozenset({M2}), "cloud", "us", 16, 3, 0)
    assert (node.latency_ms, node.in_flight, node.failed_until, node.retired) == (150.0, 2, clock.now + 5.0, False)
    assert list(registry.nodes) == ["a"]
