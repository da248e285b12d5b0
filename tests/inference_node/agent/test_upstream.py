"""The whole-answer pool to vLLM: keep-alive reuse, framing, timeouts, and hang-ups that close the connection."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest
from yarl import URL

from inference_node.agent.bounds import CHAT
from inference_node.agent.config import AgentConfig
from inference_node.agent.serving import NodeAgent
from inference_node.upstream import UpstreamClosed, UpstreamReply, UpstreamSilent, WholeAnswerPool, answer_begun
from ledger.stack.probes import free_port
from tests.inference_node.agent.support import CHAIN_ID, DISPATCHER, SETTLEMENT

Answer = Callable[[bytes], Awaitable[bytes | None]]  # a request's bytes -> the raw answer (None: say nothing)


class RawServer:
    """A TCP server answering each request with raw bytes; it records requests, connections and hang-ups."""

    def __init__(self, answer: Answer) -> None:
        self.answer = answer
        self.requests: list[bytes] = []
        self.connections = 0
        self.hung_up = asyncio.Event()
        self.port = 0

    async def start(self) -> asyncio.Server:
        server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = server.sockets[0].getsockname()[1]
        return server

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                              if line.lower().startswith(b"content-length:"))  # fmt: skip
                request = head + await reader.readexactly(length)
                self.requests.append(request)
                answer = await self.answer(request)
                if answer is None:
                    await reader.read()  # until the client closes
                    self.hung_up.set()
                    return
                writer.write(answer)
                await writer.drain()
        except asyncio.IncompleteReadError:
            pass
        finally:
            writer.close()


def _pool(port: int, **overrides: float) -> WholeAnswerPool:
    settings: dict[str, float] = {"pool_timeout": 5.0, "connect_timeout": 5.0, "read_timeout": 5.0, "keepalive": 4.0}
    settings.update(overrides)
    return WholeAnswerPool(URL(f"http://127.0.0.1:{port}"), limit=4, headers={"Content-Type": "application/json"},
                           **settings)  # type: ignore[arg-type]


def _run(answer: Answer, work: Callable[[WholeAnswerPool, RawServer], Awaitable[None]], **overrides: float) -> None:
    async def main() -> None:
        raw = RawServer(answer)
        server = await raw.start()
        pool = _pool(raw.port, **overrides)
        try:
            await work(pool, raw)
        finally:
            pool.close()
            server.close()

    asyncio.run(main())


async def _json_answer(request: bytes) -> bytes:
    return b'HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 7\r\n\r\n{"a":1}'


def test_answers_come_whole_over_one_kept_alive_connection() -> None:
    async def work(pool: WholeAnswerPool, raw: RawServer) -> None:
        for _ in range(3):
            reply = await pool.post(b"/v1/chat/completions", b'{"x":1}', b"X-Request-Id: ab\r\n")
            assert reply == UpstreamReply(200, "application/json", b'{"a":1}')
        assert raw.connections == 1
        head, _, body = raw.requests[0].partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        assert lines[0] == b"POST /v1/chat/completions HTTP/1.1"
        assert set(lines[1:]) == {f"Host: 127.0.0.1:{raw.port}".encode(), b"Accept-Encoding: identity",
                                  b"Content-Type: application/json", b"X-Request-Id: ab", b"Content-Length: 7"}
        assert body == b'{"x":1}'

    _run(_json_answer, work)


def test_a_chunked_answer_is_joined_and_connection_close_is_honoured() -> None:
    async def chunked(request: bytes) -> bytes:
        return (b"HTTP/1.1 400 Bad Request\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n"
                b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n")

    async def work(pool: WholeAnswerPool, raw: RawServer) -> None:
        assert await pool.post(b"/v1/completions", b"{}") == UpstreamReply(400, None, b"abcde")
        assert await pool.post(b"/v1/completions", b"{}") == UpstreamReply(400, None, b"abcde")
        assert raw.connections == 2

    _run(chunked, work)


def test_a_connection_idle_past_the_keepalive_is_not_reused() -> None:
    async def work(pool: WholeAnswerPool, raw: RawServer) -> None:
        await pool.post(b"/v1/completions", b"{}")
        await asyncio.sleep(0.15)
        await pool.post(b"/v1/completions", b"{}")
        assert raw.connections == 2

    _run(_json_answer, work, keepalive=0.1)


def test_vllm_falling_silent_is_a_timeout_and_the_connection_is_dropped() -> None:
    async def silent(request: bytes) -> None:
        return None

    async def work(pool: WholeAnswerPool, raw: RawServer) -> None:
        with pytest.raises(TimeoutError):
            await pool.post(b"/v1/completions", b"{}")
        await asyncio.wait_for(raw.hung_up.wait(), 2)

    _run(silent, work, read_timeout=0.1)


def test_a_cancelled_call_closes_its_connection_so_vllm_sees_the_hang_up() -> None:
    async def silent(request: bytes) -> None:
        return None

    async def work(pool: WholeAnswerPool, raw: RawServer) -> None:
        call = asyncio.create_task(pool.post(b"/v1/completions", b"{}"))
        while not raw.requests:
            await asyncio.sleep(0.005)
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
        await asyncio.wait_for(raw.hung_up.wait(), 2)

    _run(silent, work)


def test_vllm_closing_mid_answer_is_a_connection_error() -> None:
    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n{partial")  # then it closes
        await writer.drain()
        writer.close()

    async def main() -> None:
        server = await asyncio.start_server(serve, "127.0.0.1", 0)
        pool = _pool(server.sockets[0].getsockname()[1])
        try:
            with pytest.raises(UpstreamClosed):
                await pool.post(b"/v1/completions", b"{}")
        finally:
            pool.close()
            server.close()

    asyncio.run(main())


def test_nothing_listening_is_a_connection_error() -> None:
    async def main() -> None:
        pool = _pool(free_port())
        with pytest.raises(ConnectionError) as raised:
            await pool.post(b"/v1/completions", b"{}")
        assert answer_begun(raised.value) is False  # the service may try another node

    asyncio.run(main())


@pytest.mark.parametrize(("url", "headers"), [
    ("https://127.0.0.1:8000", {}), ("http://user:pw@127.0.0.1:8000", {}),
    ("http://127.0.0.1:8000", {"Authorization": "Bearer x\r\nX-Injected: 1"}),
])  # fmt: skip
def test_only_plain_http_and_single_line_headers_are_taken(url: str, headers: dict[str, str]) -> None:
    with pytest.raises(ValueError):
        WholeAnswerPool(URL(url), limit=1, pool_timeout=1, connect_timeout=1, read_timeout=1, keepalive=1,
                        headers=headers)  # fmt: skip


def test_the_agent_sends_vllms_api_key_and_the_job_id_on_whole_answers() -> None:
    async def work(pool: WholeAnswerPool, raw: RawServer) -> None:
        config = AgentConfig.model_validate({
            "vllm_url": f"http://127.0.0.1:{raw.port}", "node_key": "0x" + "a1" * 32, "vllm_api_key": "sk-vllm",
            "chain_id": CHAIN_ID, "settlement": SETTLEMENT, "dispatch_signer": DISPATCHER.address,
        })  # fmt: skip
        agent = NodeAgent(config)
        await agent.start()
        try:
            reply = await agent._post_vllm(CHAT.path, b"{}", "ab12")
        finally:
            await agent.stop()
        assert reply == UpstreamReply(200, "application/json", b'{"a":1}')
        head = raw.requests[0].split(b"\r\n\r\n")[0].split(b"\r\n")
        assert b"Authorization: Bearer sk-vllm" in head and b"X-Request-Id: ab12" in head

    _run(_json_answer, work)


# -- what the redemption service relies on: the receipt header, and whether a failed answer had begun ----------


async def _serve_once(reply: bytes, *, then_silent: bool) -> tuple[asyncio.Server, int]:
    """A server that reads one request, writes `reply`, then stays silent (holding the connection) or closes."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(reply)
        await writer.drain()
        if then_silent:
            await reader.read()
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


