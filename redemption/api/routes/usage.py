"""Usage per developer key: what each spender a payer approved has used, metered and settled, and the
recent calls themselves with their cost (`/v1/calls`, readable by the payer or by that spender).

Signed like the audit API (empty body, Sluice-Max-Cost 0): the payer reads its own account, an
AUDITOR_ROLE key any; everyone else gets 403 `not_account_holder`. `sluice wallet usage` reads it, or
runs `USAGE_BY_SPENDER` itself when it has the database.
"""

from __future__ import annotations

from eth_utils.address import is_hex_address, to_checksum_address
from fastapi import APIRouter, Query, Request

from redemption import errors
from redemption.api.deps import State
from redemption.audit.auth import verify_reader
from redemption.models import RecentCalls, Usage

router = APIRouter(tags=["usage"])


@router.get("/v1/usage")
async def usage(request: Request, state: State, payer: str = Query(..., max_length=42)) -> Usage:
    """Metered and settled compute-token spend of each developer key a payer approved (signed read), also per
    model and per UTC day."""
    if not is_hex_address(payer) or not payer.startswith("0x"):
        raise errors.InvalidRequest("payer must be a 0x address", "payer")
    payer = to_checksum_address(payer)
    await verify_reader(request, roles=state.auditors, store=state.store, separator=state.domains.redemption,
                        max_deadline_seconds=state.settings.max_deadline_seconds, holders=(payer,))
    models, days = await state.store.usage_by_model(payer)
    return Usage(payer=payer, spenders=await state.store.usage_by_spender(payer), models=models, days=days)


MAX_CALLS = 500


@router.get("/v1/calls")
async def recent_calls(request: Request, state: State, payer: str = Query(..., max_length=42),
                       spender: str | None = Query(None, max_length=42),
                       limit: int = Query(50, description="1 .. 500")) -> RecentCalls:
    """A payer's metered calls with their cost, newest first (signed read). With `spender`, only that key's
    calls, readable by the payer or by that spender; without it, every key's calls, readable by the payer."""
    for name, value in (("payer", payer), ("spender", spender)):
        if value is not None and (not is_hex_address(value) or not value.startswith("0x")):
            raise errors.InvalidRequest(f"{name} must be a 0x address", name)
    if not 1 <= limit <= MAX_CALLS:
        raise errors.InvalidRequest(f"limit must be 1 .. {MAX_CALLS}, got {limit}", "limit")
    payer = to_checksum_address(payer)
    spender = to_checksum_address(spender) if spender else None
    holders = (payer,) if spender is None else (payer, spender)
    await verify_reader(request, roles=state.auditors, store=state.store, separator=state.domains.redemption,
                        max_deadline_seconds=state.settings.max_deadline_seconds, holders=holders)
    return RecentCalls(payer=payer, spender=spender, calls=await state.store.recent_calls(payer, spender, limit))
