"""Dispatch a held call to a node with a signed ticket, relay its answer, and hand its receipt to the meter.

A node that fails before producing anything (connection error, 5xx, no first byte
in time) is skipped for the next candidate; when none is left the hold is
released and the caller gets 503 `no_capacity`. What a call is charged is the
meter's decision (`redemption.metering`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import aiohttp
import orjson
from starlette.responses import Response, StreamingResponse
from yarl import URL

from inference_node.protocol import (
    RECEIPT_EVENT,
    RECEIPT_HEADER,
    TICKET_HEADER,
    ProtocolError,
    SignedReceipt,
    SignedTicket,
)
from inference_node.upstream import UpstreamClosed, UpstreamReply, UpstreamSilent, WholeAnswerPool, answer_begun
from ledger.protocol.eip712 import DispatchTicket, Domains, typed_digest
from ledger.protocol.secp256k1 import sign_digest
from redemption import errors
from redemption.metering import HeldCall, Meter, Relayed
from redemption.metrics import ServiceMetrics
from redemption.routing import NodeRegistry, NodeState

log = logging.getLogger(__name__)


# A node answering these has a problem of its own (its ticket check, its load), not one with the request:
# another node is tried, as for a 5xx. Any other 4xx refuses the request itself (vLLM's 400).
NODE_FAULT_STATUSES = frozenset({401, 403, 408, 409, 429})
# Non-streamed calls to a plain-http node travel over a whole-answer pool of its own (inference_node.upstream):
# aiohttp's request machinery cost more of the service's CPU than anything else on the hop. Its connections are
# dropped after 4 s idle, below the agent's uvicorn keep-alive (5 s), so none is closed under a request.
POOL_KEEPALIVE_SECONDS = 4.0
POOL_CONNECT_SECONDS = 3.0  # the aiohttp session's sock_connect
POOL_LIMIT = 1024  # connections per node, the aiohttp connector's limit
_JSON = {"Content-Type": "application/json"}


def node_refusal(content: bytes, path: str) -> errors.ApiError:
    """A node's refusal of the request itself (context length, a parameter vLLM rejects) in the service's
    envelope with a stable code; vLLM's own envelope carries its exception name and an integer code."""
    message, param = "the node refused the request", None
    with contextlib.suppress(orjson.JSONDecodeError, TypeError, KeyError):
        detail = orjson.loads(content)["error"]
        message = str(detail["message"])
        param = detail.get("param") if isinstance(detail.get("param"), str) else None
    if "context length" in message:
        prompt = "messages" if path == "/v1/chat/completions" else "prompt"
        return errors.InvalidRequest(f"{message}; nothing was charged", prompt, code="context_length_exceeded")
    return errors.InvalidRequest(f"{message}; nothing was charged", param)


def no_capacity(model: str, tier: str | None, region: str | None) -> errors.NoCapacity:
    return errors.NoCapacity(
        f"no node could serve model {model!r} right now" + (f" in tier {tier}" if tier else "")
        + (f" in region {region}" if region else "") + "; nothing was charged, retry later",
        "model",
    )


