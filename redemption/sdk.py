"""The light client: sign Sluice calls with a private key, so the `openai` package (or plain httpx) works unchanged.

    pip install sluice                    # the client alone: httpx, coincurve, pycryptodome
    from openai import OpenAI
    from redemption.sdk import SluiceAuth
    auth = SluiceAuth(developer_key, payer=enterprise_address, max_cost=10**17)
    client = OpenAI(base_url="http://127.0.0.1:8000/v1", api_key="unused",
                    http_client=httpx.Client(auth=auth))

The same `SluiceAuth` works with `httpx.AsyncClient` (and so `AsyncOpenAI`): it first
fetches `/.well-known/sluice.json` once for the EIP-712 domain, then signs every request
body with a fresh 128-bit nonce and a short deadline. After each call `auth.last_cost` /
`auth.last_job_id` hold what the service charged (for a streamed call, once its final usage
chunk has been read); `auth.total_cost` adds them up.

Refusals carry the OpenAI error envelope with a stable `code`; `error_from_response` turns
one into a typed `SluiceError` (`InsufficientEscrow`, `NoBudget`, `NotAllowlisted`, …), and
`SluiceAuth(..., raise_errors=True)` raises it from the auth flow itself. `fetch_discovery`
reads the discovery document; `fetch_budget` makes the signed budget lookup, `fetch_calls` the recent calls
with their cost; `fetch_keys`, `set_key_policy` and
`delete_key_policy` read and change a payer's key policies (names, limits, expiry); `reader_auth(key)` signs any
account-data or audit read: `httpx.get(base + "/v1/usage", params={"payer": address}, auth=reader_auth(key))`.

This module imports only the protocol core (`ledger.protocol`), httpx and the standard
library: none of the server's dependencies (tests/redemption/test_light_client.py checks it).
"""

from __future__ import annotations

import json
import secrets
import threading
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Generator, Iterator
from dataclasses import dataclass
from typing import Any, ClassVar

import httpx

from ledger.protocol.address import to_checksum_address
from ledger.protocol.eip712 import Domains
from ledger.protocol.secp256k1 import address_of
from ledger.protocol.signed_call import signed_call_headers

DISCOVERY_PATH = "/.well-known/sluice.json"
BUDGET_PATH = "/v1/budget"
MaxCost = int | Callable[[httpx.Request], int]
Key = str | bytes | Any  # a 0x-hex or raw 32-byte private key, or anything with `.key` (eth-account's LocalAccount)


def private_key_bytes(key: Key) -> bytes:
    """The 32 raw bytes of a private key given as 0x-hex, raw bytes or an object with `.key`."""
    raw = getattr(key, "key", key)
    if isinstance(raw, str):
        raw = bytes.fromhex(raw[2:] if raw.startswith(("0x", "0X")) else raw)
    raw = bytes(raw)
    if len(raw) != 32:
        raise ValueError("a private key is 32 bytes (64 hex digits)")
    return raw


# -- typed errors -------------------------------------------------------------------------------------------


class SluiceError(httpx.HTTPStatusError):
    """A refusal of the service, from its OpenAI envelope `{"error": {"message", "type", "param", "code"}}`."""

    code: ClassVar[str | None] = None

    def __init__(self, response: httpx.Response, message: str, *, code: str | None, type_: str | None,
                 param: str | None) -> None:
        super().__init__(f"{response.status_code} {code}: {message}", request=response.request, response=response)
        self.status_code = response.status_code
        self.message = message
        self.error_code = code
        self.error_type = type_
        self.param = param


class AuthenticationError(SluiceError):
    """401: the signature is missing, wrong, expired, too far ahead or replayed."""


class PaymentRequired(SluiceError):
    """402: not enough escrow or budget for this call's worst case."""


class InsufficientEscrow(PaymentRequired):
    code = "insufficient_escrow"


class InsufficientBudget(PaymentRequired):
    code = "insufficient_budget"


class MaxCostTooLow(PaymentRequired):
    code = "max_cost_too_low"


class PermissionDenied(SluiceError):
    """403: not allowlisted, paused, suspended, no budget from this payer, not an auditor or the account's holder,
    or (node-facing) a node that is retired, not registered or not at its endpoint."""


class NoBudget(PermissionDenied):
    code = "no_budget"


class NotAllowlisted(PermissionDenied):
    code = "not_allowlisted"


