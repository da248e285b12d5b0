"""NodeRegistry behaviour: the operator registers node receipt keys (endpoint, tier, region), updates
and retires them; a retired key never comes back; only REGISTRAR_ROLE changes anything."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest
from eth_utils import keccak

from ledger.chain.client import Ledger, NodeRecord, role_id
from tests.support.assertions import ZERO_ADDRESS, events, reverts

if TYPE_CHECKING:
    from tests.support.ledger import Actors

ENDPOINT = "http://10.0.0.7:8100"


def test_register_emits_and_records(ledger: Ledger, actors: Actors) -> None:
    node = actors.other.address
    assert not ledger.is_node_active(node)
    assert ledger.node_of(node) == NodeRecord(node, "unknown", 0, 0, "", "", "")

    tx = ledger.register_node(actors.operator, node, ENDPOINT, "edge", "eu-west-1")

    assert events(ledger.node_registry.events.NodeRegistered, tx) == [
        {"node": node, "endpoint": ENDPOINT, "tier": "edge", "region": "eu-west-1"}
    ]
    assert ledger.is_node_active(node)
    assert ledger.node_of(node) == NodeRecord(node, "active", tx.block_number, 0, ENDPOINT, "edge", "eu-west-1")
    assert [n.node for n in ledger.nodes()] == [node]


@pytest.mark.parametrize("tier", ["edge", "regional", "cloud"])
def test_every_design_tier_is_accepted(ledger: Ledger, actors: Actors, tier: str) -> None:
    ledger.register_node(actors.operator, actors.other.address, ENDPOINT, tier, "r")
    assert ledger.node_of(actors.other.address).tier == tier


@pytest.mark.parametrize("tier", ["", "Edge", "edge ", "core", "regionalx"])
def test_other_tiers_are_refused(ledger: Ledger, actors: Actors, tier: str) -> None:
    with reverts("NodeRegistryInvalidTier", tier=tier):
        ledger.register_node(actors.operator, actors.other.address, ENDPOINT, tier, "r")
    assert not ledger.is_node_active(actors.other.address)


def test_bad_endpoint_and_zero_key_are_refused(ledger: Ledger, actors: Actors) -> None:
    with reverts("NodeRegistryInvalidEndpoint", endpoint=""):
        ledger.register_node(actors.operator, actors.other.address, "", "edge", "r")
    long = "http://x/" + "a" * 2040
    with reverts("NodeRegistryInvalidEndpoint", endpoint=long):
        ledger.register_node(actors.operator, actors.other.address, long, "edge", "r")
    with reverts("NodeRegistryInvalidNode", node=ZERO_ADDRESS):
        ledger.register_node(actors.operator, ZERO_ADDRESS, ENDPOINT, "edge", "r")


def test_registering_an_active_node_again_is_refused(ledger: Ledger, actors: Actors) -> None:
    ledger.register_node(actors.operator, actors.other.address, ENDPOINT, "edge", "r")
    with reverts("NodeRegistryAlreadyRegistered", node=actors.other.address):
        ledger.register_node(actors.operator, actors.other.address, "http://elsewhere", "cloud", "r")
    assert ledger.node_of(actors.other.address).endpoint == ENDPOINT


def test_update_changes_an_active_record(ledger: Ledger, actors: Actors) -> None:
    node = actors.other.address
    ledger.register_node(actors.operator, node, ENDPOINT, "edge", "r")

    tx = ledger.update_node(actors.operator, node, "http://10.0.0.8:8100", "regional", "eu-central-1")

    assert events(ledger.node_registry.events.NodeRegistered, tx) == [
        {"node": node, "endpoint": "http://10.0.0.8:8100", "tier": "regional", "region": "eu-central-1"}
    ]
    assert ledger.node_of(node).endpoint == "http://10.0.0.8:8100"
    with reverts("NodeRegistryNotActive", node=actors.developer.address):
        ledger.update_node(actors.operator, actors.developer.address, ENDPOINT, "edge", "r")


def test_retire_is_for_good(ledger: Ledger, actors: Actors) -> None:
    node = actors.other.address
    registered = ledger.register_node(actors.operator, node, ENDPOINT, "edge", "r")

    tx = ledger.retire_node(actors.operator, node)

    assert events(ledger.node_registry.events.NodeRetired, tx) == [{"node": node}]
    assert not ledger.is_node_active(node)
    assert ledger.node_of(node) == NodeRecord(node, "retired", registered.block_number, tx.block_number,
                                              ENDPOINT, "edge", "r")
    with reverts("NodeRegistryNodeRetired", node=node):
        ledger.register_node(actors.operator, node, ENDPOINT, "edge", "r")
    with reverts("NodeRegistryNotActive", node=node):
        ledger.retire_node(actors.operator, node)
    with reverts("NodeRegistryNotActive", node=node):
        ledger.update_node(actors.operator, node, ENDPOINT, "edge", "r")
    assert [n.status for n in ledger.nodes()] == ["retired"]


def test_retiring_an_unknown_node_is_refused(ledger: Ledger, actors: Actors) -> None:
    with reverts("NodeRegistryNotActive", node=actors.other.address):
        ledger.retire_node(actors.operator, actors.other.address)


def test_only_registrar_role_changes_the_registry(ledger: Ledger, actors: Actors) -> None:
    node = actors.other.address
    needed = role_id("REGISTRAR_ROLE")
    for caller in (actors.settler, actors.developer):
        with reverts("AccessControlUnauthorizedAccount", account=caller.address, neededRole=needed):
            ledger.register_node(caller, node, ENDPOINT, "edge", "r")
    ledger.register_node(actors.operator, node, ENDPOINT, "edge", "r")
    with reverts("AccessControlUnauthorizedAccount", account=actors.developer.address, neededRole=needed):
        ledger.retire_node(actors.developer, node)
    with reverts("AccessControlUnauthorizedAccount", account=actors.developer.address, neededRole=needed):
        ledger.update_node(actors.developer, node, ENDPOINT, "cloud", "r")
    # A node cannot register itself either.
    with reverts("AccessControlUnauthorizedAccount", account=actors.other.address, neededRole=needed):
        ledger.register_node(actors.other, actors.other.address, ENDPOINT, "edge", "r")

    ledger.grant_role(actors.operator, "REGISTRAR_ROLE", actors.developer.address)
    ledger.retire_node(actors.developer, node)
    assert not ledger.is_node_active(node)


def test_event_signatures_match_the_design(ledger: Ledger) -> None:
    declared = {
        f"{e['name']}({','.join(i['type'] for i in e['inputs'])})"
        for e in ledger.node_registry.abi if e.get("type") == "event"
    }
    assert {"NodeRegistered(address,string,string,string)", "NodeRetired(address)"} <= declared
    tx_topics = {keccak(text="NodeRetired(address)"), keccak(text="NodeRegistered(address,string,string,string)")}
    assert len(tx_topics) == 2
