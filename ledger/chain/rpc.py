"""Raw JSON-RPC for the processes that follow the chain: the chain mirror, the event indexer and the verifier.

Web3's contract layer costs more per call than the node's answer when thousands of keys
or logs are read, so these readers speak JSON-RPC directly:

- `call`, `batch` and `result` go through a `Web3` provider (one request, or many per HTTP
  round trip with per-item errors left in place);
- `JsonRpc` is a bare HTTP client for bulk reads (`eth_getLogs` answers of tens of MB),
  decoded with orjson;
- `LogSpan` is the adaptive `eth_getLogs` block range: halved when the node refuses a range,
  shrunk to the answer size the reader wants, grown again while answers are small and fast.

Contract view calls over these batches are `ledger.chain.views`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, cast

import orjson
import requests
from web3 import Web3
from web3.providers.base import JSONBaseProvider
from web3.types import RPCEndpoint, RPCResponse

from ledger.errors import ChainUnavailable, LedgerError


class RpcError(LedgerError):
    """The node answered a JSON-RPC request with an error object."""

    def __init__(self, method: str, error: Any) -> None:
        self.method = method
        self.code = error.get("code") if isinstance(error, dict) else None
        self.message = str(error.get("message", error)) if isinstance(error, dict) else str(error)
        self.data = error.get("data") if isinstance(error, dict) else None
        super().__init__(f"{method} failed: {self.message} (code {self.code})")


def call(w3: Web3, method: str, params: list[Any]) -> Any:
    """One request through `w3`'s provider; RpcError when the node answers with an error."""
    response = w3.provider.make_request(RPCEndpoint(method), params)
    if "error" in response and response["error"] is not None:
        raise RpcError(method, response["error"])
    return response.get("result")


def batch(w3: Web3, requests_: Sequence[tuple[str, list[Any]]], chunk: int) -> list[RPCResponse]:
    """Raw responses in request order, `chunk` requests per HTTP round trip; per-item errors left in place."""
    out: list[RPCResponse] = []
    for i in range(0, len(requests_), chunk):
        part = [(RPCEndpoint(m), p) for m, p in requests_[i : i + chunk]]
        answer = cast(JSONBaseProvider, w3.provider).make_batch_request(part)
        if not isinstance(answer, list):  # the node refused the whole batch
            raise RpcError("batch", answer.get("error"))
        if len(answer) != len(part):
            raise RpcError("batch", {"message": f"{len(answer)} answers to {len(part)} requests"})
        out.extend(answer)
    return out


def result(response: RPCResponse | dict[str, Any], method: str) -> Any:
    """The `result` of one response of a batch; RpcError for its error object."""
    if response.get("error") is not None:
        raise RpcError(method, response["error"])
    return response.get("result")


def block_hash(block: Any) -> bytes | None:
    """The hash of an `eth_getBlockByNumber` answer; None for a block the node does not have."""
    return None if block is None else bytes.fromhex(str(block["hash"]).removeprefix("0x"))


def too_large(exc: Exception) -> bool:
    """Whether a failed getLogs should be retried over a smaller range.

    Nodes word "range too large" differently (geth, Besu, Erigon, hosted RPCs), so any error
    answer or timeout counts; a range of one block that still fails is a real error.
    """
    return isinstance(exc, RpcError | requests.Timeout)


class JsonRpc:
    """A bare JSON-RPC client over one HTTP session: no middleware, orjson both ways.

    Safe to share between threads for independent requests (requests' session pool).
    """

    def __init__(self, url: str, *, timeout: float = 60.0) -> None:
        self.url = url
        self.timeout = timeout
        self._session = requests.Session()
        self._session.headers["Content-Type"] = "application/json"

    @classmethod
    def of(cls, w3: Web3, timeout: float = 60.0) -> JsonRpc:
        """A client for the endpoint `w3` talks to (an HTTP provider)."""
        url = getattr(w3.provider, "endpoint_uri", None)
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            raise ChainUnavailable(f"bulk chain reads need an HTTP JSON-RPC endpoint, not {w3.provider!r}")
        return cls(url, timeout=timeout)

    def _post(self, payload: Any) -> Any:
        try:
            response = self._session.post(self.url, data=orjson.dumps(payload), timeout=self.timeout)
        except requests.ConnectionError as exc:
            raise ChainUnavailable(f"the chain at {self.url} does not answer ({exc.__class__.__name__})") from exc
        if response.status_code >= 400 and not response.content.startswith((b"{", b"[")):
            raise RpcError("http", {"code": response.status_code, "message": response.text[:200]})
        return orjson.loads(response.content)

    def call(self, method: str, params: list[Any]) -> Any:
        answer = self._post({"jsonrpc": "2.0", "id": 0, "method": method, "params": params})
        if not isinstance(answer, dict):
            raise RpcError(method, {"message": "not a JSON-RPC answer"})
        return result(answer, method)

    def batch(self, requests_: Sequence[tuple[str, list[Any]]], chunk: int = 500) -> list[dict[str, Any]]:
        """Raw responses in request order, `chunk` per round trip; per-item errors left in place."""
        out: list[dict[str, Any]] = []
        for i in range(0, len(requests_), chunk):
            part = requests_[i : i + chunk]
            # Ids only need to be unique within one batch: threads sharing the client need no counter.
            payload = [{"jsonrpc": "2.0", "id": n, "method": m, "params": p} for n, (m, p) in enumerate(part)]
            answer = self._post(payload)
            if not isinstance(answer, list):  # the node refused the whole batch
                raise RpcError("batch", answer.get("error") if isinstance(answer, dict) else answer)
            if len(answer) != len(part):
                raise RpcError("batch", {"message": f"{len(answer)} answers to {len(part)} requests"})
            by_id = {a.get("id"): a for a in answer}
            out.extend(by_id.get(n, {"error": {"message": "no answer"}}) for n in range(len(part)))
        return out

    def close(self) -> None:
        self._session.close()


class LogSpan:
    """The block range of the next `eth_getLogs`, adapted to what the node answers.

    Shrinks at once when an answer carries more than `target_logs` logs (to the size that would
    have carried about that many) and halves when the node refuses a range; doubles, up to
    `max_span`, after each answer that was both small and fast.
    """

    FAST_SECONDS = 0.5

    def __init__(self, *, initial: int = 64, max_span: int = 10_000, target_logs: int = 10_000) -> None:
        if not 1 <= initial <= max_span or target_logs < 1:
            raise ValueError("need 1 <= initial <= max_span and target_logs >= 1")
        self.span = initial
        self.max_span = max_span
        self.target_logs = target_logs

    def end(self, start: int, limit: int) -> int:
        """The last block of the next range from `start`, at most `limit`."""
        return min(limit, start + self.span - 1)

    def refused(self, blocks: int) -> None:
        self.span = max(1, blocks // 2)

    def answered(self, blocks: int, logs: int, seconds: float) -> None:
        if logs > self.target_logs:
            self.span = max(1, min(self.span, blocks * self.target_logs // logs))
        elif blocks >= self.span and logs * 2 <= self.target_logs and seconds < self.FAST_SECONDS:
            self.span = min(self.max_span, self.span * 2)
