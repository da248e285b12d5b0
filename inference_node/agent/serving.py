"""The node agent (:class:`NodeAgent`): admit, forward to vLLM, meter, register.

* admission: a call runs only with a dispatch ticket (:mod:`inference_node.agent.tickets`);
* forwarding to vLLM with `max_tokens` clamped to the ticket (:mod:`inference_node.agent.bounds`) and
  usage forced on for streams; a service hanging up aborts the vLLM request;
* metering: an EIP-712 `UsageReceipt` signed by the node key for what vLLM reports it generated, in
  the `Sluice-Receipt` header, as the last SSE event (:mod:`inference_node.agent.relay`), or POSTed
  to the service when the service hung up mid-stream;
* registration: signed heartbeats with vLLM's queue depth, and fetching `DispatchInfo`.

The wire formats live in :mod:`inference_node.protocol`, the typed messages in :mod:`ledger.protocol.eip712`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Coroutine
from typing import Any, Literal, TypeVar

import aiohttp
import orjson
from eth_account import Account
from eth_account.messages import encode_defunct
from fastapi import Request
from fastapi.responses import Response
from prometheus_client.parser import text_string_to_metric_families
from pydantic import BaseModel, Field
from starlette.types import Receive, Scope, Send
from yarl import URL

from inference_node.agent.bounds import CHAT, COMPLETIONS, Endpoint, clamp_output, is_int, optional_int
from inference_node.agent.config import AgentConfig
from inference_node.agent.counting import prompt_token_bound
from inference_node.agent.errors import (
    HTTP_FAILURES,
    BodyTooLarge,
    InvalidRequestBody,
    ModelMismatch,
    NodeNotReady,
    RequestRefused,
    TicketRefused,
    UpstreamRefused,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from inference_node.agent.metrics import AgentMetrics
from inference_node.agent.relay import RelayedStream, StreamRelay, usage_counts
from inference_node.agent.tickets import TicketGate
from inference_node.protocol import (
    DISPATCH_INFO_PATH,
    HEARTBEAT_PATH,
    RECEIPT_HEADER,
    RECEIPTS_PATH,
    TICKET_HEADER,
    UNSIGNED,
    DispatchInfo,
    NodeHeartbeat,
    PromptTokenBound,
    SignedReceipt,
)
from inference_node.upstream import UpstreamReply, WholeAnswerPool
from ledger.domain import usage_cost
from ledger.protocol.eip712 import DispatchTicket, UsageReceipt, typed_digest
from ledger.protocol.secp256k1 import address_of, sign_digest

logger = logging.getLogger(__name__)

_T = TypeVar("_T")

_VLLM_RUNNING = "vllm:num_requests_running"
_VLLM_WAITING = "vllm:num_requests_waiting"
_VLLM_GAUGES = (_VLLM_RUNNING, _VLLM_WAITING)
SHUTDOWN_GRACE_SECONDS = 5.0
# How long a non-streamed call runs before a hang-up is watched for: well under any real generation, well over
# a zero-latency answer, whose watcher task would cost more CPU than the rest of the agent's Python per call.
HANG_UP_GRACE_SECONDS = 0.01
_DISPATCH_RETRY_MAX_SECONDS = 10.0
_CONNECT_TIMEOUT_SECONDS = 5.0
# Below the keep-alive of vLLM's uvicorn (VLLM_HTTP_TIMEOUT_KEEP_ALIVE, 5 s) and the service's (uvicorn's 5 s):
# a pooled connection is dropped here before the server may close it under a heartbeat's next request.
_KEEPALIVE_SECONDS = 4.0
# Health, /metrics and /v1/models reads: the node reports vLLM down rather than wait on it.
_HEALTH_TIMEOUT = aiohttp.ClientTimeout(connect=2.0, sock_connect=2.0, sock_read=2.0)
_SERVICE_TIMEOUT = aiohttp.ClientTimeout(connect=10.0, sock_connect=_CONNECT_TIMEOUT_SECONDS, sock_read=10.0)
_JSON_HEADERS = {"Content-Type": "application/json"}
_METRICS_PATH = "/metrics"
_MODELS_PATH = "/v1/models"
_HEALTH_PATH = "/health"
_TOKENIZE_PATH = "/tokenize"
_VLLM_PATHS = (CHAT.path, COMPLETIONS.path, _METRICS_PATH, _MODELS_PATH, _HEALTH_PATH, _TOKENIZE_PATH)
_SERVICE_PATHS = (DISPATCH_INFO_PATH, HEARTBEAT_PATH, RECEIPTS_PATH)


def _stream_flag(body: dict[str, Any]) -> bool:
    value = body.get("stream")
    if value is None:
        return False
    if not isinstance(value, bool):
        # vLLM would read "false" as False while we would not: agree on JSON booleans only.
        raise InvalidRequestBody("`stream` must be a boolean", param="stream")
    return value


_TICKET_HEADER_NAME = TICKET_HEADER.lower().encode("latin-1")
_RECEIPT_HEADER_NAME = RECEIPT_HEADER.lower().encode("latin-1")


def _ticket_header(scope: Scope) -> str | None:
    """The request's first ticket header, as Starlette's `Headers.get` reads it (ASGI names are lower-case)."""
    for name, value in scope["headers"]:
        if name == _TICKET_HEADER_NAME:
            return str(value.decode("latin-1"))
    return None


def _declared_length(scope: Scope) -> int | None:
    """The request's Content-Length, None without one (a chunked body); the server has checked its syntax."""
    for name, value in scope["headers"]:
        if name == b"content-length":
            return int(value) if value.isdigit() else None
    return None


