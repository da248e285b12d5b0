"""Runtime fault injection (``GET``/``POST /sim/faults``, a simulator extension) and the client connection.

``error`` answers with an HTTP error in vLLM's envelope, ``timeout`` hangs before the first byte
until the client gives up, ``drop_mid_stream`` streams ``after_tokens`` tokens and then closes the
TCP connection without ``[DONE]`` (a non-stream request loses its connection without any
response), and ``delay`` holds each request ``delay_seconds`` before the engine takes it (a
stalled queue). Cutting a connection needs its transport, which :func:`remember_transport` keeps
in the ASGI scope.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable
from typing import Literal, Protocol, TypeVar, cast

from fastapi import Request
from pydantic import BaseModel, ConfigDict, Field
from starlette.types import Scope, Send

logger = logging.getLogger(__name__)

_T = TypeVar("_T")

FaultMode = Literal["none", "error", "timeout", "drop_mid_stream", "delay"]


class FaultPlan(BaseModel):
    """A fault to inject into the next ``count`` generation requests (``None`` = every one).

    Faults apply to ``/v1/chat/completions`` and ``/v1/completions`` requests that passed
    validation (model, schema, context length); other endpoints are never affected.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    mode: FaultMode = "none"
    status: int = Field(default=500, ge=400, le=599, description="HTTP status for mode 'error'.")
    after_tokens: int = Field(default=3, ge=0, description="Tokens sent before 'drop_mid_stream' drops.")
    count: int | None = Field(default=None, ge=1, description="Requests affected; None means all.")
    message: str | None = Field(default=None, description="Error message for mode 'error'.")
    delay_seconds: float = Field(default=1.0, ge=0, le=60, description="Wait before answering for mode 'delay'.")


class FaultState(BaseModel):
    """The fault currently armed; ``count`` is how many requests it still affects (None = all)."""

    mode: FaultMode
    status: int
    after_tokens: int
    count: int | None
    message: str | None
    delay_seconds: float


class FaultInjector:
    """Holds the armed fault and counts down the requests it still applies to."""

    def __init__(self, plan: FaultPlan) -> None:
        self._plan = plan
        self._remaining = plan.count

    def arm(self, plan: FaultPlan) -> None:
        self._plan = plan
        self._remaining = plan.count

    def take(self) -> FaultPlan | None:
        """The fault for the request at hand, or None; consumes one use of a counted fault."""
        plan = self._plan
        if plan.mode == "none":
            return None
        if self._remaining is not None:
            self._remaining -= 1
            if self._remaining == 0:
                self.arm(FaultPlan())
        return plan

    def state(self) -> FaultState:
        plan = self._plan
        return FaultState(
            mode=plan.mode,
            status=plan.status,
            after_tokens=plan.after_tokens,
            count=self._remaining,
            message=plan.message,
            delay_seconds=plan.delay_seconds,
        )


class SimulatedConnectionDrop(RuntimeError):
    """Raised to drop a connection when the ASGI server exposes no transport to close."""


class _Closable(Protocol):
    def close(self) -> None: ...


_TRANSPORT_SCOPE_KEY = "sluice.simulator.transport"
_DISCONNECT_GRACE_SECONDS = 5.0


def remember_transport(scope: Scope, send: Send) -> None:
    """Keep an HTTP request's transport in its scope so :meth:`ClientConnection.drop` can close it.

    Under uvicorn the ``send`` callable is a bound method of the request-response cycle, which
    holds the connection's transport; other ASGI servers fall back to raising.
    """
    if scope["type"] == "http":
        scope[_TRANSPORT_SCOPE_KEY] = getattr(getattr(send, "__self__", None), "transport", None)


class ClientConnection:
    """The HTTP connection of one request: wait for the client to leave, or cut it off."""

    def __init__(self, request: Request) -> None:
        self._request = request

    async def wait_for_disconnect(self) -> None:
        while (await self._request.receive())["type"] != "http.disconnect":
            pass

    async def run_unless_disconnected(self, work: Awaitable[_T]) -> tuple[bool, _T | None]:
        """Run ``work`` but cancel it if the client disconnects first (vLLM's with_cancellation).

        Returns ``(True, result)`` when the work finished, ``(False, None)`` when the client left.
        """
        task = asyncio.ensure_future(work)
        watcher = asyncio.ensure_future(self.wait_for_disconnect())
        try:
            done, _ = await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
        except BaseException:
            task.cancel()
            raise
        finally:
            watcher.cancel()
        if task in done:
            return True, task.result()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        return False, None

    async def drop(self) -> None:
        """Close the TCP connection without completing the response, then await the disconnect."""
        transport = cast(_Closable | None, self._request.scope.get(_TRANSPORT_SCOPE_KEY))
        if transport is None:
            raise SimulatedConnectionDrop("fault injection dropped the connection")
        transport.close()
        try:
            await asyncio.wait_for(self.wait_for_disconnect(), _DISCONNECT_GRACE_SECONDS)
        except TimeoutError:
            logger.warning("connection dropped by fault injection did not report a disconnect")
