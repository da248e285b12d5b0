"""Health checks of the stack's endpoints, and free ports for throwaway stacks.

Each check answers quickly (a couple of seconds at most) and never raises for an
endpoint that is merely down: the supervisor polls them until a deadline. A URL that
cannot work at all (malformed, unknown scheme) is a StackError with a hint.
"""

from __future__ import annotations

import http.client
import json
import secrets
import socket
import urllib.request
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from ledger.stack.errors import StackError


def rpc_call(url: str, method: str, params: list[Any] | None = None, timeout: float = 2.0) -> Any:
    """One JSON-RPC call; raises OSError when the endpoint does not answer, ValueError when it is no JSON-RPC."""
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": method, "params": params or []}).encode()
    request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
    host = urlsplit(url).hostname
    # A proxy from the environment must never see (or break) traffic to our own loopback chain.
    handlers = [urllib.request.ProxyHandler({})] if host in ("127.0.0.1", "localhost", "::1") else []
    try:
        with urllib.request.build_opener(*handlers).open(request, timeout=timeout) as response:
            reply = json.load(response)
    except http.client.HTTPException as exc:  # something that is not an HTTP server holds the port
        raise ValueError(f"{url} does not speak HTTP: {exc!r}") from exc
    if not isinstance(reply, dict) or "result" not in reply:
        raise ValueError(f"{method} failed: {reply.get('error') if isinstance(reply, dict) else reply!r}")
    return reply["result"]


def chain_id_at(url: str) -> int | None:
    """The chain id the endpoint reports, or None when it does not answer."""
    try:
        return int(rpc_call(url, "eth_chainId"), 16)
    except (OSError, ValueError):
        return None


def database_answers(url: str) -> bool:
    """True when PostgreSQL at `url` accepts a connection and a query; StackError when the URL is malformed."""
    import psycopg

    try:
        with psycopg.connect(url, connect_timeout=2, autocommit=True) as conn:
            conn.execute("SELECT 1")
        return True
    except psycopg.OperationalError:
        return False
    except psycopg.ProgrammingError as exc:
        raise StackError(f"{redact(url)} is not a usable PostgreSQL URL: {exc}", hint="fix DATABASE_URL") from exc


def broker_answers(url: str) -> bool:
    """True when Celery's transport (kombu) can open a connection to `url`: Redis, RabbitMQ, ..."""
    from kombu.connection import Connection
    from kombu.exceptions import OperationalError

    try:
        with Connection(url, connect_timeout=2) as conn:  # type: ignore[no-untyped-call]  # kombu is untyped
            conn.ensure_connection(max_retries=1, interval_start=0, interval_step=0, timeout=2)
        return True
    except (OperationalError, OSError):
        return False
    except KeyError as exc:  # kombu's answer to an unknown URL scheme
        raise StackError(
            f"{redact(url)} is not a Celery broker URL (unknown transport {exc})",
            hint="use redis://, redis+socket:// or amqp:// in BROKER_URL",
        ) from exc


def http_ok(url: str, path: str = "/health", timeout: float = 1.0) -> bool:
    """True when GET url+path answers 200."""
    host_port = url.split("://", 1)[1].rstrip("/")
    host, _, port = host_port.partition(":")
    conn = http.client.HTTPConnection(host, int(port or 80), timeout=timeout)
    try:
        conn.request("GET", path)
        return conn.getresponse().status == 200
    except OSError:
        return False
    finally:
        conn.close()


def redact(url: str) -> str:
    """`url` with any password replaced by ***, for messages and status output."""
    parts = urlsplit(url)
    if not parts.password:
        return url
    return parts._replace(netloc=parts.netloc.replace(f":{parts.password}@", ":***@", 1)).geturl()


_LOWEST_PICKED_PORT = 10_000


def _ephemeral_floor() -> int:
    """The lowest port the kernel hands out to outgoing connections (Linux's default: 32768)."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32_768


def _bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now (for throwaway stacks and tests).

    Picked at random below the kernel's ephemeral range: a port the kernel chose (bind to 0) can be given
    to any outgoing connection between this probe and the server's own bind, and then the server fails.
    """
    floor = _ephemeral_floor()
    if floor - 1 > _LOWEST_PICKED_PORT:
        for _ in range(100):
            port = secrets.randbelow(floor - _LOWEST_PICKED_PORT) + _LOWEST_PICKED_PORT
            if _bindable(port):
                return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        chosen: int = probe.getsockname()[1]
        return chosen


def free_port_run(count: int) -> int:
    """The first of `count` consecutive TCP ports on 127.0.0.1 that nothing listens on right now."""
    for _ in range(50):
        base = free_port()
        if base + count >= 65535:
            continue
        if all(_bindable(port) for port in range(base, base + count)):
            return base
    raise StackError(f"found no {count} consecutive free ports on 127.0.0.1")
