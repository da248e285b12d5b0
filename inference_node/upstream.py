"""Whole (non-streamed) answers over pooled keep-alive HTTP/1.1 connections (:class:`WholeAnswerPool`).

A non-streamed call is one small POST and one answer read to its end. aiohttp's request machinery
(request and response objects, header multidicts, payload registry, timers per read) costs more CPU
than the caller's own work on such a call, so these go out as one pre-built write on an asyncio
protocol and come back through httptools' parser. The node agent sends its whole-answer calls to vLLM
this way, and the redemption service its non-streamed calls to plain-http nodes; streams, https,
health reads and everything else stay on aiohttp.

Cancelled while waiting (the service hung up, or cut the call), the call closes its connection, so the
server sees the disconnect and aborts the request, as with aiohttp. A failure says whether the answer had
begun (its status line and headers had arrived): before that, another server may be tried.
"""

from __future__ import annotations

import asyncio
import collections
from dataclasses import dataclass
from typing import cast

import httptools
from yarl import URL

_CONTENT_TYPE = b"content-type"


class UpstreamClosed(ConnectionError):
    """The server closed the connection before its answer was complete, or sent what is not HTTP."""

    def __init__(self, message: str, *, begun: bool = False) -> None:
        super().__init__(message)
        self.begun = begun  # the answer's status line and headers had arrived


class UpstreamSilent(TimeoutError):
    """The server sent nothing for the read timeout."""

    def __init__(self, message: str, *, begun: bool = False) -> None:
        super().__init__(message)
        self.begun = begun


def answer_begun(exc: BaseException) -> bool:
    """Whether a failed post's answer had begun (headers received): False for a refused or dead connection."""
    return bool(getattr(exc, "begun", False))


@dataclass(frozen=True, slots=True)
class UpstreamReply:
    """A whole (non-streamed) answer."""

    status: int
    media_type: str | None
    body: bytes
    header: str | None = None  # the value of the pool's `keep_header`, when it asked for one


