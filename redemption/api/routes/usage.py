"""Usage per developer key: what each spender a payer approved has used, metered and settled.

A public, unsigned read like `/v1/budget`: the settled part is on chain for every reader of the
permissioned ledger anyway (`Redeemed(batchId, payer, spender, amount)`), and these totals add only
the usage not settled yet. `sluice wallet usage` reads it, or runs `USAGE_BY_SPENDER` itself when it
has the database.
"""

from __future__ import annotations

from eth_utils.address import is_hex_address, to_checksum_address
from fastapi import APIRouter, Query

from redemption import errors
from redemption.api.deps import State
from redemption.models import Usage

router = APIRouter(tags=["usage"])


@router.get("/v1/usage")
async def usage(state: State, payer: str = Query(...)) -> Usage:
    """Metered and settled compute-token spend of each developer key a payer approved."""
    if not is_hex_address(payer):
        raise errors.InvalidRequest("payer must be a 0x address", "payer")
    payer = to_checksum_address(payer)
    return Usage(payer=payer, spenders=await state.store.usage_by_spender(payer))
