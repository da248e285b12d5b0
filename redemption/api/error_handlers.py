"""The one error envelope: every refusal, and every failure the service can name, as OpenAI's
`{"error": {"message", "type", "param", "code"}}` with the status its `ApiError` carries.

`error_for` is the one mapping of exceptions to envelopes: FastAPI's handlers use it, and so does the
billable calls' own path (`redemption.api.billable`), which skips FastAPI's middleware stack.
"""

from __future__ import annotations

import logging

import psycopg
import requests
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from starlette.responses import JSONResponse

from ledger.errors import LedgerError
from redemption import errors
from redemption.metrics import ServiceMetrics

log = logging.getLogger(__name__)

# The exceptions `error_for` names, most specific first (LedgerError last: its subclasses come before it).
NAMED = (errors.ApiError, ClientDisconnect, psycopg.OperationalError, requests.ConnectionError, LedgerError)


def error_response(exc: errors.ApiError) -> JSONResponse:
    return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers or None)


def error_for(exc: Exception, metrics: ServiceMetrics | None) -> JSONResponse:
    """The envelope of one of the `NAMED` exceptions; a refusal is counted by its code."""
    if isinstance(exc, errors.ApiError):
        if metrics is not None:
            metrics.refusals.labels(exc.code).inc()
        return error_response(exc)
    if isinstance(exc, ClientDisconnect):
        # The body never arrived (a body timeout closed the connection): nobody is left to read this.
        return error_response(errors.RequestTimeout("the request body did not arrive; send the whole request "
                                                    "promptly"))
    if isinstance(exc, psycopg.OperationalError):
        log.error("database unavailable: %s", exc)
        return error_response(errors.DatabaseUnavailable(
            "the service's database is unavailable; nothing was charged, retry shortly"))
    if isinstance(exc, requests.ConnectionError):
        log.error("chain unavailable: %s", exc)
        return error_response(errors.ChainUnavailable(
            "the chain is unavailable for a balance check; nothing was charged, retry shortly"))
    assert isinstance(exc, LedgerError), exc
    log.error("ledger error: %s", exc)
    return error_response(errors.ChainUnavailable(f"{exc}; nothing was charged, retry shortly"))


def metrics_of(request: Request) -> ServiceMetrics | None:
    state = getattr(request.app.state, "sluice", None)
    metrics: ServiceMetrics | None = None if state is None else state.metrics
    return metrics


def install_error_handlers(app: FastAPI) -> None:
    async def named_error(request: Request, exc: Exception) -> JSONResponse:
        return error_for(exc, metrics_of(request))

    for kind in NAMED:
        app.add_exception_handler(kind, named_error)

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
