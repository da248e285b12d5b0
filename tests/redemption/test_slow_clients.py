"""Slow and numerous clients against the real service app on its guarded protocol (loopback only, bounded).

The service runs in-process on the deployment's database and chain with short limits (headers within
1 s, body within 2 s, 20 connections): half-open requests are answered 408 `request_timeout` and closed
within the configured time, the connection past the limit is answered 503 `too_many_connections`, and
the service keeps answering everyone else. Its /metrics are on an operator-only listener here
(SLUICE_METRICS_PORT), not on the API.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import httpx
import pytest
import uvicorn

from ledger.polling import poll_until
from ledger.stack.probes import free_port
from redemption.app import create_app
from redemption.config import ServiceSettings
from redemption.server import guarded_protocol
from tests.support.stack import Deployed

HEADER_TIMEOUT, BODY_TIMEOUT, MAX_CONNECTIONS = 1.0, 2.0, 20
METRICS_PORT = free_port()
SLACK = 1.5  # scheduling on a shared 2-core machine


@pytest.fixture(scope="module")
def guarded(deployed: Deployed) -> Iterator[tuple[str, int]]:
    port = free_port()
    settings = ServiceSettings(home=deployed.settings.home, rpc_url=deployed.settings.effective_rpc_url,
                               database_url=deployed.db_url, api_port=port, run_mirror=False, run_indexer=False,
                               header_timeout_seconds=HEADER_TIMEOUT, body_timeout_seconds=BODY_TIMEOUT,
                               max_connections=MAX_CONNECTIONS, metrics_port=METRICS_PORT)
    server = uvicorn.Server(uvicorn.Config(create_app(settings), host="127.0.0.1", port=port, log_level="warning",
                                           http=guarded_protocol(settings)))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    poll_until(lambda: server.started or not thread.is_alive(), 30, "the guarded service starting")
    assert server.started
    yield "127.0.0.1", port
    server.should_exit = True
    thread.join(10)


def connect(address: tuple[str, int], first: bytes = b"") -> socket.socket:
    sock = socket.create_connection(address, timeout=10)
    if first:
        sock.sendall(first)
    return sock


def read_until_closed(sock: socket.socket, limit: float) -> tuple[bytes, float]:
    """What the server sent before closing, and how long that took; fails past `limit` seconds."""
    started, data = time.monotonic(), b""
    sock.settimeout(limit)
    try:
        while chunk := sock.recv(4096):
            data += chunk
    except TimeoutError:
        pytest.fail(f"the connection was still open after {limit} s")
    finally:
        sock.close()
    return data, time.monotonic() - started


def test_half_open_requests_are_closed_within_the_header_timeout(guarded: tuple[str, int]) -> None:
    sockets = [connect(guarded, b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nSluice-Payer: 0x")
               for _ in range(10)]
    sockets += [connect(guarded) for _ in range(5)]  # and some that never send a byte
    started = time.monotonic()
    answers = [read_until_closed(s, HEADER_TIMEOUT + SLACK + 5) for s in sockets]
    assert time.monotonic() - started <= HEADER_TIMEOUT + SLACK
    for data, _took in answers:
        assert data.startswith(b"HTTP/1.1 408 ") and b'"code":"request_timeout"' in data


def test_a_body_that_never_arrives_gets_408_within_the_body_timeout(guarded: tuple[str, int]) -> None:
    sock = connect(guarded, b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\ncontent-type: application/json\r\n"
                            b"content-length: 1000\r\n\r\n{\"model\":")
    data, took = read_until_closed(sock, BODY_TIMEOUT + SLACK + 5)
    assert took <= BODY_TIMEOUT + SLACK
    assert data.startswith(b"HTTP/1.1 408 ") and b"request_timeout" in data


def test_connections_past_the_limit_get_503_and_the_rest_are_served(guarded: tuple[str, int]) -> None:
    held = [connect(guarded) for _ in range(MAX_CONNECTIONS)]
    try:
        extra = connect(guarded)
        data, took = read_until_closed(extra, 5)
        assert data.startswith(b"HTTP/1.1 503 ") and b"too_many_connections" in data and took < 1.0
    finally:
        for sock in held:
            sock.close()
    host, port = guarded
    poll_until(lambda: httpx.get(f"http://{host}:{port}/health", timeout=5).status_code == 200, 10,
               "the service answering once the crowd left")


def test_a_slow_but_steady_client_within_the_limits_is_served(guarded: tuple[str, int]) -> None:
    sock = connect(guarded)
    for piece in (b"GET /health HTTP/1.1\r\n", b"Host: x\r\n", b"\r\n"):
        time.sleep(HEADER_TIMEOUT / 4)
        sock.sendall(piece)
    sock.settimeout(10)
    assert sock.recv(4096).startswith(b"HTTP/1.1 200 ")
    sock.close()


def test_metrics_move_to_the_operator_only_listener(guarded: tuple[str, int]) -> None:
    host, port = guarded
    public = httpx.get(f"http://{host}:{port}/metrics", timeout=5)
    assert public.status_code == 404 and public.json()["error"]["code"] == "not_found"
    operator = httpx.get(f"http://127.0.0.1:{METRICS_PORT}/metrics", timeout=5)
    assert operator.status_code == 200 and "sluice_unreceipted_calls" in operator.text