async def _receive_body(scope: Scope, receive: Receive, limit: int) -> bytes | None:
    """The whole request body from the ASGI `receive`, None when the client hung up before sending it.

    A body declared, or found while read, to be over `limit` bytes is refused without reading (the rest of) it.
    """
    declared = _declared_length(scope)
    if declared is not None and declared > limit:
        raise BodyTooLarge(f"the request body of {declared} bytes is over this node's {limit}-byte limit; send a "
                           "smaller request, or raise the agent's --max-body-bytes")
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return None
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge(f"the request body is over this node's {limit}-byte limit; send a smaller request, "
                               "or raise the agent's --max-body-bytes")
        chunks.append(chunk)
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


async def _wait_for_disconnect(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


async def _unless_disconnected(
    receive: Receive, work: Awaitable[_T], grace: float = HANG_UP_GRACE_SECONDS
) -> tuple[bool, _T | None]:
    """Await `work` in this task, cancelling it if the client hangs up first: (True, result) or (False, None).

    After `grace` seconds one watcher task starts waiting for the hang-up and cancels this task when it comes, so
    `work` needs no task of its own, and a call answered within `grace` (the simulator's, a cached prompt's) pays
    for no watcher at all. A hang-up in the first `grace` seconds is seen when the watcher starts.
    """
    handler = asyncio.current_task()
    assert handler is not None
    watching = True
    hung_up = False
    watcher: asyncio.Task[None] | None = None

    def on_watcher_done(done: asyncio.Task[None]) -> None:
        nonlocal hung_up
        if done.cancelled():
            return
        if done.exception() is None and watching:  # a receive() that failed is no hang-up
            hung_up = True
            handler.cancel()

    def start_watching() -> None:
        nonlocal watcher
        watcher = asyncio.ensure_future(_wait_for_disconnect(receive))
        watcher.add_done_callback(on_watcher_done)

    timer = asyncio.get_running_loop().call_later(grace, start_watching)
    try:
        return True, await work
    except asyncio.CancelledError:
        # Cancelled by the watcher alone: the hang-up is an answer. Any other cancel (shutdown) goes on.
        if hung_up and handler.uncancel() == 0:
            return False, None
        raise
    finally:
        # The watcher may have finished with its callback still queued: `watching` keeps that from cancelling later.
        watching = False
        timer.cancel()
        if watcher is not None:
            watcher.cancel()


class ReceiptedReply:
    """vLLM's whole answer with its receipt header, sent as two ASGI messages (no Starlette `Response`)."""

    __slots__ = ("_body", "_head")
    status_code = 200

    def __init__(self, body: bytes, media_type: str | None, receipt: str) -> None:
        self._body = body
        head = [(b"content-length", str(len(body)).encode()), (_RECEIPT_HEADER_NAME, receipt.encode("latin-1"))]
        if media_type is not None:
            head.append((b"content-type", media_type.encode("latin-1")))
        self._head = head

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": self._head})
        await send({"type": "http.response.body", "body": self._body})


Answer = Response | ReceiptedReply


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
        self.address: str = address_of(self._key)
        self.metrics = AgentMetrics()
        self.tickets = TicketGate(self.address, clock_skew=config.clock_skew, max_lifetime=config.ticket_max_lifetime)
        self._dispatch_ready = asyncio.Event()
        self._models: list[str] | None = config.models
        self._context: dict[str, int] = {}  # max_model_len by served name, from vLLM
        # Parsed once: aiohttp takes a URL object as it is, where a string is parsed on every call.
        self._vllm_urls = {path: URL(config.vllm_url + path) for path in _VLLM_PATHS}
        service = config.service_url
        self._service_urls = {path: URL(service + path) for path in _SERVICE_PATHS} if service is not None else {}
        self._vllm_auth: dict[str, str] = {}  # only for vLLM: the service must never see vLLM's API key
        if config.vllm_api_key is not None:
            self._vllm_auth["Authorization"] = f"Bearer {config.vllm_api_key.get_secret_value()}"
        self._vllm_json_headers = {**_JSON_HEADERS, **self._vllm_auth}
        # Whole answers (non-streamed generation, /tokenize) from a plain-http vLLM skip aiohttp (upstream.py).
        self._whole: WholeAnswerPool | None = None
        self._vllm_targets = {path: url.raw_path_qs.encode("latin-1") for path, url in self._vllm_urls.items()}
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
        vllm = URL(config.vllm_url)
        if vllm.scheme == "http" and vllm.user is None:
            self._whole = WholeAnswerPool(
                vllm, limit=config.max_connections, pool_timeout=config.vllm_timeout,
                connect_timeout=_CONNECT_TIMEOUT_SECONDS, read_timeout=config.vllm_timeout,
                keepalive=_KEEPALIVE_SECONDS, headers=self._vllm_json_headers,
            )  # fmt: skip
        if config.service_url is None:
            logger.info("node %s runs standalone: no heartbeats, abort receipts are only logged", self.address)
            return
        if self.tickets.dispatch is None:
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
            _, pending = await asyncio.wait(set(self._tasks), timeout=SHUTDOWN_GRACE_SECONDS)
            for task in pending:
                task.cancel()
        if self._whole is not None:
            self._whole.close()
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
        self.tickets.use_dispatch(info)
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
                self._use_dispatch(info)
            except (*HTTP_FAILURES, ValueError) as exc:  # ValueError: pydantic's, or a signer that is no address
                if attempt == 1 or attempt % 10 == 0:
                    logger.warning("DispatchInfo from %s failed (attempt %d): %s", self.config.service_url, attempt,
                                   exc or type(exc).__name__)  # fmt: skip
                await asyncio.sleep(delay)
                delay = min(delay * 2, _DISPATCH_RETRY_MAX_SECONDS)
                continue
            logger.info("dispatch signer %s on chain %d, settlement %s", info.dispatch_signer, info.chain_id,
                        info.settlement)  # fmt: skip
            return

    # -- receipts -------------------------------------------------------------------------------

    def sign_receipt(self, ticket: DispatchTicket, prompt_tokens: int, completion_tokens: int) -> SignedReceipt:
        domains = self.tickets.domains
        assert domains is not None  # a ticket was admitted, so the domains are known
        cost = usage_cost(prompt_tokens, completion_tokens, ticket.input_rate, ticket.output_rate)
        receipt = UsageReceipt(
            job_id=ticket.job_id, payer=ticket.payer, spender=ticket.spender, model=ticket.model,
            prompt_tokens=prompt_tokens, completion_tokens=completion_tokens, cost=cost,
            request_digest=ticket.request_digest,
        )  # fmt: skip
        digest = typed_digest(domains.receipt, receipt.struct_hash())
        return SignedReceipt(receipt, sign_digest(self._key, digest), self.address)

    def record_receipt(self, signed: SignedReceipt, delivery: str) -> None:
        self.metrics.receipted(delivery, signed.receipt.prompt_tokens, signed.receipt.completion_tokens)

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
            except HTTP_FAILURES as exc:
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

    async def answer(self, scope: Scope, receive: Receive, send: Send, endpoint: Endpoint) -> None:
        """Admit, forward, meter and answer one generation request, as a raw ASGI app; every outcome is counted."""
        try:
            response = await self._handle(scope, receive, endpoint)
        except RequestRefused as refused:
            if isinstance(refused, TicketRefused):
                self.metrics.ticket_rejected(refused.code)
            response = refused.to_response()
        self.metrics.request_answered(endpoint.name, response.status_code)
        await response(scope, receive, send)

    async def _handle(self, scope: Scope, receive: Receive, endpoint: Endpoint) -> Answer:
        ticket = self.tickets.admit(_ticket_header(scope))
        # Read only for a ticket this node would serve, and only up to the limit: the ticket is spent further on.
        raw = await _receive_body(scope, receive, self.config.max_body_bytes)
        if raw is None:
            return Response(status_code=499)  # the service hung up before its request arrived; nothing was run
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise InvalidRequestBody(f"the body is not JSON: {exc}") from None
        if not isinstance(body, dict):
            raise InvalidRequestBody("the body must be a JSON object")
        model = body.get("model")
        if not isinstance(model, str) or not self.tickets.is_ticket_model(model, ticket):
            raise ModelMismatch(f"model {model!r} is not the model the ticket was issued for", param="model")
        stream = _stream_flag(body)
        await clamp_output(body, endpoint, model, ticket.max_tokens, self)
        if stream:
            options = body.get("stream_options")
            # Metering needs usage on every chunk; the service decides what its client sees.
            body["stream_options"] = {
                **(options if isinstance(options, dict) else {}), "include_usage": True, "continuous_usage_stats": True
            }  # fmt: skip
        self.tickets.spend(ticket)
        # The job id names the vLLM request, so vLLM's logs and response ids point at the job.
        request_id = ticket.job_id.hex()
        # Always the object checked here, re-encoded (about 1 us): the ticket's bound must not rest on vLLM's
        # JSON parser reading the client's bytes (duplicate keys, say) exactly as orjson did.
        payload = orjson.dumps(body)
        if stream:
            n = optional_int(body, "n") or 1
            return await self._forward_stream(endpoint, ticket, payload, request_id, n)
        return await self._forward(receive, endpoint, ticket, payload, request_id)

    async def _forward(
        self, receive: Receive, endpoint: Endpoint, ticket: DispatchTicket, payload: bytes, request_id: str
    ) -> Answer:
        started = time.perf_counter()
        _, reply = await _unless_disconnected(receive, self._post_vllm(endpoint.path, payload, request_id))
        if reply is None:
            # The service hung up: the vLLM connection was dropped, so vLLM aborted; nothing was delivered to bill.
            logger.info("job 0x%s: service left before vLLM answered; generation aborted", ticket.job_id.hex())
            return Response(status_code=499)
        self.metrics.forwarded(endpoint.name, False, time.perf_counter() - started)
        if reply.status != 200:
            return Response(reply.body, status_code=reply.status, media_type=reply.media_type)
        try:
            counts = usage_counts(orjson.loads(reply.body).get("usage"))
        except (orjson.JSONDecodeError, AttributeError):
            counts = None
        if counts is None:
            raise UpstreamUnavailable("vLLM answered without usage; the job cannot be metered")
        receipt = self.sign_receipt(ticket, *counts)
        self.record_receipt(receipt, "header")
        return ReceiptedReply(reply.body, reply.media_type, receipt.encode())

    async def _post_vllm(self, path: str, payload: bytes, request_id: str | None = None) -> UpstreamReply:
        """One whole vLLM answer; transport failures become the agent's 502/504 (as `_upstream_call`)."""
        # Cancelled mid-call (the service hung up), the connection is closed and vLLM aborts the request.
        whole = self._whole
        try:
            if whole is not None:
                extra = b"" if request_id is None else b"X-Request-Id: " + request_id.encode("latin-1") + b"\r\n"
                return await whole.post(self._vllm_targets[path], payload, extra)
            headers = self._vllm_json_headers if request_id is None else {**self._vllm_json_headers,
                                                                          "X-Request-Id": request_id}  # fmt: skip
            async with self.http.post(self._vllm_urls[path], data=payload, headers=headers) as response:
                return UpstreamReply(response.status, response.headers.get("Content-Type"), await response.read())
        except TimeoutError as exc:  # aiohttp's and asyncio's timeouts are TimeoutErrors (and OSErrors) too
            raise UpstreamTimeout(f"vLLM did not answer in time: {type(exc).__name__}") from None
        except (aiohttp.ClientError, OSError) as exc:
            raise UpstreamUnavailable(f"vLLM is unreachable: {type(exc).__name__}: {exc}") from None

    async def _forward_stream(
        self, endpoint: Endpoint, ticket: DispatchTicket, payload: bytes, request_id: str, n: int
    ) -> Response:
        started = time.perf_counter()
        headers = {**self._vllm_json_headers, "X-Request-Id": request_id}
        upstream = await _upstream_call(self.http.post(self._vllm_urls[endpoint.path], data=payload, headers=headers))
        self.metrics.forwarded(endpoint.name, True, time.perf_counter() - started)
        if upstream.status != 200:
            try:
                content = await _upstream_call(upstream.read())
            finally:
                upstream.release()
            return Response(content, status_code=upstream.status, media_type=upstream.headers.get("Content-Type"))
        return RelayedStream(StreamRelay(self, ticket, upstream, n))

    # -- prompt-token bounds (counting.prompt_token_bound) --------------------------------------

    async def count_prompt(self, request: Request, endpoint: Endpoint) -> PromptTokenBound:
        """The bound on a request's prompt tokens, counted by vLLM's tokenizer where it renders like generation."""
        # This route takes no ticket: the body limit is all that stands between a stranger and the agent's memory.
        raw = await _receive_body(request.scope, request.receive, self.config.max_body_bytes)
        if raw is None:
            raise InvalidRequestBody("the request body did not arrive; send the whole request")
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise InvalidRequestBody(f"the body is not JSON: {exc}") from None
        if not isinstance(body, dict):
            raise InvalidRequestBody("the body must be a JSON object")
        return await prompt_token_bound(body, endpoint, self._tokenize, self.context_length)

    async def _tokenize(self, request: dict[str, Any]) -> int:
        reply = await self._post_vllm(_TOKENIZE_PATH, orjson.dumps(request))
        if reply.status != 200:
            # vLLM's own refusal (unknown model, bad messages) is the client's to see, as generation would show it.
            raise UpstreamRefused(reply.status, reply.body, reply.media_type)
        try:
            count = orjson.loads(reply.body)["count"]
        except (orjson.JSONDecodeError, KeyError, TypeError):
            count = None
        if not is_int(count) or count < 0:
            raise UpstreamUnavailable("vLLM's /tokenize answered without a token count")
        return int(count)

    # -- heartbeats and health ------------------------------------------------------------------

    async def _heartbeat_loop(self) -> None:
        failing = False
        while True:
            try:
                await self.send_heartbeat()
            except HTTP_FAILURES as exc:
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
            timestamp=int(time.time()), signature=UNSIGNED,
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
        # Only the two gauges' sample lines go through the parser: vLLM's whole exposition is hundreds of lines.
        wanted = "\n".join(line for line in exposition.splitlines() if line.startswith(_VLLM_GAUGES))
        for family in text_string_to_metric_families(wanted + "\n"):
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
                              if is_int(card.get("max_model_len"))})  # fmt: skip

    # -- output limits (bounds.ContextLengths) --------------------------------------------------

    async def context_length(self, model: str) -> int | None:
        if model not in self._context:
            with contextlib.suppress(*HTTP_FAILURES, KeyError, TypeError, ValueError):
                await self._read_model_cards()
        return self._context.get(model)

    async def health(self) -> tuple[int, HealthReport]:
        try:
            url = self._vllm_urls[_HEALTH_PATH]
            async with self.http.get(url, headers=self._vllm_auth, timeout=_HEALTH_TIMEOUT) as response:
                vllm_ok = response.status == 200
        except HTTP_FAILURES:
            vllm_ok = False
        report = HealthReport(
            status="ok" if vllm_ok else "unavailable",
            node=self.address,
            vllm="ok" if vllm_ok else "down",
            dispatch="ok" if self.tickets.dispatch is not None else "pending",
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