class Dispatcher:
    def __init__(self, *, client: aiohttp.ClientSession, registry: NodeRegistry, meter: Meter, domains: Domains,
                 dispatch_key: bytes, ticket_ttl: int, first_byte_timeout: float, attempts: int,
                 metrics: ServiceMetrics, hold_lifetime: float) -> None:
        self.client = client
        self.registry = registry
        self.meter = meter
        self.domains = domains
        self.dispatch_key = dispatch_key
        self.ticket_ttl = ticket_ttl
        self.first_byte_timeout = first_byte_timeout
        self.attempts = attempts
        self.metrics = metrics
        # A call is cut this long after it arrived, so its hold never expires while it runs (Invariant 7).
        self.hold_lifetime = hold_lifetime
        self._ending: set[asyncio.Task[None]] = set()
        self._pools: dict[str, WholeAnswerPool | None] = {}
        self._targets: dict[tuple[str, str], bytes] = {}

    def pool_for(self, url: str) -> WholeAnswerPool | None:
        """The whole-answer pool of a plain-http node (made on first use); None for https or credentials."""
        try:
            return self._pools[url]
        except KeyError:
            pass
        base = URL(url)
        pool = None
        if base.scheme == "http" and base.raw_host is not None and base.user is None:
            pool = WholeAnswerPool(base, limit=POOL_LIMIT, pool_timeout=self.first_byte_timeout,
                                   connect_timeout=POOL_CONNECT_SECONDS, read_timeout=self.first_byte_timeout,
                                   keepalive=POOL_KEEPALIVE_SECONDS, headers=_JSON, keep_header=RECEIPT_HEADER)
        self._pools[url] = pool
        return pool

    def close(self) -> None:
        for pool in self._pools.values():
            if pool is not None:
                pool.close()
        self._pools.clear()

    def ticket_for(self, held: HeldCall, node: str) -> str:
        ticket = DispatchTicket(
            job_id=held.job_id, node=node, payer=held.call.payer, spender=held.call.spender,
            model=held.rate.model_id, max_tokens=held.plan.max_tokens, input_rate=held.rate.input_rate,
            output_rate=held.rate.output_rate, request_digest=held.call.digest,
            expires=int(time.time()) + self.ticket_ttl,
        )
        signature = sign_digest(self.dispatch_key, typed_digest(self.domains.ticket, ticket.struct_hash()))
        return SignedTicket(ticket, signature).encode()

    def node_payload(self, held: HeldCall) -> bytes:
        payload = dict(held.payload)
        payload["max_tokens"] = held.plan.max_tokens
        payload.pop("max_completion_tokens", None)
        if held.stream:
            payload["stream_options"] = {"include_usage": True, "continuous_usage_stats": True}
        return orjson.dumps(payload)

    async def _attempt_node(self, held: HeldCall, first: NodeState, attempt: int, tried: set[str]) -> NodeState | None:
        """The node of try `attempt`: `first` (bound by the hold's own synchronous commit), then the best node
        not yet tried, bound to the job before it sees a ticket; None when no node is left."""
        if attempt:
            candidates = self.registry.candidates(held.payload["model"], held.tier, held.region, frozenset(tried))
            if not candidates:
                return None
            node = candidates[0]
            self.metrics.dispatch_retries.inc()
            # Before the node sees the ticket: only this node's receipt may meter the job (Invariant 8).
            if not await self.meter.store.bind_dispatch(held.job_id, node.node, held.plan.max_tokens,
                                                        held.plan.prompt_bound):
                raise errors.DatabaseUnavailable("the call's hold was lost in a database restart; nothing "
                                                 "was charged, retry")
        else:
            node = first
        tried.add(node.node)
        return node

    async def _open(self, held: HeldCall, first: NodeState) -> tuple[NodeState, aiohttp.ClientResponse, float]:
        """Open the request on the best node that answers, `first` (the hold is bound to it) first; nodes that
        fail first are skipped."""
        tried: set[str] = set()
        body = self.node_payload(held)
        for attempt in range(self.attempts):
            node = await self._attempt_node(held, first, attempt, tried)
            if node is None:
                break
            headers = {"content-type": "application/json", TICKET_HEADER: self.ticket_for(held, node.node)}
            started = time.perf_counter()
            node.in_flight += 1
            try:
                # asyncio.timeout, not wait_for: on Python 3.11 wait_for runs the request in a task of its own.
                async with asyncio.timeout(self.first_byte_timeout):
                    response = await self.client.post(node.url.rstrip("/") + held.path, data=body, headers=headers)
            except (aiohttp.ClientError, TimeoutError) as exc:
                node.in_flight -= 1
                self.registry.record_failure(node.node)
                log.warning("node %s failed before answering: %r", node.node, exc)
                continue
            if response.status >= 500 or response.status in NODE_FAULT_STATUSES:
                node.in_flight -= 1
                response.close()
                self.registry.record_failure(node.node)
                log.warning("node %s answered %s", node.node, response.status)
                continue
            self.registry.record_latency(node.node, (time.perf_counter() - started) * 1000)
            return node, response, started
        await self.meter.release(held)
        raise no_capacity(held.payload["model"], held.tier, held.region)

    def _remaining(self, held: HeldCall) -> float:
        return max(held.received + self.hold_lifetime - time.perf_counter(), 0.0)

    async def complete(self, held: HeldCall, first: NodeState) -> Response:
        """A non-streamed call: the whole answer of the best node that gives one, `first` (the hold is bound to
        it) first. A node that fails before its answer begins (refused, silent for the node timeout, a 5xx) is
        skipped for the next; one that fails after is not retried, and the call is free."""
        tried: set[str] = set()
        body = self.node_payload(held)
        for attempt in range(self.attempts):
            node = await self._attempt_node(held, first, attempt, tried)
            if node is None:
                break
            started = time.perf_counter()
            node.in_flight += 1
            try:
                async with asyncio.timeout(self._remaining(held)) as cut:
                    reply = await self._whole_answer(held, node, body)
            except (ConnectionError, OSError, TimeoutError) as exc:
                if cut.expired():
                    raise self._cut(held) from None
                if not answer_begun(exc):
                    self.registry.record_failure(node.node)
                    log.warning("node %s failed before answering: %r", node.node, exc)
                    continue
                # Dropped once the answer had begun: no receipt, so nothing can be charged.
                await self.meter.release(held)
                raise errors.UpstreamError(f"the node dropped the call before answering ({exc!r}); nothing was "
                                           "charged, retry") from None
            finally:
                node.in_flight -= 1
            if reply.status >= 500 or reply.status in NODE_FAULT_STATUSES:
                self.registry.record_failure(node.node)
                log.warning("node %s answered %s", node.node, reply.status)
                continue
            node_time = time.perf_counter() - started
            self.registry.record_latency(node.node, node_time * 1000)
            return await self._answered(held, node, reply, node_time)
        await self.meter.release(held)
        raise no_capacity(held.payload["model"], held.tier, held.region)

    async def _whole_answer(self, held: HeldCall, node: NodeState, body: bytes) -> UpstreamReply:
        """POST the call with its ticket to `node` and read the whole answer: over the node's whole-answer pool
        when it has one, else over aiohttp. Failures are ConnectionErrors or TimeoutErrors saying whether the
        answer had begun (`answer_begun`); a cancel (the cut) closes the connection, so the node stops and
        posts its receipt."""
        ticket = self.ticket_for(held, node.node)
        pool = self.pool_for(node.url)
        if pool is not None:
            target = self._targets.get((node.url, held.path))
            if target is None:
                target = URL(node.url.rstrip("/") + held.path).raw_path_qs.encode()
                self._targets[(node.url, held.path)] = target
            return await pool.post(target, body, b"%s: %s\r\n" % (TICKET_HEADER.encode(), ticket.encode()))
        headers = {"content-type": "application/json", TICKET_HEADER: ticket}
        try:
            # asyncio.timeout, not wait_for: on Python 3.11 wait_for runs the request in a task of its own.
            async with asyncio.timeout(self.first_byte_timeout):
                response = await self.client.post(node.url.rstrip("/") + held.path, data=body, headers=headers)
        except TimeoutError:
            raise UpstreamSilent(f"no answer began within {self.first_byte_timeout:g} s") from None
        except aiohttp.ClientError as exc:
            raise UpstreamClosed(repr(exc)) from None
        try:
            content = await response.read()
        except aiohttp.ClientError as exc:
            response.close()
            raise UpstreamClosed(repr(exc), begun=True) from None
        except BaseException:
            response.close()
            raise
        finally:
            response.release()
        return UpstreamReply(response.status, response.content_type, content, response.headers.get(RECEIPT_HEADER))

    def _cut(self, held: HeldCall) -> errors.DurationExceeded:
        """A call cut at the hold lifetime (its connection closed, so the node posts its receipt): the hold may
        expire once the receipt has had its time; the client is told it pays for what was generated."""
        # A task, not an await: this runs while the client's disconnect cancels the relay.
        ended = asyncio.get_running_loop().create_task(self.meter.ended(held))
        self._ending.add(ended)
        ended.add_done_callback(self._ending.discard)
        return errors.DurationExceeded(
            f"the call ran past the {self.hold_lifetime:.0f} s limit of one call and was stopped; you will be "
            "charged only for the tokens the node generated; ask for fewer tokens or stream")

    async def _answered(self, held: HeldCall, node: NodeState, reply: UpstreamReply, node_time: float) -> Response:
        """Meter a whole answer from its receipt (else fail closed from what it relayed) and relay it."""
        if reply.status != 200:
            await self.meter.release(held)
            raise node_refusal(reply.body, held.path)
        signed: SignedReceipt | None = None
        if reply.header is not None:
            try:
                signed = SignedReceipt.decode(reply.header)
            except ProtocolError:
                self.metrics.bad_receipts.labels("malformed").inc()
        cost = await self.meter.charge(held, node.node, signed, datetime.now(UTC), relayed_answer(reply.body))
        self.metrics.overhead.observe(max(time.perf_counter() - held.received - node_time, 0.0))
        return Response(reply.body, media_type="application/json",
                        headers={"Sluice-Job-Id": "0x" + held.job_id.hex(), "Sluice-Cost": str(cost)})

    async def stream(self, held: HeldCall, first: NodeState) -> Response:
        node, response, _started = await self._open(held, first)
        if response.status != 200:
            try:
                content = await response.read()
            finally:
                node.in_flight -= 1
                response.release()
            await self.meter.release(held)
            raise node_refusal(content, held.path)
        headers = {"Sluice-Job-Id": "0x" + held.job_id.hex(), "Cache-Control": "no-cache"}
        return StreamingResponse(self._relay(held, node, response), media_type="text/event-stream", headers=headers)

    async def _relay(self, held: HeldCall, node: NodeState, response: aiohttp.ClientResponse) -> AsyncIterator[bytes]:
        """Pass SSE chunks through as they arrive; hold back the usage chunk until the receipt is metered.

        A stream that breaks ends, for the client, with one `upstream_dropped` error event (the service's
        envelope, naming what was charged) and `[DONE]`, however the node reported the break.
        """
        wants_continuous = bool((held.payload.get("stream_options") or {}).get("continuous_usage_stats"))
        usage_chunk: dict[str, Any] | None = None
        first_token_at: datetime | None = None
        event = ""
        finished = False
        dropped = False
        cut_off = False
        charged: int | None = None
        seen = StreamTally()
        try:
            try:
                async with asyncio.timeout(self._remaining(held)) as cut:
                    async for raw in response.content:
                        line = raw.decode().rstrip("\r\n")
                        if line.startswith("event:"):
                            event = line[6:].strip()
                            continue
                        if not line.startswith("data:"):
                            if not line:
                                event = ""
                            continue
                        data = line[5:].strip()
                        if event == RECEIPT_EVENT:
                            signed: SignedReceipt | None
                            try:
                                signed = SignedReceipt.decode(data)
                            except ProtocolError:
                                self.metrics.bad_receipts.labels("malformed").inc()
                                signed = None
                            charged = await self.meter.charge(held, node.node, signed, first_token_at,
                                                              seen.relayed())
                            finished = True
                            if usage_chunk is not None:
                                usage_chunk["sluice"] = {"job_id": "0x" + held.job_id.hex(), "cost": str(charged)}
                                yield b"data: " + orjson.dumps(usage_chunk) + b"\n\n"
                                usage_chunk = None
                            continue
                        if data == "[DONE]":
                            if not finished:  # no receipt came: charged from what was relayed (fail closed)
                                charged = await self.meter.charge(held, node.node, None, first_token_at,
                                                                  seen.relayed())
                                finished = True
                            if usage_chunk is not None:
                                usage_chunk["sluice"] = {"job_id": "0x" + held.job_id.hex(), "cost": str(charged)}
                                yield b"data: " + orjson.dumps(usage_chunk) + b"\n\n"
                                usage_chunk = None
                            break
                        try:
                            chunk = orjson.loads(data)
                        except orjson.JSONDecodeError:
                            log.warning("node %s sent a chunk that is not JSON for job 0x%s", node.node,
                                        held.job_id.hex())
                            dropped = True
                            break
                        seen.add(chunk)
                        if isinstance(chunk, dict) and "error" in chunk and not chunk.get("choices"):
                            # The node's own words name its internals; the client gets the service's envelope last.
                            log.warning("node %s broke job 0x%s mid-stream: %s", node.node, held.job_id.hex(),
                                        chunk["error"])
                            dropped = True
                            continue
                        if isinstance(chunk, dict) and chunk.get("usage") and not chunk.get("choices"):
                            usage_chunk = chunk
                            continue
                        if first_token_at is None:
                            first_token_at = datetime.now(UTC)
                        if not wants_continuous and isinstance(chunk, dict) and "usage" in chunk:
                            chunk.pop("usage")
                            yield b"data: " + orjson.dumps(chunk) + b"\n\n"
                        else:
                            yield b"data: " + data.encode() + b"\n\n"
                    else:
                        dropped = True  # the node's stream ended without [DONE]
            except TimeoutError as exc:
                if cut.expired():
                    cut_off = True
                else:
                    log.warning("node %s dropped job 0x%s mid-stream: %r", node.node, held.job_id.hex(), exc)
                    dropped = True
            except aiohttp.ClientError as exc:
                log.warning("node %s dropped job 0x%s mid-stream: %r", node.node, held.job_id.hex(), exc)
                dropped = True
            if cut_off:
                yield b"data: " + orjson.dumps(duration_error(self.hold_lifetime).body()) + b"\n\n"
            elif dropped:
                yield b"data: " + orjson.dumps(dropped_error(charged).body()) + b"\n\n"
            yield b"data: [DONE]\n\n"
        finally:
            node.in_flight -= 1
            if finished:
                response.release()
            else:
                # Client gone, node dropped or call cut: closing the connection tells the node to stop
                # generating; it signs what it generated and posts the receipt to /internal/receipts.
                response.close()
                # A task, not an await: this runs while the client's disconnect cancels the relay. Until the
                # receipt comes, the hold keeps what was relayed, charged at its expiry if none is acceptable.
                ended = asyncio.get_running_loop().create_task(self.meter.ended(held, seen.relayed()))
                self._ending.add(ended)
                ended.add_done_callback(self._ending.discard)


