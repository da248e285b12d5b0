"""Settlement metrics, read from PostgreSQL at scrape time.

Every figure comes from the settlement tables, so any number of workers (and `sluice status`)
report the same values, and restarts lose nothing. `SettlementCollector` is the Prometheus
view (served by `sluice worker`); `settlement_status` is the same snapshot as a dict.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

import psycopg
from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from ledger.settlement.settings import SettlementSettings

log = logging.getLogger(__name__)

# Gauges over "recent" batches (sizes, gas, lag) look this far back.
RECENT_WINDOW_S = 300

SNAPSHOT_SQL = """
SELECT
    (SELECT count(*) FROM settlement_outbox),
    -- clock_timestamp(), not now(): inside a transaction now() is its start, which may precede a record
    -- committed meanwhile, and the age would come out negative.
    -- NULL when nothing is unsettled (greatest() alone ignores a NULL and would say 0).
    (SELECT CASE WHEN min(u.finished_at) IS NOT NULL
                 THEN greatest(extract(epoch FROM clock_timestamp() - min(u.finished_at)), 0) END
       FROM usage_records u WHERE u.status IN ('metered', 'batched')),
    (SELECT count(*) FROM settlement_batches WHERE status = 'confirmed' AND released_at IS NULL),
    (SELECT count(*) FROM settlement_attempts WHERE action = 'failed'),
    (SELECT count(*) FROM debts WHERE cleared_at IS NULL),
    (SELECT coalesce(sum(owed - paid), 0) FROM debts WHERE cleared_at IS NULL),
    (SELECT count(*) FROM suspended_accounts)
"""
OPEN_SQL = """
SELECT status, count(*), coalesce(sum(receipt_count), 0) FROM settlement_batches
WHERE status <> 'confirmed' GROUP BY status
"""
TOTALS_SQL = """
SELECT kind, count(*), coalesce(sum(receipt_count), 0), coalesce(sum(item_count), 0), coalesce(sum(gas_used), 0)
FROM settlement_batches WHERE status = 'confirmed' GROUP BY kind
"""
RECENT_SQL = """
SELECT count(*), coalesce(sum(receipt_count), 0), coalesce(sum(item_count), 0), coalesce(sum(gas_used), 0),
       max(confirmed_at)
FROM settlement_batches WHERE status = 'confirmed' AND confirmed_at > now() - make_interval(secs => %(window)s)
"""
LAG_SQL = """
SELECT percentile_cont(ARRAY[0.5, 0.99]) WITHIN GROUP (ORDER BY extract(epoch FROM b.confirmed_at - u.finished_at))
FROM settlement_batches b JOIN usage_records u ON u.batch_id = b.batch_id
WHERE b.kind = 'usage' AND b.status = 'confirmed' AND b.confirmed_at > now() - make_interval(secs => %(window)s)
"""
# The cost of the metered records not yet in a confirmed batch (base units).
BACKLOG_AMOUNT_SQL = "SELECT coalesce(sum(cost), 0) FROM usage_records WHERE status IN ('metered', 'batched')"

# The nodes with their heartbeats and queues, and the settlement workers that announced themselves
# (ledger.settlement.presence): read by `sluice status` and the service's GET /v1/operations.
HEARTBEAT_STALE_S = 15.0  # a node silent this long is shown stale (the service stops routing to it)
WORKER_STALE_S = 10.0  # five missed heartbeats (ledger.settlement.presence.HEARTBEAT_S = 2 s)
NODES_SQL = """
SELECT '0x' || encode(node, 'hex'), url, tier, region, capacity, running, waiting,
       extract(epoch FROM now() - last_heartbeat)::float8, retired
FROM nodes ORDER BY retired, tier, url
"""
WORKERS_SQL = """
SELECT name, pid, concurrency, beat, extract(epoch FROM clock_timestamp() - heartbeat_at)::float8
FROM settlement_workers ORDER BY name
"""



def nodes_from_rows(rows: Iterable[Any]) -> list[dict[str, Any]]:
    """`NODES_SQL`'s rows as JSON-ready dicts, each with its health: ok, stale or retired."""
    return [{"node": r[0], "url": r[1], "tier": r[2], "region": r[3], "capacity": int(r[4]), "running": int(r[5]),
             "waiting": int(r[6]), "heartbeat_age_seconds": None if r[7] is None else round(float(r[7]), 1),
             "retired": bool(r[8]),
             "health": "retired" if r[8] else ("stale" if r[7] is None or r[7] > HEARTBEAT_STALE_S else "ok")}
            for r in rows]


def workers_from_rows(rows: Iterable[Any]) -> list[dict[str, Any]]:
    """`WORKERS_SQL`'s rows as JSON-ready dicts; `up` is false once a worker missed five heartbeats."""
    return [{"name": str(r[0]), "pid": int(r[1]), "concurrency": int(r[2]), "beat": bool(r[3]),
             "heartbeat_age_seconds": round(float(r[4]), 1), "up": float(r[4]) <= WORKER_STALE_S}
            for r in rows]


