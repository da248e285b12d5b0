"""Client SDK: sign Sluice calls from an eth-account key, so the `openai` package works unchanged.

    from openai import OpenAI
    from redemption.sdk import SluiceAuth
    auth = SluiceAuth(developer_key, payer=enterprise_address, max_cost=10**17)
    client = OpenAI(base_url="http://127.0.0.1:8000/v1", api_key="unused",
                    http_client=httpx.Client(auth=auth))

The same `SluiceAuth` works with `httpx.AsyncClient` (and so `AsyncOpenAI`): its
auth flow first fetches `/.well-known/sluice.json` once for the EIP-712 domain,
then signs every request body with a fresh 128-bit nonce and a short deadline.
After each non-streamed call `auth.last_cost` / `auth.last_job_id` hold what the
service charged; `auth.total_cost` adds them up. `reader_auth(key)` signs the account-data reads:
`httpx.get(base + "/v1/usage", params={"payer": address}, auth=reader_auth(key))`.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Callable, Generator
from typing import Any

import httpx
from eth_account import Account
from eth_account.signers.local import LocalAccount
from eth_utils.address import to_checksum_address

from ledger.protocol.eip712 import Domains
from ledger.protocol.signed_call import signed_call_headers

DISCOVERY_PATH = "/.well-known/sluice.json"
MaxCost = int | Callable[[httpx.Request], int]


class SluiceAuth(httpx.Auth):
    """httpx authentication that signs each call as DESIGN.md's `Redemption` struct."""

    requires_response_body = True

    def __init__(self, key: LocalAccount | str | bytes, *, payer: str | None = None, max_cost: MaxCost = 10**18,
                 deadline_seconds: int = 120, domains: Domains | None = None) -> None:
        self.account: LocalAccount = key if isinstance(key, LocalAccount) else Account.from_key(key)
        self.payer = to_checksum_address(payer) if payer else self.account.address
        self.max_cost = max_cost
        self.deadline_seconds = deadline_seconds
        self.domains = domains
        self.last_cost: int | None = None
        self.last_job_id: str | None = None
        self.total_cost = 0
        self._lock = threading.Lock()

    def sign(self, request: httpx.Request, domains: Domains) -> None:
        max_cost = self.max_cost(request) if callable(self.max_cost) else self.max_cost
        request.headers.update(signed_call_headers(
            bytes(self.account.key), domains.redemption, request.content, payer=self.payer, max_cost=max_cost,
            nonce=secrets.randbits(128), deadline=int(time.time()) + self.deadline_seconds))

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        if self.domains is None:
            discovery = yield httpx.Request("GET", request.url.copy_with(path=DISCOVERY_PATH, query=None))
            if discovery.status_code != 200:
                raise httpx.HTTPStatusError(
                    f"discovery at {discovery.request.url} answered {discovery.status_code}",
                    request=discovery.request, response=discovery,
                )
            domain: dict[str, Any] = discovery.json()["eip712_domain"]
            self.domains = Domains(int(domain["chainId"]), domain["verifyingContract"])
        self.sign(request, self.domains)
        response = yield request
        cost = response.headers.get("Sluice-Cost")
        if cost is not None:
            with self._lock:
                self.last_cost = int(cost)
                self.last_job_id = response.headers.get("Sluice-Job-Id")
                self.total_cost += int(cost)


def reader_auth(key: LocalAccount | str | bytes, *, domains: Domains | None = None) -> SluiceAuth:
    """Signs account-data and audit reads (`/v1/usage`, `/v1/budget`, `/audit/...`): empty body, Sluice-Max-Cost 0,
    Sluice-Payer the key's own address."""
    return SluiceAuth(key, max_cost=0, domains=domains)


def openai_client(base_url: str, key: LocalAccount | str, *, payer: str | None = None, max_cost: MaxCost = 10**18,
                  **openai_kwargs: Any) -> Any:
    """An `openai.OpenAI` client whose calls are signed Sluice calls (the SluiceAuth is `client.sluice_auth`)."""
    from openai import OpenAI

    auth = SluiceAuth(key, payer=payer, max_cost=max_cost)
    client = OpenAI(base_url=base_url.rstrip("/") + "/v1", api_key="unused",
                    http_client=httpx.Client(auth=auth, timeout=300),  # type: ignore[arg-type]
                    **openai_kwargs)
    client.sluice_auth = auth  # type: ignore[attr-defined]
    return client


def async_openai_client(base_url: str, key: LocalAccount | str, *, payer: str | None = None,
                        max_cost: MaxCost = 10**18, **openai_kwargs: Any) -> Any:
    """The `openai.AsyncOpenAI` twin of `openai_client`."""
    from openai import AsyncOpenAI

    auth = SluiceAuth(key, payer=payer, max_cost=max_cost)
    client = AsyncOpenAI(base_url=base_url.rstrip("/") + "/v1", api_key="unused",
                         http_client=httpx.AsyncClient(auth=auth, timeout=300),  # type: ignore[arg-type]
                         **openai_kwargs)
    client.sluice_auth = auth  # type: ignore[attr-defined]
    return client