class Paused(PermissionDenied):
    code = "paused"


class Suspended(PermissionDenied):
    code = "suspended"


class NotAuditor(PermissionDenied):
    code = "not_auditor"


class NotOperator(PermissionDenied):
    """An operations read (`/v1/operations`) by a key with neither AUDITOR_ROLE nor the operator's admin role."""

    code = "not_operator"


class NotAccountHolder(PermissionDenied):
    """An account read (`/v1/budget`, `/v1/usage`, `/v1/calls`) signed by neither the account's payer nor its
    spender."""

    code = "not_account_holder"


class KeyExpired(PermissionDenied):
    """The payer's policy for the signing key has expired (`expires_at` passed)."""

    code = "key_expired"


class NodeRetired(PermissionDenied):
    """Node-facing routes: the node's key was retired in NodeRegistry."""

    code = "node_retired"


class NodeNotRegistered(PermissionDenied):
    """Node-facing routes: NodeRegistry does not list the node's key."""

    code = "node_not_registered"


class EndpointMismatch(PermissionDenied):
    """Node-facing routes: a node speaking for an endpoint other than the one it registered."""

    code = "endpoint_mismatch"


class RateLimited(SluiceError):
    """429: over a key's requests per window (the payer's key policy); `retry_after` is the Retry-After header in
    seconds, when given."""

    code = "rate_limited"

    @property
    def retry_after(self) -> float | None:
        value = self.response.headers.get("retry-after")
        try:
            return float(value) if value is not None else None
        except ValueError:
            return None


class TokenRateLimited(RateLimited):
    """429: this call's worst case (prompt bound + max_tokens) is over the key's model tokens left in the window."""

    code = "token_rate_limited"


class Unavailable(SluiceError):
    """5xx: no node can serve, the chain or database is down, settlement is behind; nothing was charged."""


ERRORS_BY_STATUS: dict[int, type[SluiceError]] = {
    401: AuthenticationError, 402: PaymentRequired, 403: PermissionDenied, 429: RateLimited,
}
ERRORS_BY_CODE: dict[str, type[SluiceError]] = {
    cls.code: cls for cls in (InsufficientEscrow, InsufficientBudget, MaxCostTooLow, NoBudget, NotAllowlisted,
                              Paused, Suspended, NotAuditor, NotOperator, NotAccountHolder, KeyExpired, NodeRetired,
                              NodeNotRegistered, EndpointMismatch, RateLimited, TokenRateLimited) if cls.code
}


def error_from_response(response: httpx.Response) -> SluiceError:
    """The typed error of a refused response (its body must have been read); unknown codes stay generic."""
    try:
        error = response.json()["error"]
        message, code = str(error["message"]), error.get("code")
        type_, param = error.get("type"), error.get("param")
    except (ValueError, KeyError, TypeError):
        message, code, type_, param = response.text[:200] or response.reason_phrase, None, None, None
    generic = ERRORS_BY_STATUS.get(response.status_code, Unavailable if response.status_code >= 500 else SluiceError)
    cls = ERRORS_BY_CODE.get(code or "", generic)
    if not issubclass(cls, generic):  # a known code under another status: trust the status
        cls = generic
    return cls(response, message, code=code, type_=type_, param=param)


def raise_for_error(response: httpx.Response) -> httpx.Response:
    """`response` when it succeeded, else its typed `SluiceError`."""
    if response.status_code >= 400:
        raise error_from_response(response)
    return response


# -- streamed cost ------------------------------------------------------------------------------------------


class _CostTap:
    """Reads the `"sluice": {"job_id", "cost"}` of a stream's final usage chunk as the bytes go by."""

    def __init__(self, auth: SluiceAuth) -> None:
        self.auth = auth
        self.tail = b""

    def feed(self, chunk: bytes) -> None:
        if b"\n" not in chunk:
            self.tail += chunk
            return
        lines = (self.tail + chunk).split(b"\n")
        self.tail = lines.pop()
        for line in lines:
            if line.startswith(b"data:") and b'"sluice"' in line:
                try:
                    charged = json.loads(line[5:])["sluice"]
                    self.auth.record(int(charged["cost"]), charged.get("job_id"))
                except (ValueError, KeyError, TypeError):
                    continue