class StreamTally:
    """What passed through a relayed stream: the node's latest usage figures, and the content chunks counted."""

    def __init__(self) -> None:
        self.usage: dict[str, Any] | None = None
        self.chunks = 0

    def add(self, chunk: Any) -> None:
        if not isinstance(chunk, dict):
            return
        usage = chunk.get("usage")
        if isinstance(usage, dict):
            self.usage = usage
        choices = chunk.get("choices")
        if isinstance(choices, list):
            self.chunks += sum(1 for c in choices if isinstance(c, dict) and _chunk_text(c))

    def relayed(self) -> Relayed:
        return relayed_usage(self.usage, self.chunks)


def _chunk_text(choice: dict[str, Any]) -> bool:
    delta = choice.get("delta")
    if isinstance(delta, dict):
        return bool(delta.get("content") or delta.get("reasoning_content") or delta.get("tool_calls"))
    return bool(choice.get("text"))


def _count(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**31 else None


def relayed_usage(usage: dict[str, Any] | None, counted: int) -> Relayed:
    """The node's own usage figures when it gave them, never fewer completion tokens than were counted."""
    prompt = completion = None
    if usage is not None:
        prompt, completion = _count(usage.get("prompt_tokens")), _count(usage.get("completion_tokens"))
    return Relayed(prompt, max(completion or 0, counted))


def relayed_answer(content: bytes) -> Relayed:
    """What a non-streamed answer relayed: its usage, else one token per non-empty choice."""
    try:
        answer = orjson.loads(content)
    except orjson.JSONDecodeError:
        return Relayed(None, 1 if content.strip() else 0)
    if not isinstance(answer, dict):
        return Relayed(None, 1 if content.strip() else 0)
    usage = answer.get("usage") if isinstance(answer.get("usage"), dict) else None
    choices = answer.get("choices")
    counted = 0
    for choice in choices if isinstance(choices, list) else []:
        if isinstance(choice, dict):
            message = choice.get("message")
            text = message.get("content") if isinstance(message, dict) else choice.get("text")
            counted += 1 if text else 0
    return relayed_usage(usage, counted)


def dropped_error(charged: int | None) -> errors.UpstreamError:
    """What a client whose stream broke is told: what it was charged, and to retry for the rest."""
    if charged is None:
        bill = "you will be charged only for the tokens it generated"
    else:
        bill = f"you were charged {charged} base units, only for the tokens it generated"
    return errors.UpstreamError(f"the node dropped the stream; {bill}; send the call again for the rest",
                                code="upstream_dropped")


def duration_error(limit: float) -> errors.DurationExceeded:
    """The last event of a stream cut at the hold lifetime: what it is charged, and what to do."""
    return errors.DurationExceeded(
        f"the stream ran past the {limit:.0f} s limit of one call and was stopped; you will be charged only for "
        "the tokens it generated; send the call again for the rest")
