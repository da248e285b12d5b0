"""Pydantic models of the request and response bodies the service reads or writes itself
(the audit API's are in `redemption.audit.models`).

Generation requests are validated for the fields billing depends on and passed
to vLLM otherwise untouched (unknown fields are kept).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class ChatCompletionRequest(BaseModel):
    model_config = ConfigDict(extra="allow")

    model: str = Field(min_length=1)
    messages: list[dict[str, Any]] = Field(min_length=1)
    stream: bool = False
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    stream_options: dict[str, Any] | None = None

    def requested_max_tokens(self) -> int | None:
        return self.max_completion_tokens if self.max_tokens is None else self.max_tokens


class CompletionRequest(BaseModel):
    model_config = ConfigDict(extra="allow")

    model: str = Field(min_length=1)
    prompt: str | list[str] | list[int] | list[list[int]]
    stream: bool = False
    max_tokens: int | None = Field(None, ge=1)
    stream_options: dict[str, Any] | None = None

    def requested_max_tokens(self) -> int | None:
        return self.max_tokens


class Eip712Domain(BaseModel):
    name: str
    version: str
    chainId: int
    verifyingContract: str


class Eip712Field(BaseModel):
    name: str
    type: str


class Contracts(BaseModel):
    token: str
    sale: str
    rate_card: str
    settlement: str
    payment_token: str
    node_registry: str


class TokenInfo(BaseModel):
    name: str
    symbol: str
    decimals: int


class NativeCurrency(BaseModel):
    name: str
    symbol: str
    decimals: int


class WalletChain(BaseModel):
    """The params object of EIP-3085 `wallet_addEthereumChain`."""

    chainId: str = Field(description="0x-hex chain id")
    chainName: str
    nativeCurrency: NativeCurrency
    rpcUrls: list[str]


class WalletAssetOptions(BaseModel):
    address: str
    symbol: str
    decimals: int


class WalletAsset(BaseModel):
    """The params object of EIP-747 `wallet_watchAsset` for the compute token."""

    type: str = "ERC20"
    options: WalletAssetOptions


class Discovery(BaseModel):
    chain_id: int
    rpc_url: str
    contracts: Contracts
    token: TokenInfo
    eip712_domain: Eip712Domain
    eip712_types: dict[str, list[Eip712Field]] = Field(
        description="exactly the `types` eth_signTypedData_v4 takes, EIP712Domain included")
    primary_type: str = Field(description="the struct a call signs: Redemption")
    unlock_period_seconds: int = Field(description="how long escrow and budget cuts wait on chain before they apply")
    max_deadline_seconds: int
    wallet_add_ethereum_chain: WalletChain
    wallet_watch_asset: WalletAsset


class ModelRates(BaseModel):
    model_id: str
    input_rate: str = Field(description="base units per 1,000,000 prompt tokens")
    output_rate: str = Field(description="base units per 1,000,000 completion tokens")
    tier: str


class ModelCard(BaseModel):
    id: str
    object: str = "model"
    created: int
    owned_by: str = "sluice"
    sluice: ModelRates


class ModelList(BaseModel):
    object: str = "list"
    data: list[ModelCard]


class Budget(BaseModel):
    payer: str
    spender: str
    escrow_available: str = Field(description="escrow less pending withdrawal, open holds and unsettled usage")
    budget_available: str | None = Field(
        description="the spender's effective budget (a pending cut counts at once) less its open holds and "
        "unsettled usage; null when the spender is the payer")


class SpenderUsage(BaseModel):
    spender: str = Field(description="the developer key (the payer itself for its own calls)")
    calls: int
    prompt_tokens: int
    completion_tokens: int
    metered: str = Field(description="cost of every metered call, base units (decimal string)")
    settled: str = Field(description="the part burned on chain, base units")
    unsettled: str = Field(description="metered but not burned yet, base units")
    last_call: datetime


class ModelUsage(BaseModel):
    spender: str = Field(description="the developer key (the payer itself for its own calls)")
    model: str
    calls: int
    prompt_tokens: int
    completion_tokens: int
    metered: str = Field(description="cost of every metered call of this key on this model, base units")


class DailyUsage(BaseModel):
    day: str = Field(description="UTC date of the calls' end, YYYY-MM-DD")
    spender: str
    model: str
    calls: int
    metered: str = Field(description="base units (decimal string)")


class Usage(BaseModel):
    payer: str
    spenders: list[SpenderUsage]
    models: list[ModelUsage] = Field(default_factory=list,
                                     description="the same spend per (developer key, model), largest first")
    days: list[DailyUsage] = Field(default_factory=list,
                                   description="the spend per UTC day, developer key and model, oldest first")
