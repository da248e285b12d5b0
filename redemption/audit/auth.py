"""Who may call the audit API.

Auditors sign each GET exactly like a billable call (DESIGN.md): the five `Sluice-*` headers over
an empty body with `Sluice-Max-Cost` 0 and `Sluice-Payer` = the auditor's own address. The
recovered signer must hold `AUDITOR_ROLE` on the token (an `eth_call`, cached a few seconds) and
its nonce is consumed durably in `call_nonces`, like a call's.
"""

from __future__ import annotations

import asyncio
import time

from starlette.requests import Request

from ledger.chain.client import Ledger
from redemption import errors
from redemption.auth import VerifiedCall, verify_headers
from redemption.store import Store

AUDITOR_ROLE = "AUDITOR_ROLE"
OPERATOR_ROLE = "DEFAULT_ADMIN_ROLE"  # the operator's admin role on the compute token


class AuditorRoles:
    """`hasRole(AUDITOR_ROLE, key)` on the token, cached for `ttl` seconds (grants and revocations show quickly)."""

    MAX_KEYS = 10_000

    def __init__(self, ledger: Ledger, ttl: float = 5.0) -> None:
        self.ledger = ledger
        self.ttl = ttl
        self._cache: dict[tuple[str, str], tuple[bool, float]] = {}

    async def holds(self, account: str, role: str = AUDITOR_ROLE) -> bool:
        now = time.monotonic()
        cached = self._cache.get((role, account))
        if cached is not None and cached[1] > now:
            return cached[0]
        holds = await asyncio.to_thread(self.ledger.has_role, role, account, on="token")
        if len(self._cache) >= self.MAX_KEYS:  # any key can sign: strangers must not grow this without bound
            self._cache = {k: v for k, v in self._cache.items() if v[0] and v[1] > now}
        self._cache[(role, account)] = (holds, now + self.ttl)
        return holds


async def verify_reader(request: Request, *, roles: AuditorRoles, store: Store, separator: bytes,
                        max_deadline_seconds: int, holders: tuple[str, ...]) -> VerifiedCall:
    """A signed account-data read (`/v1/usage`, `/v1/budget`, `/v1/calls`): the signer must be one of `holders` (the
    payer, or the spender whose budget it is) or hold AUDITOR_ROLE; 403 `not_account_holder` otherwise.
    The nonce is consumed only once the reader is authorized."""
    call = _verified_read(request, separator, max_deadline_seconds)
    if call.spender not in {h.lower() for h in holders} and not await roles.holds(call.spender):
        raise errors.NotAccountHolder(
            f"{call.spender} may not read this account: a payer reads its own account, a spender its own budget "
            "and calls, an AUDITOR_ROLE key any", "Sluice-Payer")
    if not await store.consume_nonce(call.spender, call.nonce, call.deadline):
        raise errors.NonceReplayed("this (signer, nonce) was already used; sign the call again with a fresh nonce",
                                   "Sluice-Nonce")
    return call


def _verified_read(request: Request, separator: bytes, max_deadline_seconds: int) -> VerifiedCall:
    if request.headers.get("content-length", "0") not in ("", "0"):
        raise errors.InvalidRequest("signed reads have an empty body; sign keccak256 of zero bytes")
    call = verify_headers(request.headers, b"", separator, max_deadline_seconds)
    if call.max_cost != 0:
        raise errors.InvalidHeader("signed reads sign Sluice-Max-Cost 0", "Sluice-Max-Cost")
    if call.spender != call.payer:
        raise errors.InvalidSignature(
            "the signature does not recover to Sluice-Payer; signed reads name the reader's own key as Sluice-Payer "
            "and sign the Redemption struct under the domain from /.well-known/sluice.json",
            "Sluice-Signature",
        )
    return call


async def verify_auditor(request: Request, *, roles: AuditorRoles, store: Store, separator: bytes,
                         max_deadline_seconds: int) -> VerifiedCall:
    """The signed audit call's verified headers; the matching ApiError otherwise."""
    call = _verified_read(request, separator, max_deadline_seconds)
    if not await roles.holds(call.spender):
        raise errors.NotAuditor(f"{call.spender} does not hold AUDITOR_ROLE on the compute token; "
                                "the operator grants it with `sluice admin roles grant auditor ADDRESS`")
    if not await store.consume_nonce(call.spender, call.nonce, call.deadline):
        raise errors.NonceReplayed("this (signer, nonce) was already used; sign the call again with a fresh nonce",
                                   "Sluice-Nonce")
    return call


async def verify_operator(request: Request, *, roles: AuditorRoles, store: Store, separator: bytes,
                          max_deadline_seconds: int) -> VerifiedCall:
    """A signed operator read (`/v1/operations`): the signer holds AUDITOR_ROLE or the operator's admin role
    (DEFAULT_ADMIN_ROLE) on the compute token; 403 `not_operator` otherwise."""
    call = _verified_read(request, separator, max_deadline_seconds)
    if not await roles.holds(call.spender) and not await roles.holds(call.spender, OPERATOR_ROLE):
        raise errors.NotOperator(f"{call.spender} holds neither AUDITOR_ROLE nor the operator's admin role on the "
                                 "compute token; sign with the operator's key, or have the operator grant "
                                 "`sluice admin roles grant auditor ADDRESS`", "Sluice-Payer")
    if not await store.consume_nonce(call.spender, call.nonce, call.deadline):
        raise errors.NonceReplayed("this (signer, nonce) was already used; sign the call again with a fresh nonce",
                                   "Sluice-Nonce")
    return call
