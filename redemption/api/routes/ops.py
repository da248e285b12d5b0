"""Operations endpoints: liveness with the followers' lag, the Prometheus metrics, and the operator's signed
read of settlement, nodes and workers (`/v1/operations`, what `sluice status` shows)."""

from __future__ import annotations

import os
from typing import Any

from fastapi import APIRouter, Request
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.responses import Response

from ledger.settlement.metrics import RECENT_WINDOW_S
from redemption import errors
from redemption.api.deps import State
from redemption.audit.auth import verify_operator
from redemption.models import (
    Operations,
    OperationsDebts,
    OperationsNode,
    OperationsWorker,
    SettlementBacklog,
    SettlementLag,
    SettlementTotals,
)

router = APIRouter(tags=["ops"])


@router.get("/health")
async def health(state: State) -> dict[str, Any]:
    indexed = None if state.indexer is None else state.indexer.last_status
    follower = state.follower
    return {"status": "ok", "mirror_lag_blocks": state.mirror_lag(), "nodes": len(state.registry.nodes),
            "models": sorted(state.rates), "indexer_lag_blocks": None if indexed is None else indexed.lag,
            "pid": os.getpid(), "chain_follower": follower is not None and follower.is_follower,
            "chain_follower_pid": None if follower is None else follower.follower_pid}


@router.get("/metrics")
async def metrics(state: State) -> Response:
    """Prometheus metrics; not here when SLUICE_METRICS_PORT gives them an operator-only listener."""
    if state.settings.metrics_port is not None:
        raise errors.NotFound("metrics are served on the operator's metrics address, not on the API")
    if state.settings.api_workers > 1:
        raise errors.NotFound(f"this service runs {state.settings.api_workers} workers, each counting alone: one "
                              "worker's figures would mislead; run one worker per process (each with its own "
                              "SLUICE_METRICS_PORT) to scrape them")
    return Response(generate_latest(state.metrics.registry), media_type=CONTENT_TYPE_LATEST)


@router.get("/v1/operations")
async def operations(request: Request, state: State) -> Operations:
    """Settlement backlog, totals and lag (last 5 minutes), debts and suspensions, each node's queue and health,
    and the settlement workers (signed read: AUDITOR_ROLE or the operator's admin role)."""
    await verify_operator(request, roles=state.auditors, store=state.store, separator=state.domains.redemption,
                          max_deadline_seconds=state.settings.max_deadline_seconds)
    snap, nodes, workers = await state.store.operations()
    return Operations(
        backlog=SettlementBacklog(records=snap.backlog_records, amount=str(snap.backlog_amount),
                                  oldest_unsettled_seconds=snap.oldest_unsettled_seconds,
                                  waiting_for_cut=snap.waiting_records, open_batches=snap.open_batches,
                                  open_batch_records=snap.open_records, unreleased_batches=snap.unreleased_batches),
        settled=SettlementTotals(confirmed_batches=snap.confirmed_batches, records=snap.settled_records,
                                 items=snap.settled_items, gas_used=snap.gas_used, failures=snap.failures,
                                 last_confirmed_at=snap.last_confirmed_at),
        lag=SettlementLag(window_seconds=int(RECENT_WINDOW_S), batches=snap.recent_batches,
                          p50_seconds=snap.lag_p50_seconds, p99_seconds=snap.lag_p99_seconds),
        debts=OperationsDebts(outstanding=snap.outstanding_debts, amount=str(snap.outstanding_debt_amount),
                              suspended_accounts=snap.suspended_accounts),
        nodes=[OperationsNode(node=n["node"], url=n["url"], tier=n["tier"], region=n["region"],
                              queue_depth=n["waiting"], running=n["running"], capacity=n["capacity"],
                              heartbeat_age_seconds=n["heartbeat_age_seconds"], health=n["health"],
                              healthy=n["health"] == "ok") for n in nodes],
        workers=[OperationsWorker(**w) for w in workers],
    )
