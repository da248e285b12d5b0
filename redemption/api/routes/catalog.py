"""Discovery and the model list with rates (public reads), and budgets (a signed read: payer, spender or auditor)."""

from __future__ import annotations

import time

from eth_utils.address import is_hex_address, to_checksum_address
from fastapi import APIRouter, Query, Request

from redemption import errors
from redemption.api.deps import State
from redemption.audit.auth import verify_reader
from redemption.models import Budget, Contracts, Discovery, Eip712Domain, ModelCard, ModelList, ModelRates

router = APIRouter(tags=["catalog"])
STARTED = int(time.time())


@router.get("/.well-known/sluice.json")
async def discovery(state: State) -> Discovery:
    """Where the chain and contracts are, and the EIP-712 domain to sign calls under."""
    d = state.deployment
    return Discovery(
        chain_id=d.chain_id,
        rpc_url=state.settings.public_rpc_url or d.rpc_url,
        contracts=Contracts(**{k: to_checksum_address(v) for k, v in d.contracts.items()}),
        eip712_domain=Eip712Domain(name="Sluice", version="1", chainId=d.chain_id,
                                   verifyingContract=to_checksum_address(d.contracts["settlement"])),
        max_deadline_seconds=state.settings.max_deadline_seconds, unlock_period_seconds=state.unlock_period,
    )


@router.get("/v1/models")
async def list_models(state: State) -> ModelList:
    """Every model on the on-chain rate card, with its rates (base units per 1M model tokens) and tier."""
    return ModelList(data=[
        ModelCard(id=r.name, created=STARTED, sluice=ModelRates(
            model_id="0x" + r.model_id.hex(), input_rate=str(r.input_rate), output_rate=str(r.output_rate),
            tier=r.tier))
        for r in state.rates.values()
    ])


@router.get("/v1/budget")
async def budget(request: Request, state: State, payer: str = Query(..., max_length=42),
                 spender: str | None = Query(None, max_length=42)) -> Budget:
    """What a payer's escrow (and a spender's budget from it) can still cover, less holds and unsettled usage."""
    for name, value in (("payer", payer), ("spender", spender)):
        if value is not None and (not is_hex_address(value) or not value.startswith("0x")):
            raise errors.InvalidRequest(f"{name} must be a 0x address", name)
    payer = to_checksum_address(payer)
    spender = to_checksum_address(spender) if spender else payer
    await verify_reader(request, roles=state.auditors, store=state.store, separator=state.domains.redemption,
                        max_deadline_seconds=state.settings.max_deadline_seconds, holders=(payer, spender))
    escrow, budget = await state.store.available(payer, spender)
    return Budget(payer=payer, spender=spender, escrow_available=str(escrow),
                  budget_available=None if budget is None else str(budget))
