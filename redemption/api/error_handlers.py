"""The one error envelope: every refusal, and every failure the service can name, as OpenAI's
`{"error": {"message", "type", "param", "code"}}` with the status its `ApiError` carries."""

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
from redemption.state import ServiceState

log = logging.getLogger(__name__)


def error_response(exc: errors.ApiError) -> JSONResponse:
    return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers or None)


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(errors.ApiError)
    async def api_error(request: Request, exc: errors.ApiError) -> JSONResponse:
        state: ServiceState | None = getattr(request.app.state, "sluice", None)
        if state is not None:
            state.metrics.refusals.labels(exc.code).inc()
        return error_response(exc)

    @app.exception_handler(ClientDisconnect)
    async def client_gone(request: Request, exc: ClientDisconnect) -> JSONResponse:
        # The body never arrived (a body timeout closed the connection): nobody is left to read this.
        return error_response(errors.RequestTimeout("the request body did not arrive; send the whole request "
                                                    "promptly"))

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
