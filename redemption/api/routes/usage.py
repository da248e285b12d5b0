"""Usage per developer key: what each spender a payer approved has used, metered and settled.

A public, unsigned read like `/v1/budget`: the settled part is on chain for every reader of the
permissioned ledger anyway (`Redeemed(batchId, payer, spender, amount)`), and these totals add only
the usage not settled yet. `sluice wallet usage` reads it, or runs `USAGE_BY_SPENDER` itself when it
has the database.
"""

from __future__ import annotations

from datetime import datetime

from eth_utils.address import is_hex_address, to_checksum_address
from fastapi import APIRouter, Query
from pydantic import BaseModel, Field

from redemption import errors
from redemption.api.deps import State
from redemption.store import USAGE_BY_SPENDER

router = APIRouter(tags=["usage"])

class SpenderUsage(BaseModel):
    spender: str = Field(description="the developer key (the payer itself for its own calls)")
    calls: int
    prompt_tokens: int
    completion_tokens: int
    metered: str = Field(description="cost of every metered call, base units (decimal string)")
    settled: str = Field(description="the part burned on chain, base units")
    unsettled: str = Field(description="metered but not burned yet, base units")
    last_call: datetime


class Usage(BaseModel):
    payer: str
    spenders: list[SpenderUsage]


@router.get("/v1/usage")
async def usage(state: State, payer: str = Query(...)) -> Usage:
    """Metered and settled compute-token spend of each developer key a payer approved."""
    if not is_hex_address(payer):
        raise errors.InvalidRequest("payer must be a 0x address", "payer")
    payer = to_checksum_address(payer)
    async with state.store.pool.connection() as conn:
        cur = await conn.execute(USAGE_BY_SPENDER, (bytes.fromhex(payer[2:]),))
        rows = await cur.fetchall()
    return Usage(payer=payer, spenders=[
        SpenderUsage(spender=to_checksum_address(bytes(r[0])), calls=r[1], prompt_tokens=int(r[2]),
                     completion_tokens=int(r[3]), metered=str(int(r[4])), settled=str(int(r[5])),
                     unsettled=str(int(r[4]) - int(r[5])), last_call=r[6])
        for r in rows
    ])
