"""Operations endpoints: liveness with the followers' lag, and the Prometheus metrics."""

from __future__ import annotations

import os
from typing import Any

from fastapi import APIRouter
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.responses import Response

from redemption import errors
from redemption.api.deps import State

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