class _TappedStream(httpx.SyncByteStream):
    def __init__(self, stream: httpx.SyncByteStream, tap: _CostTap) -> None:
        self.stream, self.tap = stream, tap

    def __iter__(self) -> Iterator[bytes]:
        for chunk in self.stream:
            self.tap.feed(chunk)
            yield chunk

    def close(self) -> None:
        self.stream.close()


class _AsyncTappedStream(httpx.AsyncByteStream):
    def __init__(self, stream: httpx.AsyncByteStream, tap: _CostTap) -> None:
        self.stream, self.tap = stream, tap

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in self.stream:
            self.tap.feed(chunk)
            yield chunk

    async def aclose(self) -> None:
        await self.stream.aclose()


def _is_event_stream(response: httpx.Response) -> bool:
    content_type: str = response.headers.get("content-type", "")
    encoding: str = response.headers.get("content-encoding", "identity")
    return content_type.startswith("text/event-stream") and encoding == "identity"


# -- the auth -----------------------------------------------------------------------------------------------


class SluiceAuth(httpx.Auth):
    """httpx authentication that signs each call as DESIGN.md's `Redemption` struct."""

    def __init__(self, key: Key, *, payer: str | None = None, max_cost: MaxCost = 10**18,
                 deadline_seconds: int = 120, domains: Domains | None = None, raise_errors: bool = False) -> None:
        self.private_key = private_key_bytes(key)
        self.address = address_of(self.private_key)
        self.payer = to_checksum_address(payer) if payer else self.address
        self.max_cost = max_cost
        self.deadline_seconds = deadline_seconds
        self.domains = domains
        self.raise_errors = raise_errors
        self.last_cost: int | None = None
        self.last_job_id: str | None = None
        self.total_cost = 0
        self._lock = threading.Lock()

    def record(self, cost: int, job_id: str | None) -> None:
        with self._lock:
            self.last_cost = cost
            self.last_job_id = job_id
            self.total_cost += cost

    def sign(self, request: httpx.Request, domains: Domains) -> None:
        max_cost = self.max_cost(request) if callable(self.max_cost) else self.max_cost
        request.headers.update(signed_call_headers(
            self.private_key, domains.redemption, request.content, payer=self.payer, max_cost=max_cost,
            nonce=secrets.randbits(128), deadline=int(time.time()) + self.deadline_seconds))

    def _discovery_request(self, request: httpx.Request) -> httpx.Request:
        return httpx.Request("GET", request.url.copy_with(path=DISCOVERY_PATH, query=None))

    def _learn(self, discovery: httpx.Response) -> None:
        if discovery.status_code != 200:
            raise httpx.HTTPStatusError(f"discovery at {discovery.request.url} answered {discovery.status_code}",
                                        request=discovery.request, response=discovery)
        self.domains = domains_of(discovery.json())

    def _answered(self, response: httpx.Response) -> bool:
        """Record the cost of a plain answer, tap a stream's; True when the body must be read to raise."""
        cost = response.headers.get("Sluice-Cost")
        if cost is not None:
            self.record(int(cost), response.headers.get("Sluice-Job-Id"))
        elif response.status_code == 200 and _is_event_stream(response):
            tap = _CostTap(self)
            if isinstance(response.stream, httpx.AsyncByteStream):
                response.stream = _AsyncTappedStream(response.stream, tap)
            elif isinstance(response.stream, httpx.SyncByteStream):
                response.stream = _TappedStream(response.stream, tap)
        return self.raise_errors and response.status_code >= 400

    def sync_auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        if self.domains is None:
            discovery = yield self._discovery_request(request)
            discovery.read()
            self._learn(discovery)
        assert self.domains is not None
        self.sign(request, self.domains)
        response = yield request
        if self._answered(response):
            response.read()
            raise error_from_response(response)

    async def async_auth_flow(self, request: httpx.Request) -> AsyncGenerator[httpx.Request, httpx.Response]:
        if self.domains is None:
            discovery = yield self._discovery_request(request)
            await discovery.aread()
            self._learn(discovery)
        assert self.domains is not None
        self.sign(request, self.domains)
        response = yield request
        if self._answered(response):
            await response.aread()
            raise error_from_response(response)


# -- discovery and budget -----------------------------------------------------------------------------------


def domains_of(discovery: dict[str, Any]) -> Domains:
    """The signing domains of a discovery document."""
    domain = discovery["eip712_domain"]
    return Domains(int(domain["chainId"]), domain["verifyingContract"])


