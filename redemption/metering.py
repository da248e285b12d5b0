"""Metering: a held call is charged only from its node's signed receipt, or released uncharged.

A receipt is accepted when its EIP-712 signature recovers to the node that served, its fields
match the held call, and its cost follows the on-chain rates and stays within `Sluice-Max-Cost`.
A call that produced no completion token is not charged. Receipts arrive in the node's answer
(`Dispatcher`), or, for a stream its client left, posted to `/internal/receipts` (`charge_posted`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from inference_node.protocol import SignedReceipt
from ledger.domain import usage_cost
from ledger.protocol.eip712 import Domains, typed_digest
from ledger.protocol.secp256k1 import SignatureError, recover_address
from redemption import errors
from redemption.auth import VerifiedCall
from redemption.metrics import ServiceMetrics
from redemption.pricing import CostPlan
from redemption.routing import NodeRegistry
from redemption.store import ModelRate, Store

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class HeldCall:
    """A verified call with its hold taken: everything dispatch and metering need."""

    job_id: bytes
    call: VerifiedCall
    path: str
    payload: dict[str, Any]
    rate: ModelRate
    plan: CostPlan
    stream: bool
    tier: str | None
    region: str | None
    received: float  # perf_counter when the request arrived


class Meter:
    def __init__(self, *, store: Store, domains: Domains, metrics: ServiceMetrics) -> None:
        self.store = store
        self.domains = domains
        self.metrics = metrics

    def check_receipt(self, signed: SignedReceipt, node: str, job_id: bytes, payer: str, spender: str,
                      model_id: bytes, request_digest: bytes, max_cost: int, rate: ModelRate) -> str | None:
        """None when the receipt is good, else the reason it is refused."""
        r = signed.receipt
        if (r.job_id, r.payer.lower(), r.spender.lower(), r.model, r.request_digest) != (
            job_id, payer.lower(), spender.lower(), model_id, request_digest
        ):
            return "fields"
        try:
            signer = "0x" + recover_address(typed_digest(self.domains.receipt, r.struct_hash()), signed.signature).hex()
        except SignatureError:
            return "signature"
        if signer != node.lower() or signed.node.lower() != node.lower():
            return "signer"
        if r.cost != usage_cost(r.prompt_tokens, r.completion_tokens, rate.input_rate, rate.output_rate):
            return "cost"
        if r.cost > max_cost:
            return "over_max_cost"
        return None

    async def ended(self, held: HeldCall) -> None:
        """The service stopped relaying `held` unmetered: its hold may expire once its lifetime is over."""
        await self.store.call_ended(held.job_id)

    async def release(self, held: HeldCall) -> None:
        """Close the hold uncharged: the call produced nothing billable."""
        await self.store.release_hold(held.job_id, held.call.payer, held.call.spender)

    async def charge(self, held: HeldCall, node: str, signed: SignedReceipt | None,
                    first_token_at: datetime | None) -> int:
        """Meter the call from its receipt (or release it uncharged); returns the cost charged."""
        if signed is not None:
            reason = self.check_receipt(signed, node, held.job_id, held.call.payer, held.call.spender,
                                        held.rate.model_id, held.call.digest, held.call.max_cost, held.rate)
            if reason is not None:
                self.metrics.bad_receipts.labels(reason).inc()
                log.error("refused receipt for job 0x%s from node %s: %s", held.job_id.hex(), node, reason)
                signed = None
        if signed is None or signed.receipt.completion_tokens == 0:
            await self.release(held)
            return 0
        r = signed.receipt
        await self.store.meter_hold(held.job_id, held.call.payer, held.call.spender, node, r.prompt_tokens,
                                    r.completion_tokens, r.cost,
                                    signed.signature, first_token_at)
        self.metrics.metered_cost.inc(r.cost)
        return r.cost

    async def charge_posted(self, signed: SignedReceipt, rates: dict[str, ModelRate], registry: NodeRegistry) -> str:
        """Meter a job whose stream was cut from the receipt its node posted: 'metered', 'released' or
        'already_closed'; 401 when the receipt is refused."""
        hold = await self.store.open_hold(signed.receipt.job_id)
        if hold is None:
            return "already_closed"
        rate = rates.get(hold.model)
        if rate is None:
            raise errors.UnknownModel(f"model {hold.model!r} is no longer on the rate card")
        reason = self.check_receipt(signed, signed.node, signed.receipt.job_id, hold.payer, hold.spender,
                                    rate.model_id, hold.request_digest, hold.max_cost, rate)
        if reason is None and signed.node.lower() not in {n.lower() for n in registry.nodes}:
            reason = "unknown_node"
        if reason is not None:
            self.metrics.bad_receipts.labels(reason).inc()
            raise errors.InvalidSignature(f"receipt refused: {reason}", "signature")
        r = signed.receipt
        if r.completion_tokens == 0:
            await self.store.release_hold(r.job_id, hold.payer, hold.spender)
            return "released"
        await self.store.meter_hold(r.job_id, hold.payer, hold.spender, signed.node, r.prompt_tokens,
                                    r.completion_tokens, r.cost,
                                    signed.signature, None)
        self.metrics.metered_cost.inc(r.cost)
        return "metered"
