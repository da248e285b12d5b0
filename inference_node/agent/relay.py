"""Streams: relay one vLLM SSE stream event by event, track its usage, and receipt it exactly once."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Coroutine
from typing import Any, Protocol

import aiohttp
import orjson
from fastapi.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from inference_node.agent.bounds import is_int
from inference_node.agent.errors import HTTP_FAILURES, ErrorDetail
from inference_node.agent.metrics import AgentMetrics
from inference_node.protocol import RECEIPT_EVENT, SignedReceipt
from ledger.protocol.eip712 import DispatchTicket

logger = logging.getLogger(__name__)

UPSTREAM_DROPPED = "upstream_dropped"
_SSE_DONE = b"data: [DONE]\n\n"
_SSE_EVENT_END = b"\n\n"


def usage_counts(usage: object) -> tuple[int, int] | None:
    """(prompt_tokens, completion_tokens) of a vLLM usage object, or None when it is not one."""
    if not isinstance(usage, dict):
        return None
    prompt = usage.get("prompt_tokens")
    completion = usage.get("completion_tokens") or 0  # vLLM's UsageInfo allows null completion tokens
    if not (isinstance(prompt, int) and is_int(prompt) and is_int(completion)) or prompt < 0 or completion < 0:
        return None
    return prompt, int(completion)


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
        counts = usage_counts(chunk.get("usage"))
        if counts is None:
            return
        choices = chunk.get("choices")
        if choices == []:
            self.final = counts
        elif isinstance(choices, list) and len(choices) == 1 and isinstance(choices[0], dict):
            index = choices[0].get("index", 0)
            if is_int(index):
                # Choice i of a multi-prompt request belongs to prompt i // n, as vLLM numbers them.
                self._prompt_by_prompt[index // self._n] = counts[0]
                self._completion_by_choice[index] = counts[1]

    def totals(self) -> tuple[int, int]:
        if self.final is not None:
            return self.final
        return sum(self._prompt_by_prompt.values()), sum(self._completion_by_choice.values())


class NodeMetering(Protocol):
    """What a relay needs of its node: the metrics, and signing, recording and delivering receipts."""

    @property
    def metrics(self) -> AgentMetrics: ...

    def sign_receipt(self, ticket: DispatchTicket, prompt_tokens: int, completion_tokens: int) -> SignedReceipt: ...

    def record_receipt(self, signed: SignedReceipt, delivery: str) -> None: ...

    def spawn(self, work: Coroutine[Any, Any, None]) -> None: ...

    async def deliver_receipt(self, signed: SignedReceipt) -> None: ...


class StreamRelay:
    """Relays one vLLM SSE stream event by event and makes sure its usage is receipted once.

    The receipt goes in-stream before `[DONE]`. If the service hangs up first, :meth:`finish`
    closes the vLLM connection (vLLM aborts the request) and POSTs the receipt for what was made.
    """

    def __init__(self, agent: NodeMetering, ticket: DispatchTicket, upstream: aiohttp.ClientResponse, n: int) -> None:
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
        except HTTP_FAILURES as exc:
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
        self._agent.metrics.stream_ended("completed" if problem is None else UPSTREAM_DROPPED)
        if done:
            # Reading vLLM's stream to its end returns the connection to the keep-alive pool.
            with contextlib.suppress(*HTTP_FAILURES):
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
        self._agent.metrics.stream_ended("downstream_gone")
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