def fetch_discovery(base_url: str, *, client: httpx.Client | None = None, timeout: float = 30) -> dict[str, Any]:
    """`GET /.well-known/sluice.json`: chain, contracts, token, EIP-712 domain and types, what wallets take."""
    url = base_url.rstrip("/") + DISCOVERY_PATH
    response = client.get(url) if client is not None else httpx.get(url, timeout=timeout)
    document: dict[str, Any] = raise_for_error(response).json()
    return document


async def async_fetch_discovery(base_url: str, client: httpx.AsyncClient) -> dict[str, Any]:
    """The `httpx.AsyncClient` twin of `fetch_discovery`."""
    response = await client.get(base_url.rstrip("/") + DISCOVERY_PATH)
    document: dict[str, Any] = raise_for_error(response).json()
    return document


@dataclass(frozen=True)
class Budget:
    """What a payer's escrow, and a spender's budget from it, can still cover (base units)."""

    payer: str
    spender: str
    escrow_available: int
    budget_available: int | None  # None when the spender is the payer
    # The payer's key policy for the spender (None: not set); the limits count per `rate_window_seconds`.
    label: str | None = None
    requests_per_minute: int | None = None
    tokens_per_minute: int | None = None
    expires_at: int | None = None
    rate_window_seconds: int = 60

    @classmethod
    def from_json(cls, body: dict[str, Any]) -> Budget:
        budget = body.get("budget_available")
        return cls(body["payer"], body["spender"], int(body["escrow_available"]),
                   None if budget is None else int(budget), body.get("label"), body.get("requests_per_minute"),
                   body.get("tokens_per_minute"), body.get("expires_at"), int(body.get("rate_window_seconds", 60)))


def reader_auth(key: Key, *, domains: Domains | None = None) -> SluiceAuth:
    """Signs account-data and audit reads (`/v1/usage`, `/v1/budget`, `/audit/...`): empty body, Sluice-Max-Cost 0,
    Sluice-Payer the key's own address."""
    return SluiceAuth(key, max_cost=0, domains=domains)


def _budget_request(key: Key, payer: str | None) -> tuple[SluiceAuth, dict[str, str]]:
    auth = reader_auth(key)  # a signed read names the reader itself as Sluice-Payer
    return auth, {"payer": to_checksum_address(payer) if payer else auth.address, "spender": auth.address}


def fetch_budget(base_url: str, key: Key, *, payer: str | None = None,
                 client: httpx.Client | None = None, timeout: float = 30) -> Budget:
    """The signed `GET /v1/budget` (empty body, maxCost 0) of `key`'s budget from `payer` (default: its own)."""
    auth, params = _budget_request(key, payer)
    url = base_url.rstrip("/") + BUDGET_PATH
    if client is None:
        with httpx.Client(timeout=timeout) as own:
            response = own.get(url, params=params, auth=auth)
    else:
        response = client.get(url, params=params, auth=auth)
    return Budget.from_json(raise_for_error(response).json())


async def async_fetch_budget(base_url: str, key: Key, client: httpx.AsyncClient, *,
                             payer: str | None = None) -> Budget:
    """The `httpx.AsyncClient` twin of `fetch_budget`."""
    auth, params = _budget_request(key, payer)
    response = await client.get(base_url.rstrip("/") + BUDGET_PATH, params=params, auth=auth)
    return Budget.from_json(raise_for_error(response).json())


CALLS_PATH = "/v1/calls"


def fetch_calls(base_url: str, key: Key, *, payer: str | None = None, spender: str | None = None, limit: int = 50,
                client: httpx.Client | None = None, timeout: float = 30) -> list[dict[str, Any]]:
    """The signed `GET /v1/calls`: recent calls with their cost, newest first. A developer key names the `payer`
    whose budget it spends (its own calls are read); a payer (the default) reads every key's calls, or one
    `spender`'s."""
    auth = reader_auth(key)
    params: dict[str, str | int] = {"payer": to_checksum_address(payer) if payer else auth.address, "limit": limit}
    if spender is None and payer is not None and to_checksum_address(payer) != auth.address:
        spender = auth.address
    if spender is not None:
        params["spender"] = to_checksum_address(spender)
    url = base_url.rstrip("/") + CALLS_PATH
    if client is None:
        with httpx.Client(timeout=timeout) as own:
            response = own.get(url, params=params, auth=auth)
    else:
        response = client.get(url, params=params, auth=auth)
    calls: list[dict[str, Any]] = raise_for_error(response).json()["calls"]
    return calls


