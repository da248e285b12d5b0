"""`sluice admin nodes`: the registry of inference nodes, each known by its receipt key.

A node's address is the key that signs its usage receipts and heartbeats. Nodes join either
by themselves, with a signed heartbeat (open registration: how the embedded stack's simulated
nodes join), or because the operator registered them here. Once the operator has registered any
node, the service accepts heartbeats only from operator-registered nodes that are not retired
(`redemption/api/routes/internal.py`). These are database changes, not on-chain ones; each
command prints what it changed.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

import typer

from ledger.cli.common import JsonOpt, checksum_address, explained
from ledger.cli.output import console, print_json
from ledger.domain import TIER_NAMES

app = typer.Typer(help="Inference nodes: list them with their receipt keys, register or retire one.",
                  no_args_is_help=True)

# `nodes.last_heartbeat` is NOT NULL and the service reads its age as liveness, so a node the operator
# registered before it ever sent a heartbeat carries this timestamp: never seen, never routed to.
NEVER = "1970-01-01 00:00:00+00"

ModelOpt = typer.Option(None, "--model", help="a model it serves (repeat for several)")

_COLUMNS = ("SELECT node, url, models, tier, region, capacity, registered_by, retired, registered_at,"
            f" CASE WHEN last_heartbeat <= '{NEVER}' THEN NULL"
            " ELSE floor(extract(epoch FROM now() - last_heartbeat))::bigint END FROM nodes")


@dataclass(frozen=True)
class NodeRow:
    address: str
    url: str
    models: list[str]
    tier: str
    region: str
    capacity: int
    registered_by: str
    retired: bool
    registered_at: str
    last_heartbeat_age_seconds: int | None


def _row(raw: tuple[Any, ...]) -> NodeRow:
    from eth_utils.address import to_checksum_address

    registered_at: datetime = raw[8]
    return NodeRow(str(to_checksum_address(bytes(raw[0]))), raw[1], list(raw[2]), raw[3], raw[4], int(raw[5]),
                   raw[6], bool(raw[7]), registered_at.isoformat(), None if raw[9] is None else int(raw[9]))


def _age(seconds: int | None) -> str:
    if seconds is None:
        return "never"
    if seconds < 120:
        return f"{seconds} s ago"
    if seconds < 7200:
        return f"{seconds // 60} min ago"
    return f"{seconds // 3600} h ago"


@app.command("list")
@explained
def list_nodes(as_json: bool = JsonOpt) -> None:
    """List every node: receipt key, URL, models, tier, region, last heartbeat, and whether it is retired."""
    from ledger.config import get_settings
    from ledger.db import connect

    with connect(get_settings().effective_database_url) as conn:
        rows = [_row(r) for r in conn.execute(_COLUMNS + " ORDER BY retired, registered_at, node").fetchall()]
    closed = any(r.registered_by == "operator" for r in rows)
    if as_json:
        print_json({"registration": "closed" if closed else "open", "nodes": [asdict(r) for r in rows]})
        return
    if not rows:
        console.print("No nodes registered.")
    for r in rows:
        status = "retired" if r.retired else "active"
        if r.registered_by == "heartbeat":
            status += ", self-registered" + (" (refused)" if closed and not r.retired else "")
        console.print(f"{r.address}  {status}  {r.tier}  {r.region}  last heartbeat "
                      f"{_age(r.last_heartbeat_age_seconds)}\n  {r.url}  models: {', '.join(r.models)}",
                      soft_wrap=True, highlight=False)
    console.print("Registration: " + ("closed — heartbeats are accepted only from nodes registered here."
                                      if closed else "open — any node that signs its heartbeat joins "
                                      "(register one with `sluice admin nodes register` to close it)."), soft_wrap=True)


def _changes(before: NodeRow, after: NodeRow) -> dict[str, list[Any]]:
    fields = ("url", "models", "tier", "region", "capacity", "registered_by", "retired")
    return {f: [getattr(before, f), getattr(after, f)] for f in fields if getattr(before, f) != getattr(after, f)}


@app.command("register")
@explained
def register(
    address: str = typer.Argument(..., help="the node's receipt-key address"),
    url: str | None = typer.Option(None, "--url", help="base URL of the node agent, e.g. http://10.0.0.5:9100"),
    models: list[str] | None = ModelOpt,
    tier: str | None = typer.Option(None, "--tier", help="edge, regional or cloud"),
    region: str | None = typer.Option(None, "--region", help="where it runs, e.g. eu-west"),
    capacity: int | None = typer.Option(None, "--capacity", min=1, help="concurrent sequences it serves"),
    as_json: bool = JsonOpt,
) -> None:
    """Register a node's receipt key so the service accepts its heartbeats (and un-retire it).

    A new node needs --url, --model, --tier and --region; for a known node (one that registered
    itself, or a retired one) options left out keep their values. The node's own heartbeats keep
    URL, models and load current afterwards. The first registration closes open registration:
    from then on only nodes registered here are accepted.
    """
    from ledger.config import get_settings
    from ledger.db import connect

    node = checksum_address(address)
    if tier is not None and tier not in TIER_NAMES:
        raise typer.BadParameter(f"tier {tier!r} must be one of {', '.join(TIER_NAMES)}", param_hint="--tier")
    if url is not None and not url.startswith(("http://", "https://")):
        raise typer.BadParameter(f"{url!r} is not an http(s) URL", param_hint="--url")
    key = bytes.fromhex(node[2:])
    with connect(get_settings().effective_database_url) as conn:
        # One registration at a time, so "was registration open?" is answered once.
        conn.execute("LOCK TABLE nodes IN SHARE ROW EXCLUSIVE MODE")
        was_closed = bool(conn.execute(
            "SELECT EXISTS (SELECT 1 FROM nodes WHERE registered_by = 'operator')").fetchone()[0])  # type: ignore[index]
        found = conn.execute(_COLUMNS + " WHERE node = %s", (key,)).fetchone()
        before = None if found is None else _row(found)
        if before is None:
            missing = [flag for flag, value in (("--url", url), ("--model", models), ("--tier", tier),
                                                ("--region", region)) if not value]
            if missing:
                raise typer.BadParameter(f"a new node needs {', '.join(missing)}", param_hint="ADDRESS")
            conn.execute(
                "INSERT INTO nodes (node, url, models, tier, region, capacity, registered_by, last_heartbeat)"
                " VALUES (%s, %s, %s, %s, %s, %s, 'operator', %s)",
                (key, url, models, tier, region, capacity or 1, NEVER),
            )
        else:
            conn.execute(
                "UPDATE nodes SET url = coalesce(%s, url), models = coalesce(%s, models), tier = coalesce(%s, tier),"
                " region = coalesce(%s, region), capacity = coalesce(%s, capacity), registered_by = 'operator',"
                " retired = false WHERE node = %s",
                (url, models or None, tier, region, capacity, key),
            )
        after = _row(conn.execute(_COLUMNS + " WHERE node = %s", (key,)).fetchone())  # type: ignore[arg-type]
        shut_out = [] if was_closed else [
            _row(r).address for r in conn.execute(
                _COLUMNS + " WHERE registered_by = 'heartbeat' AND NOT retired ORDER BY node").fetchall()
        ]
    changes = {} if before is None else _changes(before, after)
    action = "registered" if before is None else ("updated" if changes else "unchanged")
    if as_json:
        print_json({"action": action, "node": asdict(after), "changes": changes,
                    "registration_closed_now": not was_closed, "refused_self_registered": shut_out})
        return
    if action == "registered":
        console.print(f"[green]registered[/] node {node}: {after.url}, models {', '.join(after.models)}, "
                      f"{after.tier}, {after.region}", soft_wrap=True)
    elif action == "updated":
        shown = "; ".join(f"{f} {a} → {b}" for f, (a, b) in changes.items())
        console.print(f"[green]updated[/] node {node}: {shown}", soft_wrap=True)
    else:
        console.print(f"node {node} was already registered; nothing changed", soft_wrap=True)
    if not was_closed:
        console.print("Registration is now closed: the service accepts heartbeats only from nodes registered "
                      "with `sluice admin nodes register`.", soft_wrap=True)
        for other in shut_out:
            console.print(f"  {other} registered itself and is refused from now on unless you register it",
                          soft_wrap=True)


@app.command("retire")
@explained
def retire(address: str = typer.Argument(..., help="the node's receipt-key address"), as_json: bool = JsonOpt) -> None:
    """Retire a node: the service stops routing to it and refuses its heartbeats (`register` brings it back)."""
    from ledger.config import get_settings
    from ledger.db import connect

    node = checksum_address(address)
    with connect(get_settings().effective_database_url) as conn:
        found = conn.execute("SELECT retired FROM nodes WHERE node = %s FOR UPDATE", (bytes.fromhex(node[2:]),))
        row = found.fetchone()
        if row is None:
            raise ValueError(f"no node {node} is registered (see `sluice admin nodes list`)")
        if not row[0]:
            conn.execute("UPDATE nodes SET retired = true WHERE node = %s", (bytes.fromhex(node[2:]),))
    action = "unchanged" if row[0] else "retired"
    if as_json:
        print_json({"action": action, "node": node, "retired": True})
    elif action == "retired":
        console.print(f"[green]retired[/] node {node}: no new calls are routed to it and its heartbeats are "
                      "refused; calls in flight finish and are metered", soft_wrap=True)
    else:
        console.print(f"node {node} was already retired; nothing changed", soft_wrap=True)
