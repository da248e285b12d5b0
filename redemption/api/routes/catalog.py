"""Discovery and the model list with rates (public reads), and budgets (a signed read: payer, spender or auditor)."""

from __future__ import annotations

import time

from eth_utils.address import is_hex_address, to_checksum_address
from fastapi import APIRouter, Query, Request

from ledger.protocol.eip712 import DOMAIN_VERSION, REDEMPTION_DOMAIN_NAME, REDEMPTION_PRIMARY_TYPE, REDEMPTION_TYPES
from redemption import errors
from redemption.api.deps import State
from redemption.audit.auth import verify_reader
from redemption.models import (
    Budget,
    Contracts,
    Discovery,
    Eip712Domain,
    Eip712Field,
    ModelCard,
    ModelList,
    ModelRates,
    NativeCurrency,
    WalletAsset,
    WalletAssetOptions,
    WalletChain,
)

router = APIRouter(tags=["catalog"])
STARTED = int(time.time())


@router.get("/.well-known/sluice.json")
async def discovery(state: State) -> Discovery:
    """Where the chain, contracts and token are, the EIP-712 domain and types to sign calls with, and the
    params of a wallet's `wallet_addEthereumChain` and `wallet_watchAsset`."""
    d, settings = state.deployment, state.settings
    contracts = {k: to_checksum_address(v) for k, v in d.contracts.items()}
    rpc_url = settings.public_rpc_url or d.rpc_url
    return Discovery(
        chain_id=d.chain_id,
        rpc_url=rpc_url,
        contracts=Contracts(**contracts),
        token=state.token,
        eip712_domain=Eip712Domain(name=REDEMPTION_DOMAIN_NAME, version=DOMAIN_VERSION, chainId=d.chain_id,
                                   verifyingContract=contracts["settlement"]),
        eip712_types={name: [Eip712Field(**f) for f in fields] for name, fields in REDEMPTION_TYPES.items()},
        primary_type=REDEMPTION_PRIMARY_TYPE,
        unlock_period_seconds=state.unlock_period,
        max_deadline_seconds=settings.max_deadline_seconds,
        wallet_add_ethereum_chain=WalletChain(
            chainId=hex(d.chain_id), chainName=settings.chain_name, rpcUrls=[rpc_url],
            nativeCurrency=NativeCurrency(name=settings.native_currency_name,
                                          symbol=settings.native_currency_symbol, decimals=18)),
        wallet_watch_asset=WalletAsset(options=WalletAssetOptions(
            address=contracts["token"], symbol=state.token.symbol, decimals=state.token.decimals)),
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
    answer = Budget(payer=payer, spender=spender, escrow_available=str(escrow),
                    budget_available=None if budget is None else str(budget),
                    rate_window_seconds=state.settings.rate_window_seconds)
    if spender != payer:
        for policy in await state.store.policies(payer, spender):
            answer.label, answer.expires_at = policy.label, policy.expires_at
            answer.requests_per_minute, answer.tokens_per_minute = policy.requests_per_minute, policy.tokens_per_minute
    return answer
