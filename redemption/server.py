"""Run the redemption service with uvicorn, guarded against slow and numerous clients.

`GuardedProtocol` is uvicorn's httptools protocol with three limits uvicorn lacks: a request must
deliver its headers within `header_timeout_seconds` of its first byte (or of the connection) and its
body within `body_timeout_seconds` of its headers, else it gets 408 `request_timeout` and the
connection is closed (closed only, once a response has started); and at most `max_connections`
connections are open at once, the next one answered 503 `too_many_connections` and closed.
"""

from __future__ import annotations

import asyncio
from typing import Any, ClassVar

import orjson
import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from redemption.app import create_app
from redemption.config import ServiceSettings, get_service_settings
from redemption.errors import error_body
from redemption.state import WorkersWithMetricsPort


def _response(status: int, reason: str, code: str, message: str) -> bytes:
    body = orjson.dumps(error_body(message, "invalid_request_error" if status < 500 else "server_error", code))
    return (f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\nconnection: close\r\n"
            f"content-length: {len(body)}\r\n\r\n").encode() + body


class GuardedProtocol(HttpToolsProtocol):
    header_timeout: ClassVar[float] = 10.0
    body_timeout: ClassVar[float] = 30.0
    max_connections: ClassVar[int] = 1024

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self._deadline: asyncio.TimerHandle | None = None
        super().connection_made(transport)
        if len(self.connections) > self.max_connections:
            transport.write(_response(503, "Service Unavailable", "too_many_connections",
                                      f"the service has {self.max_connections} connections open; retry shortly"))
            transport.close()
            return
        self._arm(self.header_timeout, "headers")

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self._deadline is None:  # a request on a kept-alive connection
            self._arm(self.header_timeout, "headers")

    def on_headers_complete(self) -> None:
        self._disarm()
        super().on_headers_complete()
        self._arm(self.body_timeout, "body")

    def on_message_complete(self) -> None:
        self._disarm()
        super().on_message_complete()

    def _arm(self, seconds: float, part: str) -> None:
        self._disarm()
        self._deadline = self.loop.call_later(seconds, self._expired, part, seconds)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _expired(self, part: str, seconds: float) -> None:
        self._deadline = None
        if self.transport.is_closing():
            return
        if self.cycle is None or not self.cycle.response_started:
            self.transport.write(_response(408, "Request Timeout", "request_timeout",
                                           f"the request's {part} did not arrive within {seconds:g} s; send the "
                                           "whole request promptly"))
        self.transport.close()


def guarded_protocol(settings: ServiceSettings) -> type[GuardedProtocol]:
    attrs: dict[str, Any] = {"header_timeout": settings.header_timeout_seconds,
                             "body_timeout": settings.body_timeout_seconds,
                             "max_connections": settings.max_connections}
    return type("ServiceProtocol", (GuardedProtocol,), attrs)


def app_from_environment() -> Any:
    """The app of one uvicorn worker, from the SLUICE_* environment (`SLUICE_API_WORKERS` > 1)."""
    return create_app(get_service_settings())


def __getattr__(name: str) -> Any:
    # uvicorn workers import their protocol by name: the limits come from the worker's environment.
    if name == "EnvironmentProtocol":
        return guarded_protocol(get_service_settings())
    raise AttributeError(name)


def check_workers(settings: ServiceSettings) -> None:
    """Several workers cannot share one metrics listener; say so before starting any."""
    if settings.api_workers > 1 and settings.metrics_port is not None:
        raise WorkersWithMetricsPort(
            f"SLUICE_API_WORKERS={settings.api_workers} with SLUICE_METRICS_PORT={settings.metrics_port}: every "
            "worker keeps its own metrics and only one could listen on that port; run one worker per process "
            "instead (several `python -m redemption` on their own SLUICE_API_PORT and SLUICE_METRICS_PORT behind "
            "a balancer), or unset SLUICE_METRICS_PORT")


def run_service(settings: ServiceSettings, *, log_level: str = "warning") -> None:
    """Serve `settings` in this process, or in `api_workers` processes (which read the environment)."""
    check_workers(settings)
    options: dict[str, Any] = {"host": settings.api_host, "port": settings.api_port, "log_level": log_level,
                               "loop": "auto", "access_log": False, "timeout_graceful_shutdown": 5,
                               "backlog": max(settings.max_connections, 128)}
    if settings.api_workers == 1:
        uvicorn.run(create_app(settings), http=guarded_protocol(settings), **options)
        return
    uvicorn.run("redemption.server:app_from_environment", factory=True, workers=settings.api_workers,
                http="redemption.server:EnvironmentProtocol", **options)
