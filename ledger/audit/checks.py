"""The checks of one settled batch: its served receipts against its on-chain record (runs in a pool process).

For a `BatchSettled` log and the receipts the API serves for it:
- they count `items`, hash (StandardMerkleTree leaves) to its `receiptsRoot`, and each served
  proof holds against that root;
- per (payer, spender) they sum to the batch's `Redeemed` amount, or to a `Shortfall`'s `owed`
  with `Redeemed` = its `paid`; a debt batch's leaves each clear part of an earlier `Shortfall`;
- each metered receipt's EIP-712 `Redemption` digest, recomputed from the served fields, recovers
  to the spender, `cost <= maxCost`, the cost is the published `RateSet` price of its token counts,
  and the node's `UsageReceipt` signature over the job, token counts, cost and request digest
  recovers to a registered node key.

Hashing, leaves, trees and recovery are the core protocol's (`ledger.protocol`), the same code
the service signs and meters with; nothing here knows the service's database or code.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
from eth_utils.address import to_checksum_address

from ledger.audit.history import Pair, SettledBatch
from ledger.domain import model_id, usage_cost
from ledger.protocol.eip712 import receipt_hash, redemption_hash, typed_digest
from ledger.protocol.merkle import build_tree, receipt_leaf, verify_proof
from ledger.protocol.secp256k1 import SignatureError, recover_address

Problem = tuple[str, str | None, str]
"""(check, job id or None, detail): one discrepancy found inside a batch."""


@dataclass(frozen=True)
class BatchContext:
    """What the chain says about one settled batch, and what its receipts are checked against."""

    batch: SettledBatch
    redeemed: dict[Pair, int]
    shortfalls: dict[Pair, tuple[int, int]]
    separators: tuple[bytes, bytes]  # the "Sluice" (requests) and "Sluice Node" (receipts) domains
    nodes: dict[bytes, tuple[int, int | None]]  # NodeRegistry key -> (registered block, retired block or None)
    rates: dict[bytes, list[tuple[int, int, int]]]  # model id -> [(block, input rate, output rate)]


@dataclass
class BatchFindings:
    """The checks of one batch that need nothing from other batches, and what the cross-batch checks need."""

    problems: list[Problem] = field(default_factory=list)
    usage: list[tuple[bytes, bytes, int]] = field(default_factory=list)  # (job, spender, nonce)
    debts: list[tuple[bytes, Pair, int]] = field(default_factory=list)  # (shortfall batch, pair, amount)
    usage_by_pair: dict[Pair, list[int]] = field(default_factory=dict)  # pair -> [receipts, cost]
    debt_by_pair: dict[Pair, int] = field(default_factory=dict)
    signatures: int = 0
    unreceipted: list[tuple[str, str]] = field(default_factory=list)  # (job id, why) charged without a receipt


def unhex(value: str) -> bytes:
    """'0x…' as the API writes it; anything else fails the receipt."""
    return bytes.fromhex(value[2:])


def who(pair: Pair) -> str:
    return f"({to_checksum_address(pair[0])}, {to_checksum_address(pair[1])})"


def signer_of(digest: bytes, signature: bytes) -> bytes | None:
    """The 20-byte address that signed `digest`, or None for a signature the core protocol refuses."""
    try:
        return recover_address(digest, signature)
    except SignatureError:
        return None


def check_batch(context: BatchContext, body: bytes) -> BatchFindings:
    """Every check of one batch's served receipts (`body`: the API's JSON) against its on-chain record."""
    batch = context.batch
    found = BatchFindings()
    problem = found.problems.append
    receipts: list[dict[str, Any]] = orjson.loads(body).get("receipts") or []
    if len(receipts) != batch.items:
        problem(("receipt_count", None, f"the API serves {len(receipts)} receipts, BatchSettled commits to "
                                        f"{batch.items}"))
    owed: dict[Pair, int] = defaultdict(int)
    leaves: list[bytes] = []
    model_ids: dict[str, bytes] = {}
    for receipt in receipts:
        before = len(leaves)
        try:
            _check_receipt(context, receipt, found, owed, leaves, model_ids)
        except (KeyError, TypeError, ValueError, IndexError, AttributeError) as exc:
            problem(("malformed_receipt", str(receipt.get("job_id")) if isinstance(receipt, dict) else None,
                     f"the served receipt cannot be read: {exc.__class__.__name__}: {exc}"))
            if len(leaves) == before:
                leaves.append(b"\x00" * 32)  # no leaf hashes to zero: the root check fails, as it must
    _check_tree(batch, receipts, leaves, problem)
    _check_sums(context, owed, problem)
    return found


def _check_receipt(context: BatchContext, receipt: dict[str, Any], found: BatchFindings, owed: dict[Pair, int],
                   leaves: list[bytes], model_ids: dict[str, bytes]) -> None:
    batch = context.batch
    problem = found.problems.append
    request_sep, receipt_sep = context.separators
    label = str(receipt["job_id"])
    job, payer, spender = unhex(label), unhex(receipt["payer"]), unhex(receipt["spender"])
    cost = int(receipt["cost"])
    pair = (payer, spender)
    leaves.append(receipt_leaf(job, payer, spender, cost))
    owed[pair] += cost
    if receipt.get("kind") == "debt":
        found.debts.append((job, pair, cost))
        found.debt_by_pair[pair] = found.debt_by_pair.get(pair, 0) + cost
        return
    totals = found.usage_by_pair.setdefault(pair, [0, 0])
    totals[0] += 1
    totals[1] += cost
    request = receipt["request"]
    nonce, max_cost = int(request["nonce"]), int(request["max_cost"])
    found.usage.append((job, spender, nonce))
    name = str(receipt["model"])
    model = model_ids.get(name)
    if model is None:
        model = model_ids[name] = model_id(name)
    prompt, completion = int(receipt["prompt_tokens"]), int(receipt["completion_tokens"])
    rates = context.rates.get(model, ())
    if cost not in {usage_cost(prompt, completion, i, o) for b, i, o in rates if b <= batch.block}:
        problem(("cost_not_at_published_rate", label, f"cost {cost} is not {prompt} prompt + {completion} "
                                                      f"completion tokens at any RateSet of {name!r}"))
    node = unhex(receipt["node"])
    standing = context.nodes.get(node)
    if standing is None:
        problem(("unregistered_node", label, f"node {receipt['node']} is not a NodeRegistry key"))
    elif not (standing[0] <= batch.block and (standing[1] is None or batch.block < standing[1])):
        problem(("inactive_node", label, f"node {receipt['node']} was not active in NodeRegistry when batch "
                                         f"settled at block {batch.block} (registered at {standing[0]}, retired at "
                                         f"{standing[1]})"))
    if unhex(request["payer"]) != payer:
        problem(("request_payer", label, "the signed payer is not the receipt's payer"))
    if cost > max_cost:
        problem(("cost_over_max_cost", label, f"cost {cost} is above the signed maxCost {max_cost}"))
    digest = typed_digest(request_sep, redemption_hash(payer, unhex(request["body_hash"]), max_cost, nonce,
                                                       int(request["deadline"])))
    if digest != unhex(request["digest"]):
        problem(("request_digest", label, "the served request digest is not the EIP-712 digest of the served "
                                          "Redemption fields"))
    signer = signer_of(digest, unhex(request["signature"]))
    if signer != spender:
        who_signed = "nothing" if signer is None else to_checksum_address(signer)
        problem(("request_signature", label, f"the request signature recovers to {who_signed}, not the spender"))
    if receipt.get("unreceipted"):
        # Charged fail-closed from what the service relayed (Invariant 9): no node signature to check.
        found.unreceipted.append((label, str(receipt["unreceipted"])))
        found.signatures += 1
        return
    node_digest = typed_digest(receipt_sep, receipt_hash(job, payer, spender, model, prompt, completion, cost, digest))
    node_signer = signer_of(node_digest, unhex(receipt["node_signature"]))
    if node_signer != node:
        who_signed = "nothing" if node_signer is None else to_checksum_address(node_signer)
        problem(("node_signature", label, f"the node receipt signature recovers to {who_signed}, not the node "
                                          f"{to_checksum_address(node)}"))
    found.signatures += 2


def _check_tree(batch: SettledBatch, receipts: list[dict[str, Any]], leaves: list[bytes],
                problem: Callable[[Problem], None]) -> None:
    tree = build_tree(leaves) if leaves else None
    if tree is None or tree.root != batch.root:
        problem(("merkle_root", None, f"the served receipts hash to root "
                                      f"{'none' if tree is None else '0x' + tree.root.hex()}, BatchSettled commits "
                                      f"to 0x{batch.root.hex()}"))
    for receipt, leaf in zip(receipts, leaves, strict=True):
        proof = [unhex(p) for p in receipt.get("merkle_proof") or []]
        # The proof is what an auditor checks one receipt with; equal to ours it needs no hashing.
        if tree is not None and tree.root == batch.root and proof == tree.proof(leaf):
            continue
        if not verify_proof(leaf, proof, batch.root):
            problem(("merkle_proof", str(receipt["job_id"]), "the served proof does not lead from this receipt to "
                                                             "the on-chain receiptsRoot"))


def _check_sums(context: BatchContext, owed: dict[Pair, int], problem: Callable[[Problem], None]) -> None:
    """Per (payer, spender): receipts = Redeemed, or = Shortfall.owed with Redeemed = Shortfall.paid."""
    redeemed, shortfalls = context.redeemed, context.shortfalls
    for pair in sorted(set(owed) | set(redeemed) | set(shortfalls)):
        want, paid = owed.get(pair, 0), redeemed.get(pair, 0)
        short = shortfalls.get(pair)
        if short is not None:
            if short[0] != want:
                problem(("shortfall_owed", None, f"{who(pair)}: receipts sum to {want}, the Shortfall says "
                                                 f"{short[0]} was owed"))
            if short[1] != paid:
                problem(("shortfall_paid", None, f"{who(pair)}: Redeemed {paid}, the Shortfall says {short[1]} "
                                                 "was paid"))
        elif want != paid:
            problem(("redeemed_sum", None, f"{who(pair)}: receipts sum to {want}, Redeemed burned {paid}"))
    if sum(redeemed.values()) != context.batch.total:
        problem(("batch_total", None, f"Redeemed logs sum to {sum(redeemed.values())}, BatchSettled.total is "
                                      f"{context.batch.total}"))
