"""CORS for the public API only, so a browser page (a wallet-signed call) can reach the service.

Origins come from `SLUICE_CORS_ORIGINS` (comma-separated, or `*`); with none set the service sends
no CORS headers and a browser's preflight is refused. Only the public routes take part: `/v1/*`,
`/.well-known/*` and `/audit/*`. The node-facing `/internal/*` routes (and /health, /metrics,
/docs) never answer a preflight or carry an Access-Control header: browsers never need them.

A preflight from an allowed origin is answered 204 with the methods and every header a signed
call sends (the five `Sluice-*` signing headers, `Sluice-Tier`, `Sluice-Region`, `Content-Type`);
from any other origin 403 `cors_origin_not_allowed`. Actual responses to an allowed origin expose
`Sluice-Job-Id`, `Sluice-Cost` and `Retry-After` to the page.
"""

from __future__ import annotations

from starlette.datastructures import Headers, MutableHeaders
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ledger.protocol.signed_call import SIGNED_HEADERS
from redemption.errors import error_body

PUBLIC_PREFIXES = ("/v1/", "/.well-known/", "/audit/")
ALLOWED_METHODS = "GET, POST, PUT, DELETE, OPTIONS"
ALLOWED_HEADERS = ", ".join((*SIGNED_HEADERS, "Sluice-Tier", "Sluice-Region", "Content-Type", "Authorization"))
EXPOSED_HEADERS = "Sluice-Job-Id, Sluice-Cost, Retry-After"
MAX_AGE = "600"


def is_public(path: str) -> bool:
    return path.startswith(PUBLIC_PREFIXES)


class PublicCors:
    """Pure ASGI middleware: streamed responses pass through untouched apart from their start headers."""

    def __init__(self, app: ASGIApp, origins: frozenset[str]) -> None:
        self.app = app
        self.origins = origins
        self.any_origin = "*" in origins

    def allows(self, origin: str) -> bool:
        return self.any_origin or origin.rstrip("/") in self.origins

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not is_public(scope["path"]):
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        origin = headers.get("origin")
        if origin is None:
            await self.app(scope, receive, send)
            return
        if scope["method"] == "OPTIONS" and "access-control-request-method" in headers:
            await self.preflight(origin)(scope, receive, send)
            return
        if not self.allows(origin):
            await self.app(scope, receive, send)
            return

        async def send_with_cors(message: Message) -> None:
            if message["type"] == "http.response.start":
                out = MutableHeaders(scope=message)
                out["Access-Control-Allow-Origin"] = "*" if self.any_origin else origin
                out["Access-Control-Expose-Headers"] = EXPOSED_HEADERS
                if not self.any_origin:
                    out.add_vary_header("Origin")
            await send(message)

        await self.app(scope, receive, send_with_cors)

    def preflight(self, origin: str) -> Response:
        if not self.allows(origin):
            return JSONResponse(error_body(
                f"origin {origin} may not call this API from a browser; the operator allows origins with "
                "SLUICE_CORS_ORIGINS", "invalid_request_error", "cors_origin_not_allowed"),
                status_code=403, headers={"Vary": "Origin"})
        return Response(status_code=204, headers={
            "Access-Control-Allow-Origin": "*" if self.any_origin else origin,
            "Access-Control-Allow-Methods": ALLOWED_METHODS,
            "Access-Control-Allow-Headers": ALLOWED_HEADERS,
            "Access-Control-Max-Age": MAX_AGE,
            "Vary": "Origin",
        })
