"""Metering: a held call is charged from the signed receipt of the node it was sent to, and fails closed.

A receipt is accepted when its EIP-712 signature recovers to the node the job was dispatched to
(recorded on the hold), its fields match the held call, its model tokens stay within the ticket's
`max_tokens` and the hold's prompt bound, and its cost follows the on-chain rates and stays within
`Sluice-Max-Cost` (Invariant 8). A call that produced output but has no acceptable receipt is charged
from what the service itself relayed, capped by its hold, and its usage record says why (`unreceipted`,
Invariant 9); one that produced nothing is released. Receipts arrive in the node's answer
(`Dispatcher`), or, for a stream cut short, posted to `/internal/receipts` (`charge_posted`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from inference_node.protocol import SignedReceipt
from ledger.domain import usage_cost
from ledger.errors import LedgerError
from ledger.protocol.eip712 import Domains, typed_digest
from ledger.protocol.secp256k1 import SignatureError, recover_address
from redemption import errors
from redemption.auth import VerifiedCall
from redemption.metrics import ServiceMetrics
from redemption.pricing import CostPlan
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


@dataclass(frozen=True, slots=True)
class Relayed:
    """What the service itself saw pass: the node's reported usage, else the streamed chunks it counted."""

    prompt_tokens: int | None  # None: the node reported none
    completion_tokens: int

    def charge(self, rate: ModelRate, max_tokens: int, prompt_bound: int, hold: int) -> tuple[int, int, int]:
        """(prompt, completion, cost) charged fail-closed: within the ticket's bounds and the hold."""
        prompt = prompt_bound if self.prompt_tokens is None else min(self.prompt_tokens, prompt_bound)
        completion = min(self.completion_tokens, max_tokens)
        return prompt, completion, min(usage_cost(prompt, completion, rate.input_rate, rate.output_rate), hold)


class ReceiptRejected(LedgerError):
    """A posted receipt the meter does not take; carries the API error to answer with."""

    def __init__(self, error: errors.ApiError) -> None:
        super().__init__(error.message)
        self.error = error


