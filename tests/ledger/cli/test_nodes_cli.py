"""`sluice admin nodes`, driven through the real CLI against a fresh PostgreSQL database each.

The heartbeat registration rule runs inside the real redemption service.
"""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import psycopg
import pytest
from eth_account import Account
from eth_account.messages import encode_defunct
from eth_account.signers.local import LocalAccount

from inference_node.protocol import HEARTBEAT_PATH, NodeHeartbeat
from tests.support.cli import cli, ok, refused

NODE_OPTIONS = ("--url", "http://10.0.0.5:9100", "--model", "m-small", "--model", "m-large", "--tier", "edge",
                "--region", "eu-west")


def self_registered(db: str, node: str) -> None:
    """A node that joined with its own heartbeat (what the service's upsert writes)."""
    with psycopg.connect(db, autocommit=True) as conn:
        conn.execute("INSERT INTO nodes (node, url, models, tier, region, capacity) VALUES (%s, %s, %s, %s, %s, 4)",
                     (bytes.fromhex(node[2:]), "http://10.0.0.9:9100", ["m-small"], "cloud", "us-east"))


def test_admin_nodes_register_list_and_retire(home: Path, fresh_db: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", fresh_db)
    node, joined = Account.create().address, Account.create().address
    assert ok("admin", "nodes", "list") == {"registration": "open", "nodes": []}
    self_registered(fresh_db, joined)

    incomplete = cli("admin", "nodes", "register", node, "--url", "http://10.0.0.5:9100")
    assert incomplete.exit_code == 2 and "a new node needs --model, --tier, --region" in incomplete.output
    assert cli("admin", "nodes", "register", node, *NODE_OPTIONS[:-4], "--tier", "gpu", "--region", "x").exit_code == 2

    registered = ok("admin", "nodes", "register", node, *NODE_OPTIONS)
    assert registered["action"] == "registered" and registered["changes"] == {}
    assert registered["registration_closed_now"] is True and registered["refused_self_registered"] == [joined]
    assert registered["node"] | {"registered_at": None} == {
        "address": node, "url": "http://10.0.0.5:9100", "models": ["m-small", "m-large"], "tier": "edge",
        "region": "eu-west", "capacity": 1, "registered_by": "operator", "retired": False, "registered_at": None,
        "last_heartbeat_age_seconds": None}

    listed = ok("admin", "nodes", "list")
    assert listed["registration"] == "closed"
    by_address = {n["address"]: n for n in listed["nodes"]}
    assert by_address[node]["last_heartbeat_age_seconds"] is None
    assert by_address[joined]["registered_by"] == "heartbeat"
    assert isinstance(by_address[joined]["last_heartbeat_age_seconds"], int)
    text = cli("admin", "nodes", "list").stdout
    assert "never" in text and "self-registered (refused)" in text and "Registration: closed" in text

    assert ok("admin", "nodes", "register", node)["action"] == "unchanged"
    moved = ok("admin", "nodes", "register", node, "--url", "http://10.0.0.6:9100")
    assert moved["action"] == "updated" and moved["registration_closed_now"] is False
    assert moved["changes"] == {"url": ["http://10.0.0.5:9100", "http://10.0.0.6:9100"]}

    assert ok("admin", "nodes", "retire", node) == {"action": "retired", "node": node, "retired": True}
    assert ok("admin", "nodes", "retire", node)["action"] == "unchanged"
    assert "no node" in refused("admin", "nodes", "retire", Account.create().address)
    back = ok("admin", "nodes", "register", node)
    assert back["changes"] == {"retired": [True, False]}

    adopted = ok("admin", "nodes", "register", joined)
    assert adopted["changes"] == {"registered_by": ["heartbeat", "operator"]}


def heartbeat(service: str, key: LocalAccount, url: str = "http://127.0.0.1:9") -> httpx.Response:
    beat = NodeHeartbeat(node=key.address, url=url, models=["m-small"], tier="edge", region="eu-west", capacity=2,
                         running=0, waiting=0, timestamp=int(time.time()), signature="0x")
    signature = "0x" + key.sign_message(encode_defunct(text=beat.signing_text())).signature.hex()
    return httpx.post(service + HEARTBEAT_PATH, json=beat.model_copy(update={"signature": signature}).model_dump(),
                      timeout=10)


def test_heartbeats_are_open_until_an_operator_registers_a_node(home: Path, fresh_db: str, service: str,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", fresh_db)
    walk_in, vetted = Account.create(), Account.create()
    assert heartbeat(service, walk_in).status_code == 200  # open registration: any signed heartbeat joins

    ok("admin", "nodes", "register", vetted.address, *NODE_OPTIONS)
    refused_beat = heartbeat(service, walk_in)
    assert refused_beat.status_code == 403
    assert refused_beat.json()["error"]["code"] == "node_not_registered"
    assert f"sluice admin nodes register {walk_in.address}" in refused_beat.json()["error"]["message"]

    assert heartbeat(service, vetted, url="http://10.0.0.7:9100").status_code == 200
    shown = {n["address"]: n for n in ok("admin", "nodes", "list")["nodes"]}[vetted.address]
    assert shown["registered_by"] == "operator" and shown["url"] == "http://10.0.0.7:9100"
    assert shown["last_heartbeat_age_seconds"] is not None and shown["last_heartbeat_age_seconds"] < 60

    ok("admin", "nodes", "retire", vetted.address)
    retired = heartbeat(service, vetted)
    assert retired.status_code == 403 and retired.json()["error"]["code"] == "node_retired"
    ok("admin", "nodes", "register", vetted.address)
    assert heartbeat(service, vetted).status_code == 200
