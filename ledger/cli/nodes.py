"""`sluice admin nodes`: the operator's inference nodes in NodeRegistry, each known by its receipt key.

A node's address is the key that signs its usage receipts and heartbeats. Only keys the operator
registered here, on chain, with their endpoint URL, tier and region, receive work and meter calls;
a retired key never comes back. Every change is a transaction, and each command prints its hash.
`list` adds the service's last heartbeat of each node when the database is at hand.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import typer

from ledger.cli.common import (
    JsonOpt,
    KeystoreOpt,
    checksum_address,
    explained,
    open_ledger,
    open_reader,
    operator_key,
    report_tx,
)
from ledger.cli.output import console, fail, print_json
from ledger.domain import TIER_NAMES

app = typer.Typer(help="Inference nodes in NodeRegistry: list them, register, move or retire one.",
                  no_args_is_help=True)

EndpointOpt = typer.Option(..., "--endpoint", "--url", help="the node agent's base URL, e.g. http://10.0.0.5:9100")
TierOpt = typer.Option(..., "--tier", help="edge, regional or cloud")
RegionOpt = typer.Option(..., "--region", help="where it runs, e.g. eu-west")


@dataclass(frozen=True)
class NodeRow:
    address: str
    status: str
    endpoint: str
    tier: str
    region: str
    registered_block: int
    retired_block: int | None
    last_heartbeat_age_seconds: int | None


def _heartbeats() -> dict[str, int]:
    """Seconds since each node's last heartbeat, from the service's database (empty when it is not reachable)."""
    from eth_utils.address import to_checksum_address

    from ledger.config import get_settings
    from ledger.db import connect

    try:
        with connect(get_settings().effective_database_url, connect_timeout=3) as conn:
            rows = conn.execute("SELECT node, floor(extract(epoch FROM now() - last_heartbeat))::bigint FROM nodes"
                                ).fetchall()
    except Exception:  # the registry is on chain; heartbeats are a courtesy
        return {}
    return {str(to_checksum_address(bytes(r[0]))): int(r[1]) for r in rows}


def _check_tier(tier: str) -> None:
    if tier not in TIER_NAMES:
        fail(f"tier must be one of {', '.join(TIER_NAMES)}, not {tier!r}")


@app.command("list")
@explained
def list_nodes(as_json: bool = JsonOpt) -> None:
    """Every key NodeRegistry ever registered: status, endpoint, tier, region, blocks, last heartbeat."""
    records = open_reader().nodes()
    beats = _heartbeats()
    rows = [NodeRow(r.node, r.status, r.endpoint, r.tier, r.region, r.registered_block,
                    r.retired_block or None, beats.get(r.node)) for r in records]
    if as_json:
        print_json({"nodes": [asdict(r) for r in rows]})
        return
    if not rows:
        console.print("no nodes registered; register one with `sluice admin nodes register ADDRESS --endpoint URL "
                      "--tier TIER --region REGION`")
        return
    for r in rows:
        age = "never" if r.last_heartbeat_age_seconds is None else f"{r.last_heartbeat_age_seconds} s ago"
        console.print(f"{r.address}  {r.status:<8} {r.tier:<9} {r.region:<14} {r.endpoint}  heartbeat {age}",
                      markup=False, highlight=False)


@app.command("register")
@explained
def register(address: str, endpoint: str = EndpointOpt, tier: str = TierOpt, region: str = RegionOpt,
             keystore: Path | None = KeystoreOpt, as_json: bool = JsonOpt) -> None:
    """Register a node's receipt key at its endpoint (a transaction); a retired key cannot come back."""
    node = checksum_address(address, "node address")
    _check_tier(tier)
    ledger = open_ledger()
    known = ledger.node_of(node)
    if known.status != "unknown":
        fail(f"node {node} is {known.status} in NodeRegistry already",
             "move an active node with `sluice admin nodes update`; a retired key never returns: use a new key"
             if known.status == "active" else "a retired key never returns: give the node a new key")
    tx = ledger.register_node(operator_key(keystore), node, endpoint, tier, region)
    report_tx("registered", tx.tx_hash, tx.block_number, as_json, node=node, endpoint=endpoint, tier=tier,
              region=region)


@app.command("update")
@explained
def update(address: str, endpoint: str = EndpointOpt, tier: str = TierOpt, region: str = RegionOpt,
           keystore: Path | None = KeystoreOpt, as_json: bool = JsonOpt) -> None:
    """Move an active node to another endpoint, tier or region (a transaction)."""
    node = checksum_address(address, "node address")
    _check_tier(tier)
    ledger = open_ledger()
    if ledger.node_of(node).status != "active":
        fail(f"node {node} is not an active registered node", "register it first")
    tx = ledger.update_node(operator_key(keystore), node, endpoint, tier, region)
    report_tx("updated", tx.tx_hash, tx.block_number, as_json, node=node, endpoint=endpoint, tier=tier,
              region=region)


@app.command("retire")
@explained
def retire(address: str, keystore: Path | None = KeystoreOpt, as_json: bool = JsonOpt) -> None:
    """Retire a node for good (a transaction): it gets no more work and its receipts meter nothing."""
    node = checksum_address(address, "node address")
    ledger = open_ledger()
    status = ledger.node_of(node).status
    if status != "active":
        fail(f"node {node} is {'already retired' if status == 'retired' else 'not registered'}")
    tx = ledger.retire_node(operator_key(keystore), node)
    report_tx("retired", tx.tx_hash, tx.block_number, as_json, node=node)
