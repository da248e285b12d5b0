"""The audit API's response bodies (uint256 amounts as decimal strings)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, Field


class IndexPosition(BaseModel):
    indexed_block: int | None = Field(description="last block the indexer has committed")
    head: int | None = Field(description="chain head when the indexer last looked")
    lag: int | None = Field(description="blocks the index trails the head by")


class AuditEvent(BaseModel):
    """One on-chain log, decoded (uint256 as decimal strings)."""

    block: int
    log_index: int
    tx_hash: str
    tx_index: int
    block_hash: str
    timestamp: datetime
    contract: str
    address: str
    event: str
    kind: str
    accounts: list[str]
    args: dict[str, Any]


class EventPage(IndexPosition):
    object: Literal["list"] = "list"
    data: list[AuditEvent]
    has_more: bool
    next_cursor: str | None = Field(description="pass as `cursor` for the next page; null on the last")


class OnChainSettlement(BaseModel):
    """The BatchSettled log."""

    tx_hash: str
    block: int
    log_index: int
    timestamp: datetime
    receipts_root: str
    items: int
    total: str


class OnChainAmount(BaseModel):
    """A Redeemed (amount) or Shortfall (owed, paid) log of the batch."""

    event: str
    payer: str
    spender: str
    amount: str | None = None
    owed: str | None = None
    paid: str | None = None
    tx_hash: str
    block: int
    log_index: int


class RequestSignature(BaseModel):
    """The developer's signed call: the EIP-712 `Redemption` fields, its digest and signature."""

    payer: str
    body_hash: str
    max_cost: str
    nonce: str
    deadline: int
    signature: str
    digest: str


class DebtOrigin(BaseModel):
    """For a debt batch's receipt: the Shortfall it settles (leaf job id = that batch's id)."""

    batch_id: str
    owed: str
    paid: str


class AuditReceipt(BaseModel):
    """One leaf of a batch: a metered job with both signatures, or (kind debt) a cleared shortfall."""

    kind: Literal["usage", "debt"]
    job_id: str
    batch_id: str | None
    payer: str
    spender: str
    cost: str
    merkle_proof: list[str] | None
    model: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    max_cost: str | None = None
    request: RequestSignature | None = None
    node: str | None = None
    node_signature: str | None = None
    status: str | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    debt: DebtOrigin | None = None


class AuditBatch(BaseModel):
    batch_id: str
    kind: str | None = Field(description="usage or debt; null when only the chain knows the batch")
    status: str | None
    receipts_root: str | None
    receipt_count: int | None
    item_count: int | None
    total: str | None
    paid: str | None
    settlement: OnChainSettlement | None = Field(description="the BatchSettled log; null while not settled")
    redeemed: list[OnChainAmount]
    shortfalls: list[OnChainAmount]
    receipts: list[AuditReceipt]


class AuditReceiptDetail(BaseModel):
    receipt: AuditReceipt
    settlement: OnChainSettlement | None


class ReconciliationRow(BaseModel):
    """Per (payer, spender), in base units: what was metered, what the database and the chain say was burned."""

    payer: str
    spender: str
    receipts: int
    metered: str
    unsettled: str
    settled: str
    redeemed: str
    redeemed_usage: str
    debt_cleared: str
    shortfalls: int
    shortfall_unpaid: str
    outstanding_debt: str
    difference: str = Field(description="settled - (redeemed_usage + shortfall_unpaid); 0 when they agree")


class Reconciliation(IndexPosition):
    rows: list[ReconciliationRow]
    totals: ReconciliationRow
    balanced: bool


class NodeKey(BaseModel):
    node: str
    tier: str
    region: str
    models: list[str]
    registered_at: datetime
    retired: bool


class NodeList(BaseModel):
    nodes: list[NodeKey]