class _Connection(asyncio.Protocol):
    """One keep-alive connection carrying one request at a time."""

    def __init__(self, loop: asyncio.AbstractEventLoop, keep_header: bytes | None = None) -> None:
        self._loop = loop
        self._keep_header = keep_header
        self._parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.idle_since = 0.0
        self._waiter: asyncio.Future[UpstreamReply] | None = None
        self._media_type: str | None = None
        self._kept: str | None = None
        self._begun = False
        self._body: list[bytes] = []
        self._last_read = 0.0
        self._read_timeout: float | None = None
        self._timer: asyncio.TimerHandle | None = None

    # -- asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's TCPTransport is no asyncio.Transport subclass

    def data_received(self, data: bytes) -> None:
        self._last_read = self._loop.time()
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self.fail(UpstreamClosed(f"the answer is not HTTP/1.1: {exc}", begun=self._begun))

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.fail(UpstreamClosed(f"the server closed the connection: {exc or 'end of stream'}", begun=self._begun))

    # -- httptools callbacks

    def on_header(self, name: bytes, value: bytes) -> None:
        lowered = name.lower()
        if self._media_type is None and lowered == _CONTENT_TYPE:
            self._media_type = value.decode("latin-1")
        elif self._kept is None and lowered == self._keep_header:
            self._kept = value.decode("latin-1")

    def on_headers_complete(self) -> None:
        self._begun = True

    def on_body(self, body: bytes) -> None:
        self._body.append(body)

    def on_message_complete(self) -> None:
        waiter = self._waiter
        if waiter is None or waiter.done():
            self.close()  # an answer nobody asked for: the connection is out of step
            return
        body = self._body[0] if len(self._body) == 1 else b"".join(self._body)
        if not self._parser.should_keep_alive():
            self.close()
        waiter.set_result(UpstreamReply(self._parser.get_status_code(), self._media_type, body, self._kept))

    # -- the pool's side

    def request(self, data: bytes, read_timeout: float | None) -> asyncio.Future[UpstreamReply]:
        """Send one whole request; its answer resolves the future (UpstreamSilent when the server falls silent)."""
        assert self.transport is not None
        self._waiter = self._loop.create_future()
        self._media_type = None
        self._kept = None
        self._begun = False
        self._body = []
        self._last_read = self._loop.time()
        self._read_timeout = read_timeout
        if read_timeout is not None:
            self._timer = self._loop.call_later(read_timeout, self._check_read)
        self.transport.write(data)
        return self._waiter

    def _check_read(self) -> None:
        # aiohttp's sock_read: a timeout between reads, not for the whole answer.
        assert self._read_timeout is not None
        waited = self._loop.time() - self._last_read
        if waited >= self._read_timeout:
            self.fail(UpstreamSilent(f"the server sent nothing for {self._read_timeout:g} s", begun=self._begun))
        else:
            self._timer = self._loop.call_later(self._read_timeout - waited, self._check_read)

    def done(self) -> None:
        """The request is over (answered, failed or cancelled): no more read timeouts for it."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def fail(self, exc: Exception) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc)
        self.close()

    def close(self) -> None:
        self.closed = True
        self.done()
        if self.transport is not None:
            self.transport.close()


class WholeAnswerPool:
    """POSTs to one plain-HTTP server, at most `limit` at a time, over connections kept `keepalive` seconds."""

    def __init__(self, base: URL, *, limit: int, pool_timeout: float | None, connect_timeout: float,
                 read_timeout: float | None, keepalive: float, headers: dict[str, str],
                 keep_header: str | None = None) -> None:  # fmt: skip
        """`pool_timeout` bounds the wait for a free slot, `read_timeout` the wait between reads (None: forever);
        each reply carries the value of the answer's `keep_header`, when one is named."""
        if base.scheme != "http" or base.raw_host is None or base.user is not None:
            raise ValueError(f"WholeAnswerPool takes a plain http:// URL without credentials, not {base}")
        self._host, self._port = base.raw_host, base.port or 80
        self._limit = asyncio.Semaphore(limit)
        self._pool_timeout, self._connect_timeout, self._read_timeout = pool_timeout, connect_timeout, read_timeout
        self._keepalive = keepalive
        fixed = {"Host": base.host_port_subcomponent or self._host, "Accept-Encoding": "identity", **headers}
        if any(set("\r\n:") & set(name) or set("\r\n") & set(value) for name, value in fixed.items()):
            raise ValueError("a header name or value holds a line break")  # it would split the request
        self._head = "".join(f"{name}: {value}\r\n" for name, value in fixed.items()).encode("latin-1")
        self._idle: collections.deque[_Connection] = collections.deque()
        self._keep_header = None if keep_header is None else keep_header.lower().encode("latin-1")

    async def post(self, target: bytes, payload: bytes, extra_headers: bytes = b"") -> UpstreamReply:
        """The whole answer to POST `target`; TimeoutError past a timeout, ConnectionError (or OSError) else
        (`answer_begun` says whether its headers had arrived).

        `extra_headers` are whole `Name: value\\r\\n` lines.
        """
        limit = self._limit
        if limit.locked():
            async with asyncio.timeout(self._pool_timeout):
                await limit.acquire()
        else:
            await limit.acquire()  # free: returns at once, without suspending
        try:
            connection = await self._connection()
            data = b"".join((b"POST ", target, b" HTTP/1.1\r\n", self._head, extra_headers,
                             b"Content-Length: %d\r\n\r\n" % len(payload), payload))  # fmt: skip
            try:
                reply = await connection.request(data, self._read_timeout)
            except BaseException:
                connection.close()  # cancelled (hung up, cut) or failed: the server sees the disconnect and aborts
                raise
            finally:
                connection.done()
            if not connection.closed:
                connection.idle_since = asyncio.get_running_loop().time()
                self._idle.append(connection)
            return reply
        finally:
            limit.release()

    async def _connection(self) -> _Connection:
        idle = self._idle
        now = asyncio.get_running_loop().time()
        while idle and (idle[0].closed or now - idle[0].idle_since >= self._keepalive):
            idle.popleft().close()  # the longest idle: closed by the server, or about to be
        while idle:
            connection = idle.pop()  # the most recently used: the likeliest to be still open
            if not connection.closed and now - connection.idle_since < self._keepalive:
                return connection
            connection.close()
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(self._connect_timeout):
            _, protocol = await loop.create_connection(lambda: _Connection(loop, self._keep_header), self._host,
                                                       self._port)
        return protocol

    def close(self) -> None:
        while self._idle:
            self._idle.pop().close()
