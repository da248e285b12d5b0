"""The node agent: the paid gate in front of one vLLM OpenAI-compatible server.

This module owns what a GPU host adds to vLLM to take part in Sluice:

* its configuration (:class:`AgentConfig`) and its exception tree (:class:`NodeAgentError`), whose
  request errors map onto the OpenAI error envelope in one place (:meth:`RequestRefused.to_response`);
* admission: a call runs only with a `Sluice-Ticket` signed by the service's dispatch key, naming
  this node and the request's model, unexpired and never seen before (:meth:`NodeAgent.admit`);
* forwarding to vLLM with `max_tokens` clamped to the ticket (never past what the context window
  leaves, counted with vLLM's `/tokenize` when the ticket is the tighter bound) and usage forced
  on for streams; a service hanging up aborts the vLLM request;
* metering: an EIP-712 `UsageReceipt` signed by the node key for what vLLM reports it generated,
  in the `Sluice-Receipt` header, as the last SSE event, or POSTed to the service when the service
  hung up mid-stream (:class:`StreamRelay`);
* registration: signed heartbeats with vLLM's queue depth, and fetching `DispatchInfo`;
* its own `/health` and `/metrics`, the app factory, the uvicorn runner and :func:`launch_vllm`.

The wire formats live in :mod:`inference_node.protocol`, the typed messages in :mod:`ledger.protocol.eip712`.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import http.client
import importlib.util
import logging
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Coroutine, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal, TypeVar

import aiohttp
import orjson
import uvicorn
from coincurve import PrivateKey
from eth_account import Account
from eth_account.messages import encode_defunct
from eth_hash.auto import keccak
from eth_utils.address import to_checksum_address
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator, model_validator
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import Receive, Scope, Send
from yarl import URL

from inference_node.protocol import (
    DISPATCH_INFO_PATH,
    HEARTBEAT_PATH,
    RECEIPT_EVENT,
    RECEIPT_HEADER,
    RECEIPTS_PATH,
    TICKET_HEADER,
    DispatchInfo,
    NodeHeartbeat,
    ProtocolError,
    SignedReceipt,
    SignedTicket,
)
from ledger.domain import TierName, usage_cost
from ledger.protocol.eip712 import DispatchTicket, Domains, UsageReceipt, typed_digest
from ledger.protocol.secp256k1 import SignatureError, recover_digest

logger = logging.getLogger(__name__)

_T = TypeVar("_T")

# vLLM (like OpenAI) gives a completions call without `max_tokens` 16 tokens; the clamp keeps that default.
COMPLETIONS_DEFAULT_MAX_TOKENS = 16
_MAX_TOKENS_CAP = 2**31 - 1  # a ticket may allow more than any context; JSON for vLLM must stay in int64
# Fields of a chat request that shape its prompt, forwarded to vLLM's /tokenize to count it.
_CHAT_PROMPT_FIELDS = ("messages", "add_generation_prompt", "continue_final_message", "add_special_tokens",
                       "chat_template", "chat_template_kwargs", "tools")  # fmt: skip
UPSTREAM_DROPPED = "upstream_dropped"
_SSE_DONE = b"data: [DONE]\n\n"
_SSE_EVENT_END = b"\n\n"
_VLLM_RUNNING = "vllm:num_requests_running"
_VLLM_WAITING = "vllm:num_requests_waiting"
_SHUTDOWN_GRACE_SECONDS = 5.0
_DISPATCH_RETRY_MAX_SECONDS = 10.0
_CONNECT_TIMEOUT_SECONDS = 5.0
_KEEPALIVE_SECONDS = 60.0
# Health, /metrics and /v1/models reads: the node reports vLLM down rather than wait on it.
_HEALTH_TIMEOUT = aiohttp.ClientTimeout(connect=2.0, sock_connect=2.0, sock_read=2.0)
_SERVICE_TIMEOUT = aiohttp.ClientTimeout(connect=10.0, sock_connect=_CONNECT_TIMEOUT_SECONDS, sock_read=10.0)
# What an upstream call raises when it fails: aiohttp's errors and its timeouts (a total timeout is no ClientError).
_HTTP_FAILURES = (aiohttp.ClientError, TimeoutError)
_JSON_HEADERS = {"Content-Type": "application/json"}


# ---------------------------------------------------------------------------------------------
# Configuration
# ---------------------------------------------------------------------------------------------


class AgentConfig(BaseModel):
    """Start-up configuration of one node agent.

    With `service_url` the agent learns the chain, Settlement address and dispatch signer from the
    service (`GET /internal/dispatch`), heartbeats to it and POSTs abort receipts to it. Without it
    the agent runs standalone and needs `chain_id`, `settlement` and `dispatch_signer` given here.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    vllm_url: str = Field(default="http://127.0.0.1:8000", description="base URL of the vLLM OpenAI server")
    vllm_api_key: SecretStr | None = Field(default=None, description="the `--api-key` vLLM was started with, if any")
    node_key: SecretStr = Field(description="hex private key; its address signs receipts and heartbeats")
    service_url: str | None = Field(default=None, description="redemption service base URL; None runs standalone")
    public_url: str | None = Field(default=None, description="URL the service dispatches to (required with a service)")
    models: list[str] | None = Field(default=None, description="served model names; None reads vLLM's GET /v1/models")
    tier: TierName = "regional"
    region: str = "local"
    capacity: int = Field(default=256, ge=1, description="concurrent sequences the node serves (vLLM max_num_seqs)")
    heartbeat_interval: float = Field(default=2.0, gt=0, description="seconds between heartbeats")
    chain_id: int | None = Field(default=None, description="standalone: chain id of the EIP-712 domains")
    settlement: str | None = Field(default=None, description="standalone: Settlement address (verifyingContract)")
    dispatch_signer: str | None = Field(default=None, description="standalone: address that signs dispatch tickets")
    ticket_max_lifetime: float = Field(default=600.0, gt=0, description="refuse tickets expiring later ahead")
    clock_skew: float = Field(default=5.0, ge=0, description="seconds of clock drift tolerated")
    dispatch_info_wait: float = Field(default=5.0, ge=0, description="seconds start-up waits for DispatchInfo")
    vllm_timeout: float | None = Field(default=600.0, gt=0, description="seconds per vLLM read; None: forever")
    max_connections: int = Field(default=1024, ge=1, description="connection pool size (vLLM and the service)")
    receipt_post_attempts: int = Field(default=4, ge=1, description="tries to POST an abort receipt to the service")

    @field_validator("vllm_url", "service_url", "public_url")
    @classmethod
    def _strip_trailing_slash(cls, value: str | None) -> str | None:
        return None if value is None else value.rstrip("/")

    @field_validator("node_key")
    @classmethod
    def _check_node_key(cls, value: SecretStr) -> SecretStr:
        text = value.get_secret_value().removeprefix("0x")
        try:
            raw = bytes.fromhex(text)
        except ValueError:
            raise ValueError("node_key must be a hex private key") from None
        if len(raw) != 32:
            raise ValueError("node_key must be 32 bytes")
        return value

    @model_validator(mode="after")
    def _check_topology(self) -> AgentConfig:
        pinned = (self.chain_id, self.settlement, self.dispatch_signer)
        if self.service_url is None and None in pinned:
            raise ValueError("a standalone agent (no service_url) needs chain_id, settlement and dispatch_signer")
        if any(value is not None for value in pinned) and None in pinned:
            raise ValueError("chain_id, settlement and dispatch_signer are given together or not at all")
        if self.service_url is not None and self.public_url is None:
            raise ValueError("public_url is required with service_url: heartbeats tell the service where to dispatch")
        return self

    @property
    def pinned_dispatch(self) -> DispatchInfo | None:
        """The dispatch settings given in the config, which then need not be fetched."""
        if self.chain_id is None or self.settlement is None or self.dispatch_signer is None:
            return None
        return DispatchInfo(chain_id=self.chain_id, settlement=self.settlement, dispatch_signer=self.dispatch_signer)