@dataclass
class SettlementSnapshot:
    """Where settlement stands, as the database says."""

    waiting_records: int = 0
    oldest_unsettled_seconds: float | None = None
    open_batches: dict[str, int] = field(default_factory=dict)  # status -> batches
    open_records: dict[str, int] = field(default_factory=dict)  # status -> records in them
    confirmed_batches: dict[str, int] = field(default_factory=dict)  # kind -> batches
    settled_records: int = 0
    settled_items: int = 0
    gas_used: int = 0
    unreleased_batches: int = 0
    failures: int = 0
    outstanding_debts: int = 0
    outstanding_debt_amount: int = 0
    backlog_amount: int = 0  # base units: the cost of the backlog's records
    suspended_accounts: int = 0
    recent_batches: int = 0
    recent_batch_records: float | None = None
    recent_batch_items: float | None = None
    recent_gas_per_item: float | None = None
    recent_gas_per_record: float | None = None
    lag_p50_seconds: float | None = None
    lag_p99_seconds: float | None = None
    last_confirmed_at: str | None = None

    @property
    def backlog_records(self) -> int:
        """Metered records not yet in a confirmed batch."""
        return self.waiting_records + sum(self.open_records.values())

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "backlog_records": self.backlog_records}


SNAPSHOT_QUERIES: tuple[tuple[str, str, bool], ...] = (
    # name, SQL, whether it takes the recent window
    ("snapshot", SNAPSHOT_SQL, False), ("open", OPEN_SQL, False), ("totals", TOTALS_SQL, False),
    ("recent", RECENT_SQL, True), ("lag", LAG_SQL, True), ("backlog_amount", BACKLOG_AMOUNT_SQL, False),
)


def read_snapshot(conn: psycopg.Connection[Any], window: float = RECENT_WINDOW_S) -> SettlementSnapshot:
    rows = {name: conn.execute(sql, {"window": window} if windowed else None).fetchall()
            for name, sql, windowed in SNAPSHOT_QUERIES}
    return snapshot_from_rows(rows)


async def read_snapshot_async(conn: psycopg.AsyncConnection[Any],
                              window: float = RECENT_WINDOW_S) -> SettlementSnapshot:
    """`read_snapshot` on an async connection (the redemption service's pool)."""
    rows = {}
    for name, sql, windowed in SNAPSHOT_QUERIES:
        rows[name] = await (await conn.execute(sql, {"window": window} if windowed else None)).fetchall()
    return snapshot_from_rows(rows)


def snapshot_from_rows(rows: dict[str, list[Any]]) -> SettlementSnapshot:
    snap = SettlementSnapshot()
    row = rows["snapshot"][0]
    snap.waiting_records = int(row[0])
    snap.oldest_unsettled_seconds = None if row[1] is None else float(row[1])
    snap.unreleased_batches, snap.failures, snap.outstanding_debts = int(row[2]), int(row[3]), int(row[4])
    snap.outstanding_debt_amount, snap.suspended_accounts = int(row[5]), int(row[6])
    snap.backlog_amount = int(rows["backlog_amount"][0][0])
    for status, batches, records in rows["open"]:
        snap.open_batches[str(status)] = int(batches)
        snap.open_records[str(status)] = int(records)
    for kind, batches, records, items, gas in rows["totals"]:
        snap.confirmed_batches[str(kind)] = int(batches)
        snap.settled_records += int(records) if kind == "usage" else 0
        snap.settled_items += int(items)
        snap.gas_used += int(gas)
    recent = rows["recent"][0] if rows["recent"] else None
    if recent is not None and int(recent[0]) > 0:
        batches, records, items, gas = int(recent[0]), int(recent[1]), int(recent[2]), int(recent[3])
        snap.recent_batches = batches
        snap.recent_batch_records = records / batches
        snap.recent_batch_items = items / batches
        snap.recent_gas_per_item = gas / items if items else None
        snap.recent_gas_per_record = gas / records if records else None
        snap.last_confirmed_at = recent[4].isoformat() if recent[4] is not None else None
    lag = rows["lag"][0] if rows["lag"] else None
    if lag is not None and lag[0] is not None:
        snap.lag_p50_seconds, snap.lag_p99_seconds = float(lag[0][0]), float(lag[0][1])
    return snap


def settlement_status(settings: SettlementSettings) -> dict[str, Any] | None:
    """The settlement snapshot for `sluice status` (JSON-ready); None when the database does not answer."""
    try:
        with psycopg.connect(settings.effective_database_url, autocommit=True, connect_timeout=2) as conn:
            return read_snapshot(conn).to_json()
    except psycopg.Error:
        return None


