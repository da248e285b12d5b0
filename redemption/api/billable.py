"""The billable calls' own path through the ASGI app, in front of FastAPI's middleware stack.

`POST /v1/chat/completions` and `POST /v1/completions` carry all the traffic. FastAPI wraps every request
in its telemetry, body-limit, exception and exit-stack middleware and a route search, which together
cost more CPU than verifying the call's signature; these two need none of it. They get exactly what
the rest of the app gives them: the same CORS (`PublicCors`), the same call counting (`CallCounter`),
the same error envelopes (`error_for`) and, for an exception nobody names, Starlette's plain 500.
Every other request (and an OPTIONS preflight or a GET on these paths) goes through FastAPI as before.
"""

from __future__ import annotations

from collections.abc import Callable

from fastapi import FastAPI
from starlette.middleware.errors import ServerErrorMiddleware
from starlette.types import ASGIApp, Receive, Scope, Send

from redemption.api.cors import PublicCors
from redemption.api.error_handlers import NAMED, error_for
from redemption.calls import handle_call
from redemption.metrics import CALL_ENDPOINTS, CallCounter, ServiceMetrics


def billable_path(scope: Scope) -> bool:
    return scope["type"] == "http" and scope["method"] == "POST" and scope["path"] in CALL_ENDPOINTS


def billable_app(app: FastAPI, origins: frozenset[str], metrics: Callable[[], ServiceMetrics | None]) -> ASGIApp:
    """The ASGI app that answers the billable routes of `app` (whose lifespan built `app.state.sluice`)."""

    async def answer(scope: Scope, receive: Receive, send: Send) -> None:
        state = app.state.sluice
        state.gather.opened()  # a stream stays open until its relay ends
        try:
            try:
                response = await handle_call(scope, receive, state, scope["path"])
            except NAMED as exc:
                response = error_for(exc, metrics())
            await response(scope, receive, send)
        finally:
            state.gather.closed()

    # Outermost to innermost, as create_app stacks them for every other route.
    return ServerErrorMiddleware(PublicCors(CallCounter(answer, metrics=metrics), origins=origins))


class ServiceApp(FastAPI):
    """FastAPI, with the billable routes answered by `billable` before its middleware stack."""

    billable: ASGIApp | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.billable is not None and billable_path(scope):
            scope["app"] = self
            await self.billable(scope, receive, send)
            return
        await super().__call__(scope, receive, send)


