"""The redemption service's app factory: state built once in the lifespan, one error envelope.

`create_app(settings)` wires the routes; the lifespan connects to the chain, the
database (migrating it) and the nodes, starts the chain follower thread (mirror and indexer)
and the housekeeping loops (`redemption.background`), and stops them all on the way out.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
from fastapi import FastAPI
from prometheus_client import start_http_server
from psycopg_pool import AsyncConnectionPool

from ledger.db import migrate
from ledger.errors import LedgerError
from redemption.api.billable import ServiceApp, billable_app
from redemption.api.cors import PublicCors
from redemption.api.error_handlers import install_error_handlers
from redemption.api.openapi import install_docs
from redemption.api.portal import install_portal
from redemption.api.routes import audit, catalog, completions, internal, keys, ops, usage
from redemption.background import refresh_catalog, start_follower, start_housekeeping, wait_for_mirror
from redemption.config import ServiceSettings
from redemption.metrics import CallCounter, ServiceMetrics
from redemption.state import build_state

# Every route of the service (tests/redemption/test_public_api.py checks that OpenAPI documents each one).
ROUTERS = tuple(resource.router for resource in (catalog, completions, internal, audit, usage, keys, ops))
DESCRIPTION = (
    "OpenAI-compatible inference paid in compute tokens. Every billable call, account read and audit read is "
    "signed: five Sluice-* headers carrying an EIP-712 `Redemption(payer, bodyHash, maxCost, nonce, deadline)` "
    "signature under the domain of `/.well-known/sluice.json` (account and audit reads: empty body, maxCost 0). "
    "Refusals use the OpenAI error envelope with a stable code (`x-sluice-error-codes`)."
)


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
            cookie_jar=aiohttp.DummyCookieJar(),  # nodes set no cookies; no jar to filter on every request
        )
        state = build_state(settings, pool, client)
        app.state.sluice = state
        follower_thread = start_follower(state)
        if state.mirror is not None:
            await wait_for_mirror(state, 30.0)
        await refresh_catalog(state)
        state.tasks = start_housekeeping(state)
        settle_garbage_collector()
        metrics_server = None
        if settings.metrics_port is not None:  # operator-only: /metrics leaves the public API
            metrics_server, _ = start_http_server(settings.metrics_port, settings.metrics_host,
                                                  registry=state.metrics.registry)
        try:
            yield
        finally:
            if metrics_server is not None:
                metrics_server.shutdown()
            state.stop.set()
            for task in state.tasks:
                task.cancel()
            for task in state.tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            if follower_thread is not None:
                await asyncio.to_thread(follower_thread.join, 10)
            state.dispatcher.close()
            await client.close()
            await pool.close()

    app = ServiceApp(title="Sluice redemption service", version="1", lifespan=lifespan, docs_url=None,
                     redoc_url=None, description=DESCRIPTION)
    for router in ROUTERS:
        app.include_router(router)
    install_error_handlers(app)
    install_docs(app)
    install_portal(app, settings.portal_dir)
    app.add_middleware(CallCounter, metrics=lambda: _metrics_of(app))
    # Added last, so outermost: a preflight is answered before anything counts it.
    app.add_middleware(PublicCors, origins=settings.allowed_origins)
    app.billable = billable_app(app, settings.allowed_origins, lambda: _metrics_of(app))
    return app


# Young-generation collections every GC_THRESHOLD container allocations instead of CPython's 700: a call
# allocates a few thousand, and the default ran a collection every few calls (3 % of the service's CPU at c=64).
GC_THRESHOLD = (20_000, 10, 10)


def settle_garbage_collector() -> None:
    """Once started: move what start-up built (modules, the app, the clients, the mirror) out of the collector's
    sight, so the older generations' collections scan only what calls leave behind, and collect less often."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLD)


def _metrics_of(app: FastAPI) -> ServiceMetrics | None:
    """The running service's metrics (None before the lifespan built its state)."""
    state = getattr(app.state, "sluice", None)
    return None if state is None else state.metrics
