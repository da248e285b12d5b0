"""What `sluice status` tells an operator beyond the endpoints: every process and how it is doing.

The redemption service answers `/health` (its chain mirror and indexer run inside it); the
settlement workers announce themselves in PostgreSQL (`settlement_workers`, see
ledger.settlement.presence), which is read with the nodes' heartbeats, queue depths and the
followers' cursors in one connection; the token's pause state comes from the chain (`paused()`).
Each probe is bounded by a short timeout and reports None for what did not answer, never raising.
"""

from __future__ import annotations

import json
import urllib.request
from typing import Any

from ledger.settlement.metrics import (  # noqa: F401 (WORKER_STALE_S and HEARTBEAT_STALE_S: re-exported)
    HEARTBEAT_STALE_S,
    NODES_SQL,
    WORKER_STALE_S,
    WORKERS_SQL,
    nodes_from_rows,
    workers_from_rows,
)
from ledger.stack.probes import rpc_call

BEAT_MARK = "sluice-beat-"  # hostname prefix of a worker that runs the beat (ledger.cli.worker names it)

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


DatabaseView = tuple[list[dict[str, Any]], dict[str, dict[str, Any]], list[dict[str, Any]]]


def database_view(url: str) -> DatabaseView | None:
    """The nodes with their heartbeats and queues, the followers' cursors and the settlement workers that
    announced themselves (stale ones included, marked); None when the database is down."""
    import psycopg

    try:
        with psycopg.connect(url, autocommit=True, connect_timeout=2) as conn:
            node_rows = conn.execute(NODES_SQL).fetchall()
            cursor_rows = conn.execute(CURSORS_SQL).fetchall()
            worker_rows = conn.execute(WORKERS_SQL).fetchall()
    except psycopg.Error:
        return None
    nodes = nodes_from_rows(node_rows)
    cursors = {str(r[0]): {"block": int(r[1]), "head": int(r[2]), "lag_blocks": max(int(r[2]) - int(r[1]), 0),
                           "updated_seconds_ago": round(float(r[3]), 1)} for r in cursor_rows}
    workers = workers_from_rows(worker_rows)
    return nodes, cursors, workers
