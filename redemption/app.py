"""The redemption service's app factory: state built once in the lifespan, one error envelope.

`create_app(settings)` wires the routes; the lifespan connects to the chain, the
database (migrating it) and the nodes, starts the chain mirror in a thread and the
housekeeping loops (rates and node registry refresh, expired holds, old nonces).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import psycopg
import requests
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from psycopg_pool import AsyncConnectionPool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import JSONResponse, Response

from ledger.chain.client import Ledger
from ledger.chain.connection import connect
from ledger.chain.deployment import load_deployment
from ledger.db import migrate
from ledger.errors import LedgerError
from ledger.keys import embedded_account
from ledger.protocol.eip712 import Domains
from redemption import errors
from redemption.api.routes import audit, catalog, completions, internal, usage
from redemption.config import ServiceSettings
from redemption.dispatch import Dispatcher
from redemption.metrics import ServiceMetrics
from redemption.routing import NodeRegistry
from redemption.state import ServiceState
from redemption.store import Store

log = logging.getLogger(__name__)
DISPATCH_KEY_INDEX = 2  # embedded deployments sign dispatch tickets with dev key #2


def error_response(exc: errors.ApiError) -> JSONResponse:
    return JSONResponse(exc.body(), status_code=exc.status)


async def _every(seconds: float, stop: threading.Event, job: Callable[[], Awaitable[Any]], name: str) -> None:
    while not stop.is_set():
        try:
            await job()
        except Exception:  # housekeeping must outlive a database or chain hiccup
            log.exception("%s failed; retrying in %.0f s", name, seconds)
        await asyncio.sleep(seconds)


async def refresh_catalog(state: ServiceState) -> None:
    state.rates = await state.store.rates()
    for n in await state.store.nodes():
        state.registry.heartbeat(n["node"], n["url"], n["models"], n["tier"], n["region"], n["capacity"],
                                 n["running"], n["waiting"], age=n["age"], retired=n["retired"])
    lag = state.mirror_lag()
    state.metrics.mirror_lag.set(-1 if lag is None else lag)


def build_state(
    settings: ServiceSettings, pool: AsyncConnectionPool[Any], client: aiohttp.ClientSession
) -> ServiceState:
    w3 = connect(settings.effective_rpc_url)
    deployment = load_deployment(settings.state_dir, int(w3.eth.chain_id))
    ledger = Ledger(w3, deployment, timeout=settings.tx_timeout, confirmations=settings.confirmations)
    domains = Domains(deployment.chain_id, deployment.contracts["settlement"])
    if settings.dispatch_key is not None:
        dispatch_key = bytes.fromhex(settings.dispatch_key.get_secret_value().removeprefix("0x"))
    else:
        dispatch_key = bytes(embedded_account(DISPATCH_KEY_INDEX).key)
    from eth_account import Account

    signer = Account.from_key(dispatch_key).address
    metrics = ServiceMetrics()
    registry = NodeRegistry(settings.node_stale_seconds)
    store = Store(pool)
    dispatcher = Dispatcher(client=client, registry=registry, store=store, domains=domains, dispatch_key=dispatch_key,
                            ticket_ttl=settings.ticket_ttl_seconds, first_byte_timeout=settings.node_timeout_seconds,
                            attempts=settings.dispatch_attempts, metrics=metrics)
    return ServiceState(settings, deployment, ledger, domains, store, registry, dispatcher, client, metrics, signer)


def start_mirror(state: ServiceState) -> threading.Thread:
    from ledger.followers.mirror import ChainMirror

    state.mirror = ChainMirror(state.ledger.w3, state.ledger, state.settings.database_url or "",
                               confirmations=state.settings.confirmations)
    # The poll interval bounds how far the mirror trails the chain; an idle poll costs ~1.3 ms.
    thread: threading.Thread = state.mirror.spawn(state.stop, interval=0.05)
    return thread


def start_indexer(state: ServiceState) -> threading.Thread:
    from ledger.followers.indexer import ChainIndexer

    state.indexer = ChainIndexer(state.ledger, state.settings.database_url or "")
    return state.indexer.spawn(state.stop)  # type: ignore[no-any-return]


async def wait_for_mirror(state: ServiceState, timeout: float) -> None:
    """Give the mirror a moment to finish its first sync; calls meanwhile read the chain directly."""
    deadline = time.monotonic() + timeout
    while state.mirror.last_status is None and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    if state.mirror.last_status is None:
        log.warning("chain mirror not synced after %.0f s; reading the chain directly until it is", timeout)


def create_app(settings: ServiceSettings) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if not settings.database_url:
            raise LedgerError("DATABASE_URL is not set: the redemption service needs PostgreSQL")
        await asyncio.to_thread(migrate, settings.database_url)
        pool: AsyncConnectionPool[Any] = AsyncConnectionPool(
            settings.database_url, min_size=2, max_size=settings.db_pool_size, open=False,
            kwargs={"autocommit": True},
        )
        await pool.open(wait=True, timeout=30)
        client = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=3.0, sock_read=600.0),
            connector=aiohttp.TCPConnector(limit=1024, limit_per_host=0, keepalive_timeout=60),
            auto_decompress=False,
        )
        state = build_state(settings, pool, client)
        app.state.sluice = state
        mirror_thread = start_mirror(state) if settings.run_mirror else None
        indexer_thread = start_indexer(state) if settings.run_indexer else None
        from redemption.audit.service import AuditorRoles

        state.auditors = AuditorRoles(state.ledger, settings.auditor_cache_seconds)
        if state.mirror is not None:
            await wait_for_mirror(state, 30.0)
        await refresh_catalog(state)
        state.tasks = [
            asyncio.create_task(_every(1.0, state.stop, lambda: refresh_catalog(state), "catalog refresh")),
            asyncio.create_task(_every(5.0, state.stop, state.store.release_expired_holds, "hold expiry")),
            asyncio.create_task(_every(1.0, state.stop, state.store.release_settled, "settled release")),
            asyncio.create_task(_every(
                60.0, state.stop,
                lambda: state.store.prune_nonces(int(time.time()) - settings.max_deadline_seconds - 3600),
                "nonce pruning")),
        ]
        try:
            yield
        finally:
            state.stop.set()
            for task in state.tasks:
                task.cancel()
            for task in state.tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            if mirror_thread is not None:
                await asyncio.to_thread(mirror_thread.join, 10)
            if indexer_thread is not None:
                await asyncio.to_thread(indexer_thread.join, 10)
            await client.close()
            await pool.close()

    app = FastAPI(title="Sluice redemption service", version="1", lifespan=lifespan)
    app.include_router(catalog.router)
    app.include_router(completions.router)
    app.include_router(internal.router)
    app.include_router(audit.router)
    app.include_router(usage.router)

    @app.get("/health", tags=["ops"])
    async def health(request: Request) -> dict[str, Any]:
        state: ServiceState = request.app.state.sluice
        indexed = None if state.indexer is None else state.indexer.last_status
        return {"status": "ok", "mirror_lag_blocks": state.mirror_lag(), "nodes": len(state.registry.nodes),
                "models": sorted(state.rates), "indexer_lag_blocks": None if indexed is None else indexed.lag}

    @app.get("/metrics", tags=["ops"])
    async def metrics(request: Request) -> Response:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        state: ServiceState = request.app.state.sluice
        return Response(generate_latest(state.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.exception_handler(errors.ApiError)
    async def api_error(request: Request, exc: errors.ApiError) -> JSONResponse:
        state: ServiceState | None = getattr(request.app.state, "sluice", None)
        if state is not None:
            state.metrics.refusals.labels(exc.code).inc()
        return error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
        where = ".".join(str(p) for p in first["loc"] if p != "body") or None
        return error_response(errors.InvalidRequest(f"invalid request: {where}: {first['msg']}", where))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        body = errors.error_body(str(exc.detail), "invalid_request_error", code)
        return JSONResponse(body, status_code=exc.status_code)

    @app.exception_handler(psycopg.OperationalError)
    async def database_down(request: Request, exc: psycopg.OperationalError) -> JSONResponse:
        log.error("database unavailable: %s", exc)
        return error_response(errors.DatabaseUnavailable(
            "the service's database is unavailable; nothing was charged, retry shortly"))

    @app.exception_handler(requests.ConnectionError)
    async def chain_down(request: Request, exc: requests.ConnectionError) -> JSONResponse:
        log.error("chain unavailable: %s", exc)
        return error_response(errors.ChainUnavailable(
            "the chain is unavailable for a balance check; nothing was charged, retry shortly"))

    @app.exception_handler(LedgerError)
    async def ledger_error(request: Request, exc: LedgerError) -> JSONResponse:
        log.error("ledger error: %s", exc)
        return error_response(errors.ChainUnavailable(f"{exc}; nothing was charged, retry shortly"))

    return app
