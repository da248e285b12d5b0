"""`sluice admin nodes`, driven through the real CLI against NodeRegistry on the session chain.

Every change is a transaction whose hash the command prints; the heartbeat rule (only active keys,
only for their registered endpoint) runs inside the real redemption service, which follows the
registry's events.
"""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest
from eth_account import Account
from eth_account.messages import encode_defunct
from eth_account.signers.local import LocalAccount

from inference_node.protocol import HEARTBEAT_PATH, UNSIGNED, NodeHeartbeat
from ledger.chain.client import Ledger
from ledger.polling import poll_until
from tests.support.cli import cli, ok, refused

ENDPOINT = "http://10.0.0.5:9100"
PLACE = ("--tier", "edge", "--region", "eu-west")


def tx_hash(answer: dict[str, object]) -> str:
    value = answer["tx_hash"]
    assert isinstance(value, str) and value.startswith("0x") and len(value) == 66
    return value


def test_admin_nodes_register_list_update_and_retire(home: Path, ledger: Ledger) -> None:
    node = Account.create().address
    assert ok("admin", "nodes", "list") == {"nodes": []}
    assert "tier must be one of" in refused("admin", "nodes", "register", node, "--endpoint", ENDPOINT,
                                            "--tier", "gpu", "--region", "x")

    registered = ok("admin", "nodes", "register", node, "--endpoint", ENDPOINT, *PLACE)
    tx_hash(registered)
    assert registered | {"tx_hash": None, "block": None} == {
        "action": "registered", "tx_hash": None, "block": None, "node": node, "endpoint": ENDPOINT, "tier": "edge",
        "region": "eu-west"}
    record = ledger.node_of(node)
    assert (record.status, record.endpoint, record.tier, record.region) == ("active", ENDPOINT, "edge", "eu-west")
    assert "active in NodeRegistry already" in refused("admin", "nodes", "register", node, "--endpoint", ENDPOINT,
                                                       *PLACE)

    [listed] = ok("admin", "nodes", "list")["nodes"]
    assert listed == {"address": node, "status": "active", "endpoint": ENDPOINT, "tier": "edge",
                      "region": "eu-west", "registered_block": registered["block"], "retired_block": None,
                      "last_heartbeat_age_seconds": None}

    moved = ok("admin", "nodes", "update", node, "--endpoint", "http://10.0.0.6:9100", "--tier", "regional",
               "--region", "eu-west")
    tx_hash(moved)
    assert ledger.node_of(node).endpoint == "http://10.0.0.6:9100"

    retired = ok("admin", "nodes", "retire", node)
    tx_hash(retired)
    assert ledger.node_of(node).status == "retired" and not ledger.is_node_active(node)
    assert "already retired" in refused("admin", "nodes", "retire", node)
    assert "retired in NodeRegistry already" in refused("admin", "nodes", "register", node, "--endpoint", ENDPOINT,
                                                        *PLACE)
    assert "not registered" in refused("admin", "nodes", "retire", Account.create().address)
    text = cli("admin", "nodes", "list").stdout
    assert node in text and "retired" in text and "http://10.0.0.6:9100" in text


def heartbeat(service: str, key: LocalAccount, url: str = ENDPOINT) -> httpx.Response:
    beat = NodeHeartbeat(node=key.address, url=url, models=["m-small"], tier="edge", region="eu-west", capacity=2,
                         running=0, waiting=0, timestamp=int(time.time()), signature=UNSIGNED)
    signature = "0x" + key.sign_message(encode_defunct(text=beat.signing_text())).signature.hex()
    return httpx.post(service + HEARTBEAT_PATH, json=beat.model_copy(update={"signature": signature}).model_dump(),
                      timeout=10)


def code(response: httpx.Response) -> str:
    error = response.json()["error"]
    assert isinstance(error["code"], str)
    return error["code"]


def test_heartbeats_only_from_active_registered_nodes_at_their_endpoint(
    home: Path, fresh_db: str, service: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DATABASE_URL", fresh_db)
    vetted, walk_in = Account.create(), Account.create()
    stranger = heartbeat(service, walk_in)
    assert stranger.status_code == 403 and code(stranger) == "node_not_registered"
    assert f"sluice admin nodes register {walk_in.address}" in stranger.json()["error"]["message"]

    ok("admin", "nodes", "register", vetted.address, "--endpoint", ENDPOINT, *PLACE)
    poll_until(lambda: heartbeat(service, vetted).status_code == 200, 10, "the service admitting the registered node")
    elsewhere = heartbeat(service, vetted, url="http://169.254.169.254/latest")  # an SSRF target
    assert elsewhere.status_code == 403 and code(elsewhere) == "endpoint_mismatch"
    assert ok("admin", "nodes", "list")["nodes"][0]["last_heartbeat_age_seconds"] is not None

    ok("admin", "nodes", "retire", vetted.address)
    poll_until(lambda: heartbeat(service, vetted).status_code == 403, 10, "the service refusing the retired node")
    assert code(heartbeat(service, vetted)) == "node_retired"
    assert httpx.get(service + "/health", timeout=5).json()["nodes"] == 0