class Meter:
    def __init__(self, *, store: Store, domains: Domains, metrics: ServiceMetrics) -> None:
        self.store = store
        self.domains = domains
        self.metrics = metrics

    def check_receipt(self, signed: SignedReceipt, node: str, job_id: bytes, payer: str, spender: str,
                      model_id: bytes, request_digest: bytes, max_cost: int, rate: ModelRate, max_tokens: int,
                      prompt_bound: int) -> str | None:
        """None when the receipt is good, else the reason it is refused (`node` is the one dispatched to)."""
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
        if r.completion_tokens > max_tokens:
            return "over_max_tokens"
        if r.prompt_tokens > prompt_bound:
            return "over_prompt_bound"
        return None

    async def ended(self, held: HeldCall, relayed: Relayed | None = None) -> None:
        """The service stopped relaying `held` unmetered: its hold may expire once its lifetime is over, and is
        then charged from `relayed` (fail closed) unless an acceptable receipt came first."""
        if relayed is not None:
            await self.relayed_after_cut(held, relayed)
        await self.store.call_ended(held.job_id)

    async def release(self, held: HeldCall) -> None:
        """Close the hold uncharged: the call produced nothing billable."""
        await self.store.release_hold(held.job_id, held.call.payer, held.call.spender)

    async def charge(self, held: HeldCall, node: str, signed: SignedReceipt | None,
                     first_token_at: datetime | None, relayed: Relayed | None) -> int:
        """Meter the call from its receipt, else fail closed from `relayed`; returns the cost charged."""
        reason = "no_receipt"
        if signed is not None:
            refusal = self.check_receipt(signed, node, held.job_id, held.call.payer, held.call.spender,
                                         held.rate.model_id, held.call.digest, held.call.max_cost, held.rate,
                                         held.plan.max_tokens, held.plan.prompt_bound)
            if refusal is None:
                return await self._meter(held.job_id, held.call.payer, held.call.spender, node, signed,
                                         first_token_at)
            self.metrics.bad_receipts.labels(refusal).inc()
            log.error("refused receipt for job 0x%s from node %s: %s", held.job_id.hex(), node, refusal)
            reason = f"receipt_refused:{refusal}"
        if relayed is None or relayed.completion_tokens == 0:
            await self.release(held)
            return 0
        prompt, completion, cost = relayed.charge(held.rate, held.plan.max_tokens, held.plan.prompt_bound,
                                                  held.plan.hold)
        closed = await self.store.meter_hold(held.job_id, held.call.payer, held.call.spender, node, prompt,
                                             completion, cost, b"", first_token_at, reason)
        if not closed:
            return await self.store.metered_cost(held.job_id)
        self.unreceipted(held.job_id, node, reason, cost)
        return cost

    def unreceipted(self, job_id: bytes, node: str, reason: str, cost: int) -> None:
        """Count and announce a call charged without an acceptable receipt: the operator's nodes must be looked at."""
        self.metrics.unreceipted.labels(reason.split(":")[0]).inc()
        self.metrics.metered_cost.inc(cost)
        log.error("ALERT unreceipted charge: job 0x%s on node %s charged %d base units from relayed usage (%s)",
                  job_id.hex(), node, cost, reason)

    async def _meter(self, job_id: bytes, payer: str, spender: str, node: str, signed: SignedReceipt,
                     first_token_at: datetime | None) -> int:
        r = signed.receipt
        if r.completion_tokens == 0:
            await self.store.release_hold(job_id, payer, spender)
            return 0
        closed = await self.store.meter_hold(job_id, payer, spender, node, r.prompt_tokens, r.completion_tokens,
                                             r.cost, signed.signature, first_token_at)
        if not closed:
            # Closed meanwhile (a posted receipt, or expiry): what it was charged then is what it costs.
            return await self.store.metered_cost(job_id)
        self.metrics.metered_cost.inc(r.cost)
        return r.cost

    async def relayed_after_cut(self, held: HeldCall, relayed: Relayed) -> None:
        """A relay that ended before its receipt: keep what it relayed for a fail-closed charge at expiry."""
        if relayed.completion_tokens == 0:
            return
        prompt, completion, cost = relayed.charge(held.rate, held.plan.max_tokens, held.plan.prompt_bound,
                                                  held.plan.hold)
        await self.store.record_relayed(held.job_id, prompt, completion, cost)

    async def charge_posted(self, signed: SignedReceipt, rates: dict[str, ModelRate],
                            standing: Callable[[str], str | None]) -> str:
        """Meter a job from the receipt its node posted: 'metered' or 'released'; raises ReceiptRejected.

        `standing(node)` is 'active', 'retired' or None (not in NodeRegistry). Whether a hold exists is
        told only to the node it was dispatched to.
        """
        r = signed.receipt
        try:
            signer = "0x" + recover_address(typed_digest(self.domains.receipt, r.struct_hash()), signed.signature).hex()
        except SignatureError:
            raise self._refused("signature") from None
        if signer != signed.node.lower():
            raise self._refused("signer")
        status = standing(signer)
        if status != "active":
            self.metrics.bad_receipts.labels("node_" + (status or "unregistered")).inc()
            code = "node_retired" if status == "retired" else "node_not_registered"
            raise ReceiptRejected(errors.NodeRefused(
                f"node {signed.node} is {'retired' if status == 'retired' else 'not registered'} in NodeRegistry; "
                "its receipts meter nothing", "node", code=code))
        hold = await self.store.open_hold(r.job_id)
        if hold is None or hold.node != signer or hold.max_tokens is None or hold.prompt_bound is None:
            self.metrics.bad_receipts.labels("not_accepted").inc()
            raise ReceiptRejected(errors.ReceiptNotAccepted(
                "this receipt meters nothing: no job dispatched to this node is waiting for it (already metered, "
                "released, or never sent here)", "job_id"))
        rate = rates.get(hold.model)
        if rate is None:
            raise ReceiptRejected(errors.UnknownModel(f"model {hold.model!r} is no longer on the rate card"))
        reason = self.check_receipt(signed, signer, r.job_id, hold.payer, hold.spender, rate.model_id,
                                    hold.request_digest, hold.max_cost, rate, hold.max_tokens, hold.prompt_bound)
        if reason is not None:
            await self.store.refuse_receipt(r.job_id, reason)
            raise self._refused(reason)
        cost = await self._meter(r.job_id, hold.payer, hold.spender, signer, signed, None)
        return "metered" if cost else "released"

    def _refused(self, reason: str) -> ReceiptRejected:
        self.metrics.bad_receipts.labels(reason).inc()
        return ReceiptRejected(errors.ReceiptRefused(
            f"receipt refused ({reason}): it must be signed by the node the job was sent to, match the job, stay "
            "within the ticket's max_tokens and the prompt bound, and cost what the on-chain rates say; the call "
            "is charged from what the service relayed instead", "receipt"))