def status_lines(status: dict[str, Any]) -> list[str]:
    """`settlement_status` as a few human lines."""

    def secs(value: Any) -> str:
        return "-" if value is None else f"{value:.2f} s"

    def num(value: Any, fmt: str = ",.0f") -> str:
        return "-" if value is None else format(value, fmt)

    open_batches = ", ".join(f"{n} {s}" for s, n in sorted(status["open_batches"].items())) or "none"
    # Short lines: `sluice status` fits 80 columns.
    return [
        f"backlog: {status['backlog_records']:,} records ({status['waiting_records']:,} waiting for a cut),"
        f" oldest unsettled {secs(status['oldest_unsettled_seconds'])}",
        f"open batches: {open_batches}; {status['unreleased_batches']} confirmed await the mirror",
        f"settled: {status['settled_records']:,} records in {sum(status['confirmed_batches'].values()):,} batches;"
        f" failures {status['failures']:,}",
        f"last {RECENT_WINDOW_S // 60} min: {status['recent_batches']} batches of"
        f" {num(status['recent_batch_records'])} records / {num(status['recent_batch_items'])} items",
        f"  gas {num(status['recent_gas_per_item'])} per item / {num(status['recent_gas_per_record'])} per record;"
        f" lag p50 {secs(status['lag_p50_seconds'])} p99 {secs(status['lag_p99_seconds'])}",
        f"debts: {status['outstanding_debts']} outstanding ({status['outstanding_debt_amount']} base units);"
        f" {status['suspended_accounts']} accounts suspended",
    ]


class SettlementCollector(Collector):
    """Prometheus collector: one database snapshot per scrape."""

    def __init__(self, db_url: str) -> None:
        self.db_url = db_url

    def collect(self) -> Iterable[Any]:
        try:
            with psycopg.connect(self.db_url, autocommit=True, connect_timeout=2) as conn:
                snap = read_snapshot(conn)
        except psycopg.Error as exc:
            log.warning("settlement metrics: database unavailable: %s", exc)
            yield GaugeMetricFamily("sluice_settlement_database_up", "Whether the settlement database answered", 0)
            return
        yield GaugeMetricFamily("sluice_settlement_database_up", "Whether the settlement database answered", 1)
        backlog = GaugeMetricFamily("sluice_settlement_backlog_records",
                                    "Metered records not yet in a confirmed batch, by where they wait",
                                    labels=["state"])
        backlog.add_metric(["waiting"], snap.waiting_records)
        for status in ("cut", "submitted", "failed"):
            backlog.add_metric([status], snap.open_records.get(status, 0))
        yield backlog
        open_batches = GaugeMetricFamily("sluice_settlement_open_batches", "Unconfirmed batches by status",
                                         labels=["status"])
        for status in ("cut", "submitted", "failed"):
            open_batches.add_metric([status], snap.open_batches.get(status, 0))
        yield open_batches
        yield GaugeMetricFamily("sluice_settlement_oldest_unsettled_seconds",
                                "Age of the oldest metered record not yet settled",
                                snap.oldest_unsettled_seconds or 0.0)
        batches = CounterMetricFamily("sluice_settlement_batches", "Confirmed batches", labels=["kind"])
        for kind in ("usage", "debt"):
            batches.add_metric([kind], snap.confirmed_batches.get(kind, 0))
        yield batches
        yield CounterMetricFamily("sluice_settlement_records", "Usage records settled", snap.settled_records)
        yield CounterMetricFamily("sluice_settlement_items", "Batch items (payer, spender) settled",
                                  snap.settled_items)
        yield CounterMetricFamily("sluice_settlement_gas", "Gas used by confirmed settlement transactions",
                                  snap.gas_used)
        yield CounterMetricFamily("sluice_settlement_failures", "Failed settlement attempts (retried)", snap.failures)
        recent = f" (batches confirmed in the last {RECENT_WINDOW_S} s)"
        yield GaugeMetricFamily("sluice_settlement_batch_size_records", "Records per batch" + recent,
                                snap.recent_batch_records or 0.0)
        yield GaugeMetricFamily("sluice_settlement_batch_size_items", "Items per batch" + recent,
                                snap.recent_batch_items or 0.0)
        yield GaugeMetricFamily("sluice_settlement_gas_per_item", "Gas per settled item" + recent,
                                snap.recent_gas_per_item or 0.0)
        yield GaugeMetricFamily("sluice_settlement_gas_per_record", "Gas per settled record" + recent,
                                snap.recent_gas_per_record or 0.0)
        lag = GaugeMetricFamily("sluice_settlement_lag_seconds", "Metered to confirmed" + recent,
                                labels=["quantile"])
        lag.add_metric(["0.5"], snap.lag_p50_seconds or 0.0)
        lag.add_metric(["0.99"], snap.lag_p99_seconds or 0.0)
        yield lag
        yield GaugeMetricFamily("sluice_settlement_unreleased_batches",
                                "Confirmed batches whose burn the chain mirror has not seen yet",
                                snap.unreleased_batches)
        yield GaugeMetricFamily("sluice_settlement_outstanding_debts", "Unpaid shortfalls", snap.outstanding_debts)
        yield GaugeMetricFamily("sluice_settlement_suspended_accounts", "Accounts refused new calls",
                                snap.suspended_accounts)


def metrics_registry(settings: SettlementSettings) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(SettlementCollector(settings.effective_database_url))
    return registry


def serve_metrics(settings: SettlementSettings, port: int) -> None:
    """Serve the settlement metrics at http://127.0.0.1:`port`/metrics from a daemon thread."""
    start_http_server(port, addr="127.0.0.1", registry=metrics_registry(settings))
