"""The client of a Sluice audit API: signed GETs from a key holding AUDITOR_ROLE.

Every request is a signed call (DESIGN.md "The signed call") over an empty body with maxCost 0,
its headers built by `ledger.protocol.signed_call`; the EIP-712 domain comes from the API's
discovery document, fetched once. What the API answers is data to check, never taken as true.
"""

from __future__ import annotations

import secrets
import threading
import time
from typing import Any, Protocol

import httpx
import orjson

from ledger.errors import VerifyError
from ledger.protocol.eip712 import Domains
from ledger.protocol.signed_call import signed_call_headers

DISCOVERY_PATH = "/.well-known/sluice.json"
# How long a signed query stays valid: well inside any service's max_deadline_seconds.
DEADLINE_SECONDS = 120


class SigningKey(Protocol):
    """What signs the audit reads: an eth-account LocalAccount, or any key with its raw bytes and address."""

    @property
    def key(self) -> bytes: ...

    @property
    def address(self) -> str: ...


class AuditApi:
    """Signed GETs to a Sluice audit API (empty body, maxCost 0, from a key holding AUDITOR_ROLE)."""

    def __init__(self, base_url: str, auditor: SigningKey, *, timeout: float = 60.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.auditor = auditor
        self.client = httpx.Client(base_url=self.base_url, timeout=timeout,
                                   limits=httpx.Limits(max_connections=16, max_keepalive_connections=16))
        self._discovery: dict[str, Any] | None = None
        self._lock = threading.Lock()

    def discovery(self) -> dict[str, Any]:
        """The API's `/.well-known/sluice.json` (fetched once)."""
        with self._lock:
            if self._discovery is None:
                try:
                    response = self.client.get(DISCOVERY_PATH, timeout=10)
                except httpx.HTTPError as exc:
                    raise VerifyError(f"the audit API at {self.base_url} does not answer "
                                      f"({exc.__class__.__name__})") from exc
                if response.status_code != 200:
                    raise VerifyError(f"{self.base_url} has no Sluice discovery document "
                                      f"(HTTP {response.status_code})")
                self._discovery = orjson.loads(response.content)
            return self._discovery

    def _signed(self) -> dict[str, str]:
        """Fresh signed-call headers for one GET (an empty body)."""
        try:
            domain = self.discovery()["eip712_domain"]
            separator = Domains(int(domain["chainId"]), str(domain["verifyingContract"])).redemption
        except (KeyError, TypeError, ValueError) as exc:
            raise VerifyError(f"the discovery document of {self.base_url} has no usable eip712_domain "
                              f"({exc.__class__.__name__}: {exc})") from None
        return signed_call_headers(bytes(self.auditor.key), separator, b"", payer=self.auditor.address, max_cost=0,
                                   nonce=secrets.randbits(128), deadline=int(time.time()) + DEADLINE_SECONDS)

    def _request(self, path: str, params: dict[str, Any] | None = None) -> httpx.Response:
        headers = self._signed()
        try:
            return self.client.get(path, params=params, headers=headers)
        except httpx.HTTPError as exc:
            raise VerifyError(f"the audit API at {self.base_url} does not answer ({exc.__class__.__name__})") from exc

    def get(self, path: str, params: dict[str, Any] | None = None, *, missing_ok: bool = False) -> Any:
        """The decoded answer (JSON, or (text, next cursor) for CSV); VerifyError with the API's message."""
        response = self._request(path, params)
        if response.status_code == 404 and missing_ok:
            return None
        if response.status_code != 200:
            raise _refused(path, response)
        if response.headers.get("content-type", "").startswith("text/csv"):
            return response.text, response.headers.get("sluice-next-cursor")
        return orjson.loads(response.content)

    def batch_json(self, batch_id: bytes) -> bytes | None:
        """The raw JSON of /audit/batches/{batch_id}; None when the API does not know the batch."""
        path = f"/audit/batches/0x{batch_id.hex()}"
        response = self._request(path)
        if response.status_code == 404:
            return None
        if response.status_code != 200:
            raise _refused(path, response)
        return response.content

    def node_keys(self) -> set[bytes]:
        """The node receipt keys the API says are registered (the verifier checks receipts against them)."""
        data = self.get("/audit/nodes")
        return {bytes.fromhex(n["node"][2:]) for n in data["nodes"]}

    def close(self) -> None:
        self.client.close()


def _refused(path: str, response: httpx.Response) -> VerifyError:
    try:
        error = orjson.loads(response.content)["error"]
        message, code = str(error["message"]), str(error["code"])
    except (orjson.JSONDecodeError, KeyError, TypeError):
        message, code = response.text[:200], "http_error"
    return VerifyError(f"the audit API refused {path} (HTTP {response.status_code} {code}): {message}")