# ---------------------------------------------------------------------------------------------
# Errors: one tree; request errors become the OpenAI envelope in RequestRefused.to_response
# ---------------------------------------------------------------------------------------------


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
    """`vllm serve` exited or did not become healthy in time."""


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


# ---------------------------------------------------------------------------------------------
# Metrics
# ---------------------------------------------------------------------------------------------


class AgentMetrics:
    """The agent's Prometheus metrics, in a registry of its own (vLLM's stay on vLLM's /metrics)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "sluice_node_requests", "Generation requests by endpoint and HTTP status answered.",
            ["endpoint", "status"], registry=self.registry,
        )  # fmt: skip
        self.model_tokens = Counter(
            "sluice_node_model_tokens", "Model tokens in signed receipts.", ["kind"], registry=self.registry
        )
        self.ticket_rejections = Counter(
            "sluice_node_ticket_rejections", "Requests refused for their ticket, by code.", ["code"],
            registry=self.registry,
        )  # fmt: skip
        self.forward_latency = Histogram(
            "sluice_node_forward_latency_seconds",
            "Time vLLM took to answer: the whole body, or the response head for streams.",
            ["endpoint", "stream"],
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0),
            registry=self.registry,
        )
        self.receipts = Counter(
            "sluice_node_receipts", "Receipts signed, by how they went to the service.", ["delivery"],
            registry=self.registry,
        )  # fmt: skip
        self.receipt_post_failures = Counter(
            "sluice_node_receipt_post_failures", "Abort receipts the service never acknowledged.",
            registry=self.registry,
        )  # fmt: skip
        self.streams = Counter("sluice_node_streams", "Streams by how they ended.", ["outcome"], registry=self.registry)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


# ---------------------------------------------------------------------------------------------
# Admission helpers
# ---------------------------------------------------------------------------------------------


class SpentTickets:
    """Job ids already admitted, kept until their ticket would be refused as expired anyway."""

    def __init__(self, grace_seconds: float) -> None:
        self._grace = grace_seconds
        self._spent: set[bytes] = set()
        self._by_expiry: list[tuple[int, bytes]] = []

    def spend(self, job_id: bytes, expires: int, now: float) -> bool:
        """Record `job_id`; False if it was already spent."""
        while self._by_expiry and self._by_expiry[0][0] + self._grace < now:
            self._spent.discard(heapq.heappop(self._by_expiry)[1])
        if job_id in self._spent:
            return False
        self._spent.add(job_id)
        heapq.heappush(self._by_expiry, (expires, job_id))
        return True

    def __len__(self) -> int:
        return len(self._spent)


@dataclass(frozen=True)
class Endpoint:
    """One generation route and how its request bounds output length."""

    name: str
    path: str
    limit_fields: tuple[str, ...]  # vLLM reads the first non-zero one

    @property
    def is_chat(self) -> bool:
        return self.name == "chat"


CHAT = Endpoint("chat", "/v1/chat/completions", ("max_completion_tokens", "max_tokens"))
COMPLETIONS = Endpoint("completions", "/v1/completions", ("max_tokens",))
_TOKENIZE_PATH = "/tokenize"
_METRICS_PATH = "/metrics"
_MODELS_PATH = "/v1/models"
_HEALTH_PATH = "/health"
_VLLM_PATHS = (CHAT.path, COMPLETIONS.path, _TOKENIZE_PATH, _METRICS_PATH, _MODELS_PATH, _HEALTH_PATH)
_SERVICE_PATHS = (DISPATCH_INFO_PATH, HEARTBEAT_PATH, RECEIPTS_PATH)


def _is_int(value: object) -> bool:
    # bool is an int subclass, and vLLM's lax pydantic would turn "9999" or 9999.0 into a bound we never clamped.
    return type(value) is int


def _optional_int(body: dict[str, Any], field: str) -> int | None:
    value = body.get(field)
    if value is None:
        return None
    if not _is_int(value):
        raise InvalidRequestBody(f"`{field}` must be an integer", param=field)
    number: int = value
    return number


def _prompt_count(prompt: object) -> int:
    """How many prompts a completions request carries (vLLM's four prompt shapes)."""
    if isinstance(prompt, list) and prompt and isinstance(prompt[0], (str, list)):
        return len(prompt)
    return 1


@dataclass(frozen=True)
class OutputBounds:
    """What bounds a request's output: the client's own limit (vLLM's reading) and the ticket's share."""

    requested: int | None  # None: the client set no limit, so vLLM would fill the context window
    per_choice: int  # the ticket's completion tokens split over the request's choices


def output_bounds(body: dict[str, Any], endpoint: Endpoint, budget: int) -> OutputBounds:
    """The ticket bounds the job's completion tokens, so each of n x prompts choices gets an equal share."""
    n = _optional_int(body, "n")
    choices = max(n or 1, 1) * (1 if endpoint.is_chat else _prompt_count(body.get("prompt")))
    per_choice = min(budget // choices, _MAX_TOKENS_CAP)
    if per_choice < 1:
        raise InvalidRequestBody(
            f"the ticket allows {budget} completion tokens, fewer than the {choices} choices asked for", param="n"
        )
    values = [_optional_int(body, field) for field in endpoint.limit_fields]
    if endpoint.is_chat:
        requested = values[0] or values[1]  # exactly vLLM's reading: max_completion_tokens or max_tokens
    elif "max_tokens" in body:
        requested = values[0]
    else:
        requested = COMPLETIONS_DEFAULT_MAX_TOKENS
    return OutputBounds(requested, per_choice)


def write_output_limit(body: dict[str, Any], endpoint: Endpoint, limit: int) -> None:
    """Set the request's output limit in place, in every limit field the client used (else `max_tokens`)."""
    written = False
    for field in endpoint.limit_fields:
        if body.get(field) is not None:
            body[field] = limit
            written = True
    if not written:
        body["max_tokens"] = limit


def _stream_flag(body: dict[str, Any]) -> bool:
    value = body.get("stream")
    if value is None:
        return False
    if not isinstance(value, bool):
        # vLLM would read "false" as False while we would not: agree on JSON booleans only.
        raise InvalidRequestBody("`stream` must be a boolean", param="stream")
    return value


def _usage_counts(usage: object) -> tuple[int, int] | None:
    """(prompt_tokens, completion_tokens) of a vLLM usage object, or None when it is not one."""
    if not isinstance(usage, dict):
        return None
    prompt = usage.get("prompt_tokens")
    completion = usage.get("completion_tokens") or 0  # vLLM's UsageInfo allows null completion tokens
    if not (isinstance(prompt, int) and _is_int(prompt) and _is_int(completion)) or prompt < 0 or completion < 0:
        return None
    return prompt, int(completion)


# ---------------------------------------------------------------------------------------------
# Streams
# ---------------------------------------------------------------------------------------------


def _event_data(event: bytes) -> bytes | None:
    """The data of one SSE event (data lines joined by newlines), None when it has no data line."""
    if event.startswith(b"data: ") and event.find(b"\n") == len(event) - 2:
        return event[6:-2]  # vLLM's frames are all one `data: ` line
    lines = [line for line in event.split(b"\n") if line.startswith(b"data:")]
    if not lines:
        return None
    return b"\n".join(line[6:] if line.startswith(b"data: ") else line[5:] for line in lines)


def _sse(payload: bytes, event: str | None = None) -> bytes:
    head = b"" if event is None else b"event: " + event.encode() + b"\n"
    return head + b"data: " + payload + _SSE_EVENT_END


class UsageTracker:
    """What a stream has generated so far, from vLLM's continuous usage stats.

    With `continuous_usage_stats` every chunk carries usage for its one choice (vLLM counts per
    choice), and the closing chunk (`choices: []`) carries the request's total.
    """

    def __init__(self, n: int) -> None:
        self._n = max(n, 1)
        self.final: tuple[int, int] | None = None
        self._prompt_by_prompt: dict[int, int] = {}
        self._completion_by_choice: dict[int, int] = {}

    @property
    def seen(self) -> bool:
        return self.final is not None or bool(self._prompt_by_prompt)

    def observe(self, data: bytes) -> None:
        if not data.startswith(b"{"):
            return
        try:
            chunk = orjson.loads(data)
        except orjson.JSONDecodeError:
            return
        if not isinstance(chunk, dict):
            return
        counts = _usage_counts(chunk.get("usage"))
        if counts is None:
            return
        choices = chunk.get("choices")
        if choices == []:
            self.final = counts
        elif isinstance(choices, list) and len(choices) == 1 and isinstance(choices[0], dict):
            index = choices[0].get("index", 0)
            if _is_int(index):
                # Choice i of a multi-prompt request belongs to prompt i // n, as vLLM numbers them.
                self._prompt_by_prompt[index // self._n] = counts[0]
                self._completion_by_choice[index] = counts[1]

    def totals(self) -> tuple[int, int]:
        if self.final is not None:
            return self.final
        return sum(self._prompt_by_prompt.values()), sum(self._completion_by_choice.values())


class StreamRelay:
    """Relays one vLLM SSE stream event by event and makes sure its usage is receipted once.

    The receipt goes in-stream before `[DONE]`. If the service hangs up first, :meth:`finish`
    closes the vLLM connection (vLLM aborts the request) and POSTs the receipt for what was made.
    """

    def __init__(self, agent: NodeAgent, ticket: DispatchTicket, upstream: aiohttp.ClientResponse, n: int) -> None:
        self._agent = agent
        self._ticket = ticket
        self._upstream = upstream
        self.usage = UsageTracker(n)
        self.settled = False  # the service has the receipt, or there was nothing to bill

    async def events(self) -> AsyncIterator[bytes]:
        # Whatever has arrived, in one read: fewer awaits and downstream writes than line by line. (When vLLM's
        # connection fails aiohttp discards what it has not handed over, so only a relay held up downstream can miss
        # vLLM's last events; they are then neither relayed nor billed.)
        chunks = self._upstream.content.iter_any()
        buffer = b""
        done = False
        problem: str | None = None
        try:
            async for data in chunks:
                buffer += data
                # vLLM frames events with "\n\n" (JSON escapes newlines inside data); complete events go out at once.
                start = 0
                while (end := buffer.find(_SSE_EVENT_END, start)) >= 0:
                    payload = _event_data(buffer[start : end + 2])
                    if payload == b"[DONE]":
                        done = True
                        break
                    if payload is not None:
                        self.usage.observe(payload)
                    start = end + 2
                if start:
                    yield buffer[:start]
                    buffer = buffer[start:]
                if done:
                    break
            if not done:
                problem = "vLLM ended the stream without [DONE]"
        except _HTTP_FAILURES as exc:
            problem = f"vLLM dropped the stream: {exc or type(exc).__name__}"
        tail = []
        if problem is not None:
            logger.warning("job 0x%s: %s", self._ticket.job_id.hex(), problem)
            error = ErrorDetail(message=problem, type="server_error", param=None, code=UPSTREAM_DROPPED)
            tail.append(_sse(orjson.dumps({"error": error.model_dump()})))
        receipt = self._receipt()
        if receipt is not None:
            tail.append(_sse(receipt.encode().encode(), RECEIPT_EVENT))
        tail.append(_SSE_DONE)
        yield b"".join(tail)
        self.settled = True  # resumed after the yield: the tail was handed to the server
        if receipt is not None:
            self._agent.record_receipt(receipt, "stream")
        self._agent.metrics.streams.labels("completed" if problem is None else UPSTREAM_DROPPED).inc()
        if done:
            # Reading vLLM's stream to its end returns the connection to the keep-alive pool.
            with contextlib.suppress(*_HTTP_FAILURES):
                async for _ in chunks:
                    pass
            self._upstream.release()
        else:
            self._upstream.close()

    def _receipt(self) -> SignedReceipt | None:
        if not self.usage.seen:
            return None
        prompt_tokens, completion_tokens = self.usage.totals()
        return self._agent.sign_receipt(self._ticket, prompt_tokens, completion_tokens)

    def finish(self) -> None:
        """Called once the response is over, however it ended; receipts an unfinished stream."""
        if self.settled:
            return
        self.settled = True
        self._agent.metrics.streams.labels("downstream_gone").inc()
        self._upstream.close()  # dropping the connection makes vLLM abort the request
        receipt = self._receipt()
        if receipt is None:
            logger.info("job 0x%s: service left before vLLM reported usage; nothing to bill", self._ticket.job_id.hex())
            return
        # Its own task: the response's task may be inside a cancelled scope where awaits fail.
        self._agent.spawn(self._agent.deliver_receipt(receipt))


class RelayedStream(StreamingResponse):
    """A StreamingResponse that tells its relay when the response is over, even on a hang-up."""

    def __init__(self, relay: StreamRelay) -> None:
        super().__init__(relay.events(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
        self._relay = relay

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._relay.finish()


async def _wait_for_disconnect(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def _unless_disconnected(request: Request, work: Coroutine[Any, Any, _T]) -> tuple[bool, _T | None]:
    """Run `work`, cancelling it if the client hangs up first: (True, result) or (False, None)."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_wait_for_disconnect(request))
    try:
        await asyncio.wait((task, watcher), return_when=asyncio.FIRST_COMPLETED)
    except BaseException:
        task.cancel()
        raise
    finally:
        watcher.cancel()
    if task.done():
        return True, task.result()
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    return False, None


# ---------------------------------------------------------------------------------------------
# The agent
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class UpstreamReply:
    """A whole (non-streamed) answer from vLLM."""

    status: int
    media_type: str | None
    body: bytes


class HealthReport(BaseModel):
    status: Literal["ok", "unavailable"]
    node: str
    vllm: Literal["ok", "down"]
    dispatch: Literal["ok", "pending"] = Field(description="whether the ticket signer and domains are known")


class NodeAgent:
    """The agent's state, built once per app: keys, the HTTP client, spent tickets, background tasks."""

    def __init__(self, config: AgentConfig) -> None:
        self.config = config
        self._key = bytes.fromhex(config.node_key.get_secret_value().removeprefix("0x"))
        # Kept whole: building a PrivateKey derives its public key, more than half the cost of a signature.
        self._signer = PrivateKey(self._key)
        public = self._signer.public_key.format(compressed=False)[1:]
        self.address: str = to_checksum_address(keccak(public)[12:])
        self.metrics = AgentMetrics()
        self._spent = SpentTickets(config.clock_skew)
        self._dispatch: DispatchInfo | None = None
        self._domains: Domains | None = None
        self._dispatch_ready = asyncio.Event()
        self._models: list[str] | None = config.models
        self._context: dict[str, int] = {}  # max_model_len by served name, from vLLM
        self._model_names: dict[bytes, str] = {}  # ticket model hash -> the name that hashed to it
        # Parsed once: aiohttp takes a URL object as it is, where a string is parsed on every call.
        self._vllm_urls = {path: URL(config.vllm_url + path) for path in _VLLM_PATHS}
        service = config.service_url
        self._service_urls = {path: URL(service + path) for path in _SERVICE_PATHS} if service is not None else {}
        self._vllm_auth: dict[str, str] = {}  # only for vLLM: the service must never see vLLM's API key
        if config.vllm_api_key is not None:
            self._vllm_auth["Authorization"] = f"Bearer {config.vllm_api_key.get_secret_value()}"
        self._vllm_json_headers = {**_JSON_HEADERS, **self._vllm_auth}
        self._session: aiohttp.ClientSession | None = None
        self._loops: list[asyncio.Task[None]] = []
        self._tasks: set[asyncio.Task[None]] = set()
        pinned = config.pinned_dispatch
        if pinned is not None:
            self._use_dispatch(pinned)

    # -- lifecycle ------------------------------------------------------------------------------

    async def start(self) -> None:
        config = self.config
        # One pool for vLLM and the service. The default timeout is vLLM's: per read, and for a pooled
        # connection; service and health calls pass their own.
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=config.max_connections, keepalive_timeout=_KEEPALIVE_SECONDS),
            timeout=aiohttp.ClientTimeout(
                connect=config.vllm_timeout, sock_connect=_CONNECT_TIMEOUT_SECONDS, sock_read=config.vllm_timeout
            ),
            # vLLM's bodies go out byte for byte, so they must arrive unencoded and stay so.
            headers={"Accept-Encoding": "identity"},
            auto_decompress=False,
            trust_env=False,
        )
        if config.service_url is None:
            logger.info("node %s runs standalone: no heartbeats, abort receipts are only logged", self.address)
            return
        if self._dispatch is None:
            self._loops.append(asyncio.create_task(self._fetch_dispatch_info(), name="sluice-dispatch-info"))
            try:
                await asyncio.wait_for(self._dispatch_ready.wait(), config.dispatch_info_wait)
            except TimeoutError:
                logger.warning(
                    "no DispatchInfo from %s after %.1f s; serving 503 node_not_ready until it answers",
                    config.service_url, config.dispatch_info_wait,
                )  # fmt: skip
        self._loops.append(asyncio.create_task(self._heartbeat_loop(), name="sluice-heartbeat"))

    async def stop(self) -> None:
        for task in self._loops:
            task.cancel()
        await asyncio.gather(*self._loops, return_exceptions=True)
        if self._tasks:
            # Abort receipts still being delivered are worth a few seconds of shutdown.
            _, pending = await asyncio.wait(set(self._tasks), timeout=_SHUTDOWN_GRACE_SECONDS)
            for task in pending:
                task.cancel()
        if self._session is not None:
            await self._session.close()

    def spawn(self, work: Coroutine[Any, Any, None]) -> None:
        """Run `work` in the background, keeping a reference until it ends and logging its failure."""
        task = asyncio.create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._background_done)

    def _background_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.error("background task failed", exc_info=task.exception())

    @property
    def http(self) -> aiohttp.ClientSession:
        """The agent's one HTTP client, to vLLM and to the service."""
        if self._session is None:
            raise NodeNotReady("the agent has not started")
        return self._session

    def _use_dispatch(self, info: DispatchInfo) -> None:
        self._dispatch = info
        self._domains = Domains(info.chain_id, info.settlement)
        self._dispatch_ready.set()

    async def _fetch_dispatch_info(self) -> None:
        url = self._service_urls[DISPATCH_INFO_PATH]
        delay = 0.2
        attempt = 0
        while True:
            attempt += 1
            try:
                async with self.http.get(url, timeout=_SERVICE_TIMEOUT) as response:
                    response.raise_for_status()
                    info = DispatchInfo.model_validate_json(await response.read())
            except (*_HTTP_FAILURES, ValidationError) as exc:
                if attempt == 1 or attempt % 10 == 0:
                    logger.warning("DispatchInfo from %s failed (attempt %d): %s", self.config.service_url, attempt,
                                   exc or type(exc).__name__)  # fmt: skip
                await asyncio.sleep(delay)
                delay = min(delay * 2, _DISPATCH_RETRY_MAX_SECONDS)
                continue
            self._use_dispatch(info)
            logger.info("dispatch signer %s on chain %d, settlement %s", info.dispatch_signer, info.chain_id,
                        info.settlement)  # fmt: skip
            return

    # -- admission ------------------------------------------------------------------------------

    def admit(self, header: str | None) -> DispatchTicket:
        """The ticket of a request, if it is signed by the dispatch key, for this node and unexpired."""
        dispatch, domains = self._dispatch, self._domains
        if dispatch is None or domains is None:
            raise NodeNotReady("the node has not yet learned the dispatch signer from the service")
        if header is None:
            raise InvalidTicket(f"missing {TICKET_HEADER} header", param=TICKET_HEADER)
        try:
            signed = SignedTicket.decode(header)
            ticket = signed.ticket
            signer = recover_digest(typed_digest(domains.ticket, ticket.struct_hash()), signed.signature)
        except (ProtocolError, SignatureError, ValueError) as exc:  # ValueError: a field that cannot be hashed
            raise InvalidTicket(f"unreadable {TICKET_HEADER}: {exc}", param=TICKET_HEADER) from None
        if signer.lower() != dispatch.dispatch_signer.lower():
            raise InvalidTicket("the ticket is not signed by the dispatch key", param=TICKET_HEADER)
        if ticket.node.lower() != self.address.lower():
            raise InvalidTicket(f"the ticket is for node {ticket.node}, not {self.address}", param=TICKET_HEADER)
        now = time.time()
        if ticket.expires + self.config.clock_skew < now:
            raise TicketExpired(f"the ticket expired at {ticket.expires}", param=TICKET_HEADER)
        if ticket.expires > now + self.config.ticket_max_lifetime + self.config.clock_skew:
            raise InvalidTicket("the ticket expires further ahead than this node accepts", param=TICKET_HEADER)
        return ticket

    def _is_ticket_model(self, model: str, ticket: DispatchTicket) -> bool:
        if self._model_names.get(ticket.model) == model:
            return True
        if keccak(model.encode()) != ticket.model:
            return False
        self._model_names[ticket.model] = model  # only names that matched a signed ticket, so a handful
        return True

    def _spend(self, ticket: DispatchTicket) -> None:
        if not self._spent.spend(ticket.job_id, ticket.expires, time.time()):
            raise TicketReplayed(f"job 0x{ticket.job_id.hex()} was already dispatched here", param=TICKET_HEADER)

    # -- receipts -------------------------------------------------------------------------------

    def sign_receipt(self, ticket: DispatchTicket, prompt_tokens: int, completion_tokens: int) -> SignedReceipt:
        assert self._domains is not None  # a ticket was admitted, so the domains are known
        cost = usage_cost(prompt_tokens, completion_tokens, ticket.input_rate, ticket.output_rate)
        receipt = UsageReceipt(
            job_id=ticket.job_id, payer=ticket.payer, spender=ticket.spender, model=ticket.model,
            prompt_tokens=prompt_tokens, completion_tokens=completion_tokens, cost=cost,
            request_digest=ticket.request_digest,
        )  # fmt: skip
        digest = typed_digest(self._domains.receipt, receipt.struct_hash())
        signature = self._signer.sign_recoverable(digest, hasher=None)
        # r || s || v with v = 27/28, as ledger.eip712.sign_digest produces.
        return SignedReceipt(receipt, signature[:64] + bytes([signature[64] + 27]), self.address)

    def record_receipt(self, signed: SignedReceipt, delivery: str) -> None:
        self.metrics.receipts.labels(delivery).inc()
        self.metrics.model_tokens.labels("prompt").inc(signed.receipt.prompt_tokens)
        self.metrics.model_tokens.labels("completion").inc(signed.receipt.completion_tokens)

    async def deliver_receipt(self, signed: SignedReceipt) -> None:
        """POST a receipt to the service with a few retries (the service keys receipts by job id)."""
        body = signed.encode()
        job = "0x" + signed.receipt.job_id.hex()
        self.record_receipt(signed, "posted")
        url = self._service_urls.get(RECEIPTS_PATH)
        if url is None:
            logger.warning("standalone node: receipt for job %s has no service to go to: %s", job, body)
            return
        problem = ""
        attempts = self.config.receipt_post_attempts
        for attempt in range(1, attempts + 1):
            try:
                async with self.http.post(url, data=body.encode(), headers=_JSON_HEADERS,
                                          timeout=_SERVICE_TIMEOUT) as response:  # fmt: skip
                    status, answer = response.status, await response.read()
            except _HTTP_FAILURES as exc:
                problem = f"{type(exc).__name__}: {exc}"
            else:
                if 200 <= status < 300:
                    return
                problem = f"HTTP {status}: {answer.decode(errors='replace')[:200]}"
                if 400 <= status < 500 and status not in (408, 429):
                    break  # the service refused this receipt; sending it again will not change that
            if attempt < attempts:
                await asyncio.sleep(0.2 * 2 ** (attempt - 1))
        self.metrics.receipt_post_failures.inc()
        logger.error("receipt for job %s not delivered after %d attempts (%s): %s", job, attempt, problem, body)

    # -- forwarding -----------------------------------------------------------------------------

    async def handle(self, request: Request, endpoint: Endpoint) -> Response:
        """Admit, forward and meter one generation request; every outcome is counted."""
        try:
            response = await self._handle(request, endpoint)
        except RequestRefused as refused:
            if isinstance(refused, TicketRefused):
                self.metrics.ticket_rejections.labels(refused.code).inc()
            response = refused.to_response()
        self.metrics.requests.labels(endpoint.name, str(response.status_code)).inc()
        return response

    async def _handle(self, request: Request, endpoint: Endpoint) -> Response:
        ticket = self.admit(request.headers.get(TICKET_HEADER))
        try:
            body = orjson.loads(await request.body())
        except orjson.JSONDecodeError as exc:
            raise InvalidRequestBody(f"the body is not JSON: {exc}") from None
        if not isinstance(body, dict):
            raise InvalidRequestBody("the body must be a JSON object")
        model = body.get("model")
        if not isinstance(model, str) or not self._is_ticket_model(model, ticket):
            raise ModelMismatch(f"model {model!r} is not the model the ticket was issued for", param="model")
        stream = _stream_flag(body)
        await self._clamp_output(body, endpoint, model, ticket.max_tokens)
        if stream:
            options = body.get("stream_options")
            # Metering needs usage on every chunk; the service decides what its client sees.
            body["stream_options"] = {
                **(options if isinstance(options, dict) else {}), "include_usage": True, "continuous_usage_stats": True
            }  # fmt: skip
        self._spend(ticket)
        # The job id names the vLLM request, so vLLM's logs and response ids point at the job.
        headers = {**self._vllm_json_headers, "X-Request-Id": ticket.job_id.hex()}
        # Always the object checked here, re-encoded (about 1 us): the ticket's bound must not rest on vLLM's
        # JSON parser reading the client's bytes (duplicate keys, say) exactly as orjson did.
        payload = orjson.dumps(body)
        if stream:
            n = _optional_int(body, "n") or 1
            return await self._forward_stream(endpoint, ticket, payload, headers, n)
        return await self._forward(request, endpoint, ticket, payload, headers)

    async def _forward(
        self, request: Request, endpoint: Endpoint, ticket: DispatchTicket, payload: bytes, headers: dict[str, str]
    ) -> Response:
        started = time.perf_counter()
        _, reply = await _unless_disconnected(
            request, _upstream_call(self._post_vllm(self._vllm_urls[endpoint.path], payload, headers))
        )
        if reply is None:
            # The service hung up: the vLLM connection was dropped, so vLLM aborted; nothing was delivered to bill.
            logger.info("job 0x%s: service left before vLLM answered; generation aborted", ticket.job_id.hex())
            return Response(status_code=499)
        self.metrics.forward_latency.labels(endpoint.name, "false").observe(time.perf_counter() - started)
        if reply.status != 200:
            return Response(reply.body, status_code=reply.status, media_type=reply.media_type)
        try:
            counts = _usage_counts(orjson.loads(reply.body).get("usage"))
        except (orjson.JSONDecodeError, AttributeError):
            counts = None
        if counts is None:
            raise UpstreamUnavailable("vLLM answered without usage; the job cannot be metered")
        receipt = self.sign_receipt(ticket, *counts)
        self.record_receipt(receipt, "header")
        return Response(reply.body, media_type=reply.media_type, headers={RECEIPT_HEADER: receipt.encode()})

    async def _post_vllm(self, url: URL, payload: bytes, headers: dict[str, str]) -> UpstreamReply:
        # Cancelled mid-call (the service hung up), aiohttp closes the connection and vLLM aborts the request.
        async with self.http.post(url, data=payload, headers=headers) as response:
            return UpstreamReply(response.status, response.headers.get("Content-Type"), await response.read())

    async def _forward_stream(
        self, endpoint: Endpoint, ticket: DispatchTicket, payload: bytes, headers: dict[str, str], n: int
    ) -> Response:
        started = time.perf_counter()
        upstream = await _upstream_call(self.http.post(self._vllm_urls[endpoint.path], data=payload, headers=headers))
        self.metrics.forward_latency.labels(endpoint.name, "true").observe(time.perf_counter() - started)
        if upstream.status != 200:
            try:
                content = await _upstream_call(upstream.read())
            finally:
                upstream.release()
            return Response(content, status_code=upstream.status, media_type=upstream.headers.get("Content-Type"))
        return RelayedStream(StreamRelay(self, ticket, upstream, n))

    # -- heartbeats and health ------------------------------------------------------------------

    async def _heartbeat_loop(self) -> None:
        failing = False
        while True:
            try:
                await self.send_heartbeat()
            except _HTTP_FAILURES as exc:
                # Logged when beats start failing and when they recover, not every interval.
                if not failing:
                    logger.warning("heartbeats failing (vLLM or the service): %s: %s", type(exc).__name__, exc)
                failing = True
            except Exception:
                # A failed beat must not end the loop, or the service would silently stop routing here.
                logger.exception("heartbeat failed")
                failing = True
            else:
                if failing:
                    logger.info("heartbeats delivered again")
                failing = False
            await asyncio.sleep(self.config.heartbeat_interval)

    async def send_heartbeat(self) -> NodeHeartbeat:
        url, public_url = self._service_urls.get(HEARTBEAT_PATH), self.config.public_url
        assert url is not None and public_url is not None  # AgentConfig requires both together
        running, waiting = await self.queue_depth()
        beat = NodeHeartbeat(
            node=self.address, url=public_url, models=await self.served_models(), tier=self.config.tier,
            region=self.config.region, capacity=self.config.capacity, running=running, waiting=waiting,
            timestamp=int(time.time()), signature="",
        )  # fmt: skip
        signed = Account.sign_message(encode_defunct(text=beat.signing_text()), private_key=self._key)
        beat = beat.model_copy(update={"signature": "0x" + bytes(signed.signature).hex()})
        async with self.http.post(url, data=beat.model_dump_json().encode(), headers=_JSON_HEADERS,
                                  timeout=_SERVICE_TIMEOUT) as response:  # fmt: skip
            response.raise_for_status()
            await response.read()
        return beat

    async def queue_depth(self) -> tuple[int, int]:
        """(running, waiting) requests from vLLM's /metrics, summed over its label sets (engines, models)."""
        url = self._vllm_urls[_METRICS_PATH]
        async with self.http.get(url, headers=self._vllm_auth, timeout=_HEALTH_TIMEOUT) as response:
            response.raise_for_status()
            exposition = await response.text()
        totals = {_VLLM_RUNNING: 0.0, _VLLM_WAITING: 0.0}
        for family in text_string_to_metric_families(exposition):
            for sample in family.samples:
                if sample.name in totals:
                    totals[sample.name] += sample.value
        return round(totals[_VLLM_RUNNING]), round(totals[_VLLM_WAITING])

    async def served_models(self) -> list[str]:
        if self._models is None:
            await self._read_model_cards()
        assert self._models is not None
        return self._models

    async def _read_model_cards(self) -> None:
        url = self._vllm_urls[_MODELS_PATH]
        async with self.http.get(url, headers=self._vllm_auth, timeout=_HEALTH_TIMEOUT) as response:
            response.raise_for_status()
            cards = orjson.loads(await response.read())["data"]
        if self._models is None:
            self._models = [str(card["id"]) for card in cards]
        self._context.update({str(card["id"]): card["max_model_len"] for card in cards
                              if _is_int(card.get("max_model_len"))})  # fmt: skip

    # -- output limits --------------------------------------------------------------------------

    async def _clamp_output(self, body: dict[str, Any], endpoint: Endpoint, model: str, budget: int) -> None:
        """Bound the output by the ticket without making vLLM refuse a request it would have run.

        vLLM refuses prompt + max_tokens beyond the context window, so where the client set no limit
        the ticket's share is written only when it is the tighter bound, and then cut to fit the prompt.
        """
        bounds = output_bounds(body, endpoint, budget)
        if bounds.requested is not None:
            write_output_limit(body, endpoint, min(bounds.requested, bounds.per_choice))
            return
        context = await self._context_length(model)
        if context is not None and bounds.per_choice >= context:
            return  # vLLM's default, the context left after the prompt, is within the ticket
        limit = bounds.per_choice
        prompt_tokens = await self._prompt_tokens(endpoint, body) if context is not None else None
        if context is not None and prompt_tokens is not None:
            limit = min(limit, max(context - prompt_tokens, 1))
        write_output_limit(body, endpoint, limit)

    async def _context_length(self, model: str) -> int | None:
        if model not in self._context:
            with contextlib.suppress(*_HTTP_FAILURES, KeyError, TypeError, ValueError):
                await self._read_model_cards()
        return self._context.get(model)

    async def _prompt_tokens(self, endpoint: Endpoint, body: dict[str, Any]) -> int | None:
        """The prompt's length in tokens from vLLM's /tokenize; None when it cannot say."""
        prompt = body.get("prompt")
        if endpoint.is_chat:
            request = {field: body[field] for field in ("model", *_CHAT_PROMPT_FIELDS) if field in body}
        elif isinstance(prompt, str):
            request = {field: body[field] for field in ("model", "prompt", "add_special_tokens") if field in body}
        elif isinstance(prompt, list) and all(_is_int(token) for token in prompt):
            return len(prompt)
        else:
            return None  # several prompts: the ticket's share is written as it is
        url = self._vllm_urls[_TOKENIZE_PATH]
        try:
            async with self.http.post(url, data=orjson.dumps(request), headers=self._vllm_json_headers) as response:
                count = orjson.loads(await response.read())["count"] if response.status == 200 else None
        except (*_HTTP_FAILURES, ValueError, KeyError, TypeError):
            return None
        return count if _is_int(count) else None

    async def health(self) -> tuple[int, HealthReport]:
        try:
            url = self._vllm_urls[_HEALTH_PATH]
            async with self.http.get(url, headers=self._vllm_auth, timeout=_HEALTH_TIMEOUT) as response:
                vllm_ok = response.status == 200
        except _HTTP_FAILURES:
            vllm_ok = False
        report = HealthReport(
            status="ok" if vllm_ok else "unavailable",
            node=self.address,
            vllm="ok" if vllm_ok else "down",
            dispatch="ok" if self._dispatch is not None else "pending",
        )
        return (200 if vllm_ok else 503), report


async def _upstream_call(call: Awaitable[_T]) -> _T:
    """Await a vLLM call, turning transport failures into the agent's 502/504."""
    try:
        return await call
    except TimeoutError as exc:  # aiohttp's own timeout errors are TimeoutErrors too
        raise UpstreamTimeout(f"vLLM did not answer in time: {type(exc).__name__}") from None
    except aiohttp.ClientError as exc:
        raise UpstreamUnavailable(f"vLLM is unreachable: {type(exc).__name__}: {exc}") from None


# ---------------------------------------------------------------------------------------------
# App factory and runners
# ---------------------------------------------------------------------------------------------


async def _refused_handler(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestRefused)
    return exc.to_response()


_HTTP_ERROR_CODES = {404: "not_found", 405: "method_not_allowed"}


async def _http_error_handler(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    code = _HTTP_ERROR_CODES.get(exc.status_code, "http_error")
    body = ErrorEnvelope(error=ErrorDetail(message=str(exc.detail), type="invalid_request_error", code=code))
    return Response(body.model_dump_json(), status_code=exc.status_code, media_type="application/json")


async def _validation_error_handler(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    return InvalidRequestBody(str(exc.errors())[:500]).to_response()


def create_agent_app(config: AgentConfig) -> FastAPI:
    """Build the agent's FastAPI app; its state (`app.state.agent`) is started by the lifespan."""
    agent = NodeAgent(config)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await agent.start()
        try:
            yield
        finally:
            await agent.stop()

    app = FastAPI(title="Sluice node agent", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.agent = agent
    app.add_exception_handler(RequestRefused, _refused_handler)
    app.add_exception_handler(StarletteHTTPException, _http_error_handler)
    app.add_exception_handler(RequestValidationError, _validation_error_handler)

    # The generation routes take the raw request: the body is forwarded as JSON with every field vLLM knows.
    @app.post(CHAT.path)
    async def chat_completions(request: Request) -> Response:
        return await agent.handle(request, CHAT)

    @app.post(COMPLETIONS.path)
    async def completions(request: Request) -> Response:
        return await agent.handle(request, COMPLETIONS)

    @app.get("/health")
    async def health() -> Response:
        status, report = await agent.health()
        return Response(report.model_dump_json(), status_code=status, media_type="application/json")

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(agent.metrics.exposition(), media_type=CONTENT_TYPE_LATEST)

    return app


def build_agent_server(
    config: AgentConfig, host: str = "127.0.0.1", port: int = 9100, *, log_level: str = "info"
) -> uvicorn.Server:
    """A uvicorn server for the agent, on uvloop and httptools when they are installed."""
    uvicorn_config = uvicorn.Config(
        create_agent_app(config),
        host=host,
        port=port,
        loop="uvloop" if importlib.util.find_spec("uvloop") else "asyncio",
        http="httptools" if importlib.util.find_spec("httptools") else "h11",
        log_level=log_level,
        access_log=log_level in {"debug", "trace"},
        timeout_graceful_shutdown=int(_SHUTDOWN_GRACE_SECONDS),
    )
    return uvicorn.Server(uvicorn_config)


def run_agent(config: AgentConfig, host: str, port: int) -> None:
    """Serve the agent until interrupted (the `sluice node run` command)."""
    server = build_agent_server(config, host, port)
    logger.info("node agent for vLLM at %s on http://%s:%d", config.vllm_url, host, port)
    server.run()


# Start-up polling of a local vLLM, before any event loop runs; never through a proxy from the environment.
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def launch_vllm(
    model: str,
    port: int,
    *,
    host: str = "127.0.0.1",
    extra_args: Sequence[str] = (),
    startup_timeout: float = 1800.0,
) -> subprocess.Popen[bytes]:
    """Start `vllm serve MODEL --port PORT` and return once its /health answers 200.

    Model download and weight loading can take many minutes, hence the long default timeout.
    """
    if importlib.util.find_spec("vllm") is None:
        raise VllmNotInstalled(
            "vLLM is not installed in this environment; install it on the GPU host with: pip install 'sluice[vllm]'"
        )
    executable = shutil.which("vllm", path=str(Path(sys.executable).parent)) or shutil.which("vllm")
    if executable is None:
        raise VllmNotInstalled("the `vllm` command is missing; reinstall with: pip install 'sluice[vllm]'")
    command = [executable, "serve", model, "--host", host, "--port", str(port), *extra_args]
    logger.info("starting %s", " ".join(command))
    process = subprocess.Popen(command)
    url = f"http://{host}:{port}/health"
    deadline = time.monotonic() + startup_timeout
    while time.monotonic() < deadline:
        code = process.poll()
        if code is not None:
            raise VllmLaunchFailed(f"`vllm serve {model}` exited with status {code} before becoming healthy")
        try:
            with _DIRECT.open(url, timeout=2.0) as response:
                if response.status == 200:
                    return process
        except (OSError, http.client.HTTPException):  # urllib's URLError and HTTPError (non-2xx) are OSErrors
            pass
        time.sleep(0.5)
    process.terminate()
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
    raise VllmLaunchFailed(f"`vllm serve {model}` was not healthy on {url} within {startup_timeout:.0f} s")
