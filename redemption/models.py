"""Pydantic models of the request and response bodies the service reads or writes itself
(the audit API's are in `redemption.audit.models`).

Generation requests are validated for the fields billing depends on and passed
to vLLM otherwise untouched (unknown fields are kept).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, StrictInt


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
    label: str | None = Field(None, description="the payer's name for this key (key policy)")
    requests_per_minute: int | None = Field(None, description="calls per rate window (key policy); null: no limit")
    tokens_per_minute: int | None = Field(None, description="model tokens per rate window (key policy); null: none")
    expires_at: int | None = Field(None, description="unix time the key stops being admitted (key policy)")
    rate_window_seconds: int = Field(60, description="length of the window the limits count in (60: per minute)")


# Key policies (docs/interfaces.md): a payer's names and limits for the developer keys it gave budgets.
LABEL_PATTERN = r"^[^\x00-\x1f\x7f]*$"
INT32_MAX = 2**31 - 1
INT64_MAX = 2**63 - 1


ADDRESS_PATTERN = r"^0x[0-9a-fA-F]{40}$"
TARGET = ("the developer key this change is for, the same address as the path's {spender}: the signature covers "
          "the body, not the path, so the body names its target")


class KeyPolicyUpdate(BaseModel):
    """`PUT /v1/keys/{spender}`: the body names its key; an absent field stays as it is, null clears it."""

    model_config = ConfigDict(extra="forbid")

    spender: str = Field(pattern=ADDRESS_PATTERN, description=TARGET)
    label: str | None = Field(None, max_length=64, pattern=LABEL_PATTERN,
                              description="a name for the key, at most 64 characters, no control characters")
    requests_per_minute: StrictInt | None = Field(None, gt=0, le=INT32_MAX, description="calls per rate window")
    tokens_per_minute: StrictInt | None = Field(None, gt=0, le=INT64_MAX,
                                                description="model tokens per rate window (worst case while a call "
                                                "runs: prompt bound + max_tokens, trued when it is metered)")
    expires_at: StrictInt | None = Field(None, ge=0, le=INT64_MAX,
                                         description="unix time after which the key's calls get 403 key_expired")


class PendingCut(BaseModel):
    amount: str = Field(description="the budget the pending cut lowers it to, base units")
    effective_at: int = Field(description="unix time the cut takes effect on chain (admission counts it at once)")


class KeyBudget(BaseModel):
    effective: str = Field(description="the budget admission counts (a pending cut counts at once), base units")
    reserved: str = Field(description="held by open calls and unsettled usage, base units")
    available: str = Field(description="effective less reserved, base units")
    pending_cut: PendingCut | None


class KeyPolicy(BaseModel):
    spender: str
    label: str | None
    requests_per_minute: int | None
    tokens_per_minute: int | None
    expires_at: int | None
    updated_at: int | None = Field(description="unix time of the last change; null: the key has a budget, no policy")
    budget: KeyBudget | None = Field(description="the key's budget from the payer (mirror); null: none given")


class KeyList(BaseModel):
    payer: str
    keys: list[KeyPolicy]


class KeyPolicyDelete(BaseModel):
    """`DELETE /v1/keys/{spender}`: the body names the key whose policy goes."""

    model_config = ConfigDict(extra="forbid")

    spender: str = Field(pattern=ADDRESS_PATTERN, description=TARGET)


class KeyDeleted(BaseModel):
    deleted: bool


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


class RecentCall(BaseModel):
    job_id: str = Field(description="0x 32-byte job id (the Sluice-Job-Id header of the call)")
    spender: str = Field(description="the developer key that signed the call (the payer itself for its own calls)")
    model: str
    prompt_tokens: int
    completion_tokens: int
    cost: str = Field(description="what the call cost, compute-token base units (decimal string)")
    finished_at: int = Field(description="unix seconds the call ended")
    status: str = Field(description="metered, batched (in a batch being settled), settled or released (burned)")
    settled: bool = Field(description="true once the call's burn is confirmed on chain")
    batch_id: str | None = Field(description="0x id of the settlement batch holding the call; null before batching")


class RecentCalls(BaseModel):
    payer: str
    spender: str | None = Field(description="the developer key asked for; null: every key of the payer")
    calls: list[RecentCall] = Field(description="newest first, at most `limit`")


class Usage(BaseModel):
    payer: str
    spenders: list[SpenderUsage]
    models: list[ModelUsage] = Field(default_factory=list,
                                     description="the same spend per (developer key, model), largest first")
    days: list[DailyUsage] = Field(default_factory=list,
                                   description="the spend per UTC day, developer key and model, oldest first")


class SettlementBacklog(BaseModel):
    records: int = Field(description="metered records not yet in a confirmed batch")
    amount: str = Field(description="their cost, compute-token base units (decimal string)")
    oldest_unsettled_seconds: float | None = Field(description="age of the oldest of them; null when none")
    waiting_for_cut: int = Field(description="records in the outbox, not yet in a batch")
    open_batches: dict[str, int] = Field(description="batches not yet confirmed, per status")
    open_batch_records: dict[str, int] = Field(description="records in those batches, per status")
    unreleased_batches: int = Field(description="confirmed batches the service's mirror has not released yet")


class SettlementTotals(BaseModel):
    confirmed_batches: dict[str, int] = Field(description="confirmed batches per kind (usage, debt)")
    records: int = Field(description="usage records settled on chain")
    items: int
    gas_used: int
    failures: int = Field(description="settlement attempts that failed")
    last_confirmed_at: str | None = Field(description="ISO time of the last batch confirmed in the recent window")


class SettlementLag(BaseModel):
    window_seconds: int = Field(description="how far back: batches confirmed this recently")
    batches: int
    p50_seconds: float | None = Field(description="call end to batch confirmation, median; null: no batch")
    p99_seconds: float | None


class OperationsNode(BaseModel):
    node: str
    url: str
    tier: str
    region: str
    queue_depth: int = Field(description="calls waiting at the node")
    running: int
    capacity: int
    heartbeat_age_seconds: float | None
    health: str = Field(description="ok, stale (no heartbeat for 15 s) or retired; the service stops routing to a "
                                    "node after SLUICE_NODE_STALE_SECONDS (10 s) without one")
    healthy: bool


class OperationsWorker(BaseModel):
    name: str
    pid: int
    concurrency: int
    beat: bool
    heartbeat_age_seconds: float
    up: bool = Field(description="false once the worker missed five heartbeats")


class OperationsDebts(BaseModel):
    outstanding: int = Field(description="debts left by short batches, not cleared")
    amount: str = Field(description="owed minus paid over them, base units (decimal string)")
    suspended_accounts: int


class Operations(BaseModel):
    backlog: SettlementBacklog
    settled: SettlementTotals
    lag: SettlementLag
    debts: OperationsDebts
    nodes: list[OperationsNode]
    workers: list[OperationsWorker]
