"""What `sluice status` tells an operator beyond the endpoints: every process and how it is doing.

The redemption service answers `/health` (its chain mirror and indexer run inside it); the
settlement workers answer a Celery `stats` broadcast over the broker (a worker that runs the beat
says so in its name, `sluice-beat-<pid>@host`, see ledger.cli.worker); the nodes' heartbeats,
queue depths and the followers' cursors are read from PostgreSQL; the token's pause state from
the chain (`paused()`). Each probe is bounded by a short timeout and reports None for what did
not answer, never raising.
"""

from __future__ import annotations

import json
import urllib.request
from typing import Any

from ledger.stack.probes import rpc_call

BEAT_MARK = "sluice-beat-"  # hostname prefix of a worker that runs the beat
WORKER_PING_TIMEOUT_S = 0.5
HEARTBEAT_STALE_S = 15.0  # a node silent this long is shown stale (the service stops routing to it)

NODES_SQL = """
SELECT '0x' || encode(node, 'hex'), url, tier, region, capacity, running, waiting,
       extract(epoch FROM now() - last_heartbeat)::float8, retired
FROM nodes ORDER BY retired, tier, url
"""
CURSORS_SQL = """
SELECT 'mirror', block, head, extract(epoch FROM now() - updated_at)::float8 FROM mirror_cursor
UNION ALL
SELECT 'indexer', block, head, extract(epoch FROM now() - updated_at)::float8 FROM indexer_cursor
"""
PAUSED_SELECTOR = "0x5c975abb"  # paused(): the first 4 bytes of keccak256("paused()") (a test checks it)


def api_health(url: str, timeout: float = 1.0) -> dict[str, Any] | None:
    """The service's /health document, or None when it does not answer."""
    try:
        with urllib.request.build_opener(urllib.request.ProxyHandler({})).open(url.rstrip("/") + "/health",
                                                                               timeout=timeout) as response:
            data = json.load(response)
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def token_paused(rpc_url: str, token: str) -> bool | None:
    """Whether the compute token is paused, or None when the chain does not answer."""
    try:
        result = rpc_call(rpc_url, "eth_call", [{"to": token, "data": PAUSED_SELECTOR}, "latest"])
        return int(str(result), 16) != 0
    except (OSError, ValueError):
        return None


def workers(broker_url: str, timeout: float = WORKER_PING_TIMEOUT_S) -> list[dict[str, Any]] | None:
    """Every settlement worker that answers over the broker, with its pid, pool size and whether it runs the
    beat; None when the broker cannot be asked."""
    from ledger.settlement.celery_app import make_app
    from ledger.settlement.settings import SettlementSettings

    app = make_app(SettlementSettings(broker_url=broker_url))
    try:
        stats = app.control.inspect(timeout=timeout).stats() or {}
    except Exception:  # kombu's errors vary by transport; status must answer regardless
        return None
    finally:
        app.close()
    return [{"name": name, "pid": info.get("pid"), "concurrency": info.get("pool", {}).get("max-concurrency"),
             "beat": name.startswith(BEAT_MARK)}
            for name, info in sorted(stats.items())]


def database_view(url: str) -> tuple[list[dict[str, Any]], dict[str, dict[str, Any]]] | None:
    """The nodes with their heartbeats and queues, and the followers' cursors; None when the database is down."""
    import psycopg

    try:
        with psycopg.connect(url, autocommit=True, connect_timeout=2) as conn:
            node_rows = conn.execute(NODES_SQL).fetchall()
            cursor_rows = conn.execute(CURSORS_SQL).fetchall()
    except psycopg.Error:
        return None
    nodes = [{"node": r[0], "url": r[1], "tier": r[2], "region": r[3], "capacity": int(r[4]), "running": int(r[5]),
              "waiting": int(r[6]), "heartbeat_age_seconds": None if r[7] is None else round(float(r[7]), 1),
              "retired": bool(r[8]),
              "health": "retired" if r[8] else ("stale" if r[7] is None or r[7] > HEARTBEAT_STALE_S else "ok")}
             for r in node_rows]
    cursors = {str(r[0]): {"block": int(r[1]), "head": int(r[2]), "lag_blocks": max(int(r[2]) - int(r[1]), 0),
                           "updated_seconds_ago": round(float(r[3]), 1)} for r in cursor_rows}
    return nodes, cursors