# -- key policies (signed by the payer: the five headers over the body, Sluice-Max-Cost 0) -------------------

KEYS_PATH = "/v1/keys"
POLICY_FIELDS = ("label", "requests_per_minute", "tokens_per_minute", "expires_at")
_UNSET: Any = object()


def fetch_keys(base_url: str, key: Key, *, client: httpx.Client | None = None,
               timeout: float = 30) -> dict[str, Any]:
    """The signed `GET /v1/keys` of the payer `key`: `{"payer", "keys": [policy, ...]}` (docs/interfaces.md)."""
    return _keys_call(base_url, "GET", KEYS_PATH, key, None, client, timeout)


def set_key_policy(base_url: str, key: Key, spender: str, *, label: str | None = _UNSET,
                   requests_per_minute: int | None = _UNSET, tokens_per_minute: int | None = _UNSET,
                   expires_at: int | None = _UNSET, client: httpx.Client | None = None,
                   timeout: float = 30) -> dict[str, Any]:
    """`PUT /v1/keys/{spender}` signed by the payer `key` (the body names `spender`): fields not given stay as they
    are, None clears them."""
    given = {"label": label, "requests_per_minute": requests_per_minute, "tokens_per_minute": tokens_per_minute,
             "expires_at": expires_at}
    spender = to_checksum_address(spender)
    body = {"spender": spender, **{name: value for name, value in given.items() if value is not _UNSET}}
    return _keys_call(base_url, "PUT", f"{KEYS_PATH}/{spender}", key, body, client, timeout)


def delete_key_policy(base_url: str, key: Key, spender: str, *, client: httpx.Client | None = None,
                      timeout: float = 30) -> bool:
    """`DELETE /v1/keys/{spender}` signed by the payer `key` over the body `{"spender": spender}` (the signature
    covers the body, not the path); False when the key had no policy."""
    spender = to_checksum_address(spender)
    answer = _keys_call(base_url, "DELETE", f"{KEYS_PATH}/{spender}", key, {"spender": spender}, client, timeout)
    return bool(answer["deleted"])


def _keys_call(base_url: str, method: str, path: str, key: Key, body: dict[str, Any] | None,
               client: httpx.Client | None, timeout: float) -> dict[str, Any]:
    content = b"" if body is None else json.dumps(body, separators=(",", ":")).encode()
    headers = {} if body is None else {"content-type": "application/json"}
    url, auth = base_url.rstrip("/") + path, reader_auth(key)
    if client is None:
        with httpx.Client(timeout=timeout) as own:
            response = own.request(method, url, content=content, headers=headers, auth=auth)
    else:
        response = client.request(method, url, content=content, headers=headers, auth=auth)
    answer: dict[str, Any] = raise_for_error(response).json()
    return answer


# -- openai helpers (pip install 'sluice[openai]') ----------------------------------------------------------


def openai_client(base_url: str, key: Key, *, payer: str | None = None, max_cost: MaxCost = 10**18,
                  **openai_kwargs: Any) -> Any:
    """An `openai.OpenAI` client whose calls are signed Sluice calls (the SluiceAuth is `client.sluice_auth`)."""
    from openai import OpenAI

    auth = SluiceAuth(key, payer=payer, max_cost=max_cost)
    client = OpenAI(base_url=base_url.rstrip("/") + "/v1", api_key="unused",
                    http_client=httpx.Client(auth=auth, timeout=300),  # type: ignore[arg-type]
                    **openai_kwargs)
    client.sluice_auth = auth  # type: ignore[attr-defined]
    return client


def async_openai_client(base_url: str, key: Key, *, payer: str | None = None,
                        max_cost: MaxCost = 10**18, **openai_kwargs: Any) -> Any:
    """The `openai.AsyncOpenAI` twin of `openai_client`."""
    from openai import AsyncOpenAI

    auth = SluiceAuth(key, payer=payer, max_cost=max_cost)
    client = AsyncOpenAI(base_url=base_url.rstrip("/") + "/v1", api_key="unused",
                         http_client=httpx.AsyncClient(auth=auth, timeout=300),  # type: ignore[arg-type]
                         **openai_kwargs)
    client.sluice_auth = auth  # type: ignore[attr-defined]
    return client
