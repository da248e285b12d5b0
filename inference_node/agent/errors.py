"""The agent's exception tree; request errors become the OpenAI envelope in :meth:`RequestRefused.to_response`."""

from __future__ import annotations

from typing import ClassVar

import aiohttp
from fastapi.responses import Response
from pydantic import BaseModel

# What an upstream call raises when it fails: aiohttp's errors and its timeouts (a total timeout is no ClientError).
HTTP_FAILURES = (aiohttp.ClientError, TimeoutError)


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str


class ErrorEnvelope(BaseModel):
    """The OpenAI error body, with Sluice's stable `code` strings."""

    error: ErrorDetail


class NodeAgentError(Exception):
    """Base of every error raised by the node agent."""


class VllmNotInstalled(NodeAgentError):
    """`launch_vllm` was asked to start vLLM where the package is not installed."""


class VllmLaunchFailed(NodeAgentError):
    """vLLM's server exited or did not become healthy in time."""


class RequestRefused(NodeAgentError):
    """A request the agent answers with an error instead of forwarding it (or a failed forward)."""

    status: ClassVar[int] = 400
    code: ClassVar[str] = "invalid_request"
    kind: ClassVar[str] = "invalid_request_error"

    def __init__(self, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param

    def envelope(self) -> ErrorEnvelope:
        return ErrorEnvelope(error=ErrorDetail(message=self.message, type=self.kind, param=self.param, code=self.code))

    def to_response(self) -> Response:
        return Response(self.envelope().model_dump_json(), status_code=self.status, media_type="application/json")


class TicketRefused(RequestRefused):
    """The dispatch ticket does not admit this request."""

    status = 401
    code = "invalid_ticket"
    kind = "authentication_error"


class InvalidTicket(TicketRefused):
    """Missing, malformed, not signed by the dispatch key, or for another node."""


class TicketExpired(TicketRefused):
    code = "ticket_expired"


class TicketReplayed(TicketRefused):
    status = 409
    code = "ticket_replayed"
    kind = "invalid_request_error"


class ModelMismatch(TicketRefused):
    status = 400
    code = "model_mismatch"
    kind = "invalid_request_error"


class InvalidRequestBody(RequestRefused):
    code = "invalid_request_body"


class BodyTooLarge(RequestRefused):
    """A generation request's body over `AgentConfig.max_body_bytes`, declared or as read: the rest is not read."""

    status = 413
    code = "body_too_large"


class NodeNotReady(RequestRefused):
    status = 503
    code = "node_not_ready"
    kind = "server_error"


class UpstreamUnavailable(RequestRefused):
    status = 502
    code = "upstream_error"
    kind = "server_error"


class UpstreamTimeout(RequestRefused):
    status = 504
    code = "upstream_timeout"
    kind = "server_error"


class UpstreamRefused(RequestRefused):
    """vLLM's own error answer, passed on as vLLM gave it (status, body and content type)."""

    def __init__(self, status: int, body: bytes, media_type: str | None) -> None:
        super().__init__(body.decode(errors="replace")[:500])
        self.upstream_status, self.body, self.media_type = status, body, media_type

    def to_response(self) -> Response:
        return Response(self.body, status_code=self.upstream_status, media_type=self.media_type)