def test_the_kept_header_comes_with_the_reply() -> None:
    answer = (b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nSluice-Receipt: {\"job_id\":\"0x01\"}\r\n"
              b"content-length: 2\r\n\r\n{}")

    async def main() -> None:
        for keep, expected in (("Sluice-Receipt", '{"job_id":"0x01"}'), (None, None)):
            server, port = await _serve_once(answer, then_silent=True)
            pool = WholeAnswerPool(URL(f"http://127.0.0.1:{port}"), limit=1, pool_timeout=1.0, connect_timeout=1.0,
                                   read_timeout=1.0, keepalive=4.0, headers={}, keep_header=keep)
            try:
                assert await pool.post(b"/", b"{}") == UpstreamReply(200, "application/json", b"{}", expected)
            finally:
                pool.close()
                server.close()

    asyncio.run(main())


@pytest.mark.parametrize(("reply", "then_silent", "error", "begun"), [
    (b"", False, UpstreamClosed, False),  # closed before answering: another node may be tried
    (b"", True, UpstreamSilent, False),  # silent before answering: the same
    (b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nabc", False, UpstreamClosed, True),  # closed mid-body
    (b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nabc", True, UpstreamSilent, True),  # silent mid-body
])
def test_a_failed_answer_says_whether_it_had_begun(reply: bytes, then_silent: bool, error: type[Exception],
                                                   begun: bool) -> None:
    async def main() -> None:
        server, port = await _serve_once(reply, then_silent=then_silent)
        pool = WholeAnswerPool(URL(f"http://127.0.0.1:{port}"), limit=1, pool_timeout=1.0, connect_timeout=1.0,
                               read_timeout=0.3, keepalive=4.0, headers={})
        try:
            with pytest.raises(error) as raised:
                await pool.post(b"/", b"{}")
            assert answer_begun(raised.value) is begun
            assert isinstance(raised.value, ConnectionError if error is UpstreamClosed else TimeoutError)
        finally:
            pool.close()
            server.close()

    asyncio.run(main())

