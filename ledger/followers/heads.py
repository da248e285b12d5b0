"""When the chain has a new block: a `newHeads` subscription over the node's websocket when it serves
one (Anvil serves websockets on its HTTP port), else `eth_blockNumber` every `poll_seconds`.

Followers wait on `Heads.wait` instead of re-reading the chain on a timer, so an idle chain costs
nothing but the subscription (or one cheap poll per `poll_seconds`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from typing import Any

from websockets.exceptions import WebSocketException
from websockets.sync.client import ClientConnection
from websockets.sync.client import connect as ws_connect

from ledger.chain.rpc import JsonRpc

log = logging.getLogger(__name__)

# After a websocket failure the poll takes over; the subscription is tried again this much later.
_WS_RETRY_SECONDS = 30.0


def websocket_url(rpc_url: str) -> str | None:
    """The websocket URL a node serves beside `rpc_url` (Anvil: the same host and port)."""
    if rpc_url.startswith("http://"):
        return "ws://" + rpc_url.removeprefix("http://")
    if rpc_url.startswith("https://"):
        return "wss://" + rpc_url.removeprefix("https://")
    if rpc_url.startswith(("ws://", "wss://")):
        return rpc_url
    return None


class Heads:
    """The chain's head as it moves: `wait` returns once it is past the head last seen."""

    def __init__(self, rpc_url: str, ws_url: str | None = None, *, poll_seconds: float = 0.25,
                 timeout: float = 10.0) -> None:
        self.rpc = JsonRpc(rpc_url, timeout=timeout)
        self.ws_url = ws_url
        self.poll_seconds = poll_seconds
        self.timeout = timeout
        self.head: int | None = None
        self._ws: ClientConnection | None = None
        self._ws_retry_at = 0.0

    @property
    def subscribed(self) -> bool:
        return self._ws is not None

    def start(self) -> None:
        """Subscribe now (when a websocket is known), before the caller's first sync, so no block is missed."""
        if self._ws is None and self.ws_url is not None:
            self._subscribe()

    def wait(self, timeout: float) -> int | None:
        """The new head once the chain is past `self.head` (at once when it already is); None after `timeout`."""
        deadline = time.monotonic() + timeout
        if self._ws is None and self.ws_url is not None and time.monotonic() >= self._ws_retry_at:
            self._subscribe()
        if self._ws is not None:
            try:
                return self._wait_ws(deadline)
            except (OSError, WebSocketException, ValueError) as exc:
                log.warning("newHeads subscription at %s lost (%s); polling eth_blockNumber every %.2f s",
                            self.ws_url, exc, self.poll_seconds)
                self.close()
                self._ws_retry_at = time.monotonic() + _WS_RETRY_SECONDS
        return self._wait_poll(deadline)

    def _wait_poll(self, deadline: float) -> int | None:
        while True:
            number = int(self.rpc.call("eth_blockNumber", []), 16)
            if self.head is None or number > self.head:
                self.head = number
                return number
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            time.sleep(min(self.poll_seconds, left))

    def _wait_ws(self, deadline: float) -> int | None:
        ws = self._ws
        assert ws is not None
        newest: int | None = None
        while True:
            # Once a head arrived, only what is already queued is drained: a burst of blocks is one wake-up.
            left = 0.0 if newest is not None else deadline - time.monotonic()
            try:
                message = ws.recv(timeout=max(0.0, left))
            except TimeoutError:
                break
            number = _head_number(json.loads(message))
            if number is not None and (newest is None or number > newest):
                newest = number
        if newest is None or (self.head is not None and newest <= self.head):
            return None
        self.head = newest
        return newest

    def _subscribe(self) -> None:
        assert self.ws_url is not None
        try:
            ws = ws_connect(self.ws_url, open_timeout=self.timeout, close_timeout=1, max_size=2**20, legacy=True)
            ws.send(json.dumps({"jsonrpc": "2.0", "id": 1, "method": "eth_subscribe", "params": ["newHeads"]}))
            answer = json.loads(ws.recv(timeout=self.timeout))
            if "result" not in answer:
                ws.close()
                raise ValueError(f"eth_subscribe refused: {answer.get('error')}")
        except (OSError, TimeoutError, WebSocketException, ValueError) as exc:
            log.info("no newHeads subscription at %s (%s); polling eth_blockNumber every %.2f s",
                     self.ws_url, exc, self.poll_seconds)
            self._ws_retry_at = time.monotonic() + _WS_RETRY_SECONDS
            return
        self._ws = ws
        # Blocks mined before the subscription are not announced: the caller's first sync covers them.
        self.head = int(self.rpc.call("eth_blockNumber", []), 16) if self.head is None else self.head

    def close(self) -> None:
        if self._ws is not None:
            with contextlib.suppress(OSError, WebSocketException):
                self._ws.close()
            self._ws = None


def _head_number(message: dict[str, Any]) -> int | None:
    if message.get("method") != "eth_subscription":
        return None
    result = message.get("params", {}).get("result") or {}
    number = result.get("number")
    return int(number, 16) if isinstance(number, str) else None
