"""Settlement behaviour: burning usage from escrow per batch within escrow and budget, shortfalls
instead of reverts, one settlement per receipts root, pending withdrawals and budget cuts that do
not escape admitted usage, and receipts proven against the batch's Merkle root."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from eth_utils import keccak

from ledger.chain.client import (
    Budget,
    Ledger,
    PendingWithdrawal,
    Redemption,
    SettlementItem,
    SettleResult,
    Shortfall,
    batch_id_of,
    role_id,
)
from ledger.protocol.merkle import build_tree, receipt_leaf, verify_proof
from ledger.units import ONE_TOKEN
from tests.support.assertions import ZERO_ADDRESS, events, reverts
from tests.support.ledger import advance_time

if TYPE_CHECKING:
    from tests.support.ledger import Actors

ZERO32 = b"\x00" * 32
DAY = 24 * 60 * 60
REPO = Path(__file__).resolve().parents[2]

Receipt = tuple[bytes, str, str, int]  # (jobId, payer, spender, cost)






def job_id(n: int) -> bytes:
    return keccak(text=f"job:{n}")


def root_of(receipts: Sequence[Receipt]) -> bytes:
    return build_tree([receipt_leaf(*r) for r in receipts]).root


def root(label: str) -> bytes:
    return keccak(text=f"root:{label}")


def items_of(receipts: Sequence[Receipt]) -> list[SettlementItem]:
    """One item per (payer, spender), in first-seen order, as the settlement worker aggregates them."""
    totals: dict[tuple[str, str], int] = {}
    for _job, payer, spender, cost in receipts:
        totals[(payer, spender)] = totals.get((payer, spender), 0) + cost
    return [SettlementItem(p, s, a) for (p, s), a in totals.items()]


def settle(
    ledger: Ledger, actors: Actors, label: str, items: Sequence[SettlementItem], receipt_count: int | None = None
) -> SettleResult:
    return ledger.settle_batch(actors.settler, root(label), receipt_count or len(items), items)


def assert_conserved(ledger: Ledger, *accounts: str) -> None:
    """Escrow adds up: the accounts' escrow is all Settlement holds, and totalEscrowed says so."""
    held = ledger.balance_of(ledger.settlement.address)
    assert ledger.total_escrowed() == held
    assert sum(ledger.escrow_of(a) for a in accounts) == held


@pytest.fixture
def payers(ledger: Ledger, escrowed: Actors) -> Actors:
    """`escrowed`, plus the developer allowlisted with 50 tokens in escrow of its own."""
    dev = escrowed.developer
    ledger.set_allowlisted(escrowed.operator, dev.address, True)
    ledger.issue(escrowed.operator, dev.address, 50 * ONE_TOKEN, "INV-dev", into_escrow=True)
    return escrowed


def test_batch_id_is_the_hash_of_the_root(ledger: Ledger) -> None:
    r = root("x")
    assert batch_id_of(r) == keccak(r) == ledger.settlement.functions.batchIdOf(r).call()


# -- redemption from escrow --------------------------------------------------------------------
def test_payer_is_spender(ledger: Ledger, escrowed: Actors) -> None:
    ent = escrowed.enterprise.address
    receipts = [(job_id(1), ent, ent, 10 * ONE_TOKEN), (job_id(2), ent, ent, 20 * ONE_TOKEN)]
    r = root_of(receipts)
    bid = batch_id_of(r)
    supply = ledger.total_supply()

    result = ledger.settle_batch(escrowed.settler, r, 2, items_of(receipts))

    assert result.batch_id == bid
    assert result.total == 30 * ONE_TOKEN
    assert result.redeemed == [Redemption(ent, ent, 30 * ONE_TOKEN)]
    assert result.shortfalls == []
    tx = result.tx
    assert events(ledger.settlement.events.Redeemed, tx) == [
        {"batchId": bid, "payer": ent, "spender": ent, "amount": 30 * ONE_TOKEN}
    ]
    assert events(ledger.settlement.events.BatchSettled, tx) == [
        {"batchId": bid, "receiptsRoot": r, "items": 2, "total": 30 * ONE_TOKEN}
    ]
    assert events(ledger.token.events.Transfer, tx) == [
        {"from": ledger.settlement.address, "to": ZERO_ADDRESS, "value": 30 * ONE_TOKEN}
    ]
    assert ledger.escrow_of(ent) == 570 * ONE_TOKEN
    assert ledger.balance_of(ent) == 400 * ONE_TOKEN  # the wallet is not touched
    assert ledger.total_supply() == supply - 30 * ONE_TOKEN
    assert ledger.is_settled(bid)
    assert ledger.receipts_root_of(bid) == r
    assert_conserved(ledger, ent)


def test_payer_is_not_spender_spends_the_budget(ledger: Ledger, escrowed: Actors) -> None:
    ent, dev = escrowed.enterprise.address, escrowed.developer.address
    ledger.set_budget(escrowed.enterprise, dev, 100 * ONE_TOKEN)

    result = settle(ledger, escrowed, "b", [SettlementItem(ent, dev, 40 * ONE_TOKEN + 1)])

    assert result.redeemed == [Redemption(ent, dev, 40 * ONE_TOKEN + 1)]
    assert result.shortfalls == []
    assert events(ledger.settlement.events.Redeemed, result.tx) == [
        {"batchId": batch_id_of(root("b")), "payer": ent, "spender": dev, "amount": 40 * ONE_TOKEN + 1}
    ]
    assert ledger.budget_of(ent, dev) == Budget(60 * ONE_TOKEN - 1, 0, 0)
    assert ledger.escrow_of(ent) == 560 * ONE_TOKEN - 1
    assert ledger.escrow_of(dev) == 0
    assert_conserved(ledger, ent)


def test_spender_without_a_budget_pays_nothing(ledger: Ledger, escrowed: Actors) -> None:
    ent, dev = escrowed.enterprise.address, escrowed.developer.address
    supply = ledger.total_supply()

    result = settle(ledger, escrowed, "nb", [SettlementItem(ent, dev, ONE_TOKEN)])

    assert result.redeemed == []
    assert result.shortfalls == [Shortfall(ent, dev, ONE_TOKEN, 0)]
    assert result.total == 0
    assert events(ledger.token.events.Transfer, result.tx) == []  # no burn call at all
    assert ledger.total_supply() == supply
    assert ledger.escrow_of(ent) == 600 * ONE_TOKEN


def test_over_budget_pays_the_budget(ledger: Ledger, escrowed: Actors) -> None:
    ent, dev = escrowed.enterprise.address, escrowed.developer.address
    ledger.set_budget(escrowed.enterprise, dev, 100 * ONE_TOKEN)
    bid = batch_id_of(root("f"))

    result = settle(ledger, escrowed, "f", [SettlementItem(ent, dev, 130 * ONE_TOKEN)])

    assert result.redeemed == [Redemption(ent, dev, 100 * ONE_TOKEN)]
    assert events(ledger.settlement.events.Shortfall, result.tx) == [
        {"batchId": bid, "payer": ent, "spender": dev, "owed": 130 * ONE_TOKEN, "paid": 100 * ONE_TOKEN}
    ]
    assert ledger.budget_of(ent, dev) == Budget(0, 0, 0)
    assert ledger.escrow_of(ent) == 500 * ONE_TOKEN


def test_over_escrow_pays_what_it_can_and_settles_the_rest(ledger: Ledger, payers: Actors) -> None:
    ent, dev = payers.enterprise.address, payers.developer.address
    items = [SettlementItem(ent, ent, 5 * ONE_TOKEN), SettlementItem(dev, dev, 80 * ONE_TOKEN)]
    bid = batch_id_of(root("e"))

    result = settle(ledger, payers, "e", items, receipt_count=4)

    assert result.total == 55 * ONE_TOKEN
    assert result.redeemed == [Redemption(ent, ent, 5 * ONE_TOKEN), Redemption(dev, dev, 50 * ONE_TOKEN)]
    assert events(ledger.settlement.events.Shortfall, result.tx) == [
        {"batchId": bid, "payer": dev, "spender": dev, "owed": 80 * ONE_TOKEN, "paid": 50 * ONE_TOKEN}
    ]
    assert events(ledger.settlement.events.BatchSettled, result.tx) == [
        {"batchId": bid, "receiptsRoot": root("e"), "items": 4, "total": 55 * ONE_TOKEN}
    ]
    # One burn for the whole batch.
    assert events(ledger.token.events.Transfer, result.tx) == [
        {"from": ledger.settlement.address, "to": ZERO_ADDRESS, "value": 55 * ONE_TOKEN}
    ]
    assert ledger.escrow_of(dev) == 0
    assert ledger.is_settled(bid)
    assert_conserved(ledger, ent, dev)


def test_escrow_drained_within_one_batch(ledger: Ledger, escrowed: Actors) -> None:
    ent, dev = escrowed.enterprise.address, escrowed.developer.address
    ledger.set_budget(escrowed.enterprise, dev, 1_000 * ONE_TOKEN)
    items = [SettlementItem(ent, ent, 400 * ONE_TOKEN), SettlementItem(ent, dev, 300 * ONE_TOKEN)]

    result = settle(ledger, escrowed, "g", items)

    assert result.redeemed == [Redemption(ent, ent, 400 * ONE_TOKEN), Redemption(ent, dev, 200 * ONE_TOKEN)]
    assert result.shortfalls == [Shortfall(ent, dev, 300 * ONE_TOKEN, 200 * ONE_TOKEN)]
    assert ledger.escrow_of(ent) == 0
    assert ledger.budget_of(ent, dev) == Budget(800 * ONE_TOKEN, 0, 0)  # only what was paid is spent
    assert ledger.balance_of(ent) == 400 * ONE_TOKEN


def test_payer_with_no_escrow_records_only_a_shortfall(ledger: Ledger, funded: Actors) -> None:
    ent = funded.enterprise.address  # 1,000 tokens in its wallet, none in escrow

    result = settle(ledger, funded, "nothing", [SettlementItem(ent, ent, ONE_TOKEN)])

    assert result.total == 0
    assert result.redeemed == []
    assert result.shortfalls == [Shortfall(ent, ent, ONE_TOKEN, 0)]
    assert ledger.balance_of(ent) == 1_000 * ONE_TOKEN  # the wallet is never burned


def test_delisted_payer_escrow_still_pays(ledger: Ledger, escrowed: Actors) -> None:
    ent = escrowed.enterprise.address
    ledger.set_allowlisted(escrowed.operator, ent, False)

    result = settle(ledger, escrowed, "h", [SettlementItem(ent, ent, 7 * ONE_TOKEN)])

    assert result.redeemed == [Redemption(ent, ent, 7 * ONE_TOKEN)]
    assert ledger.escrow_of(ent) == 593 * ONE_TOKEN


# -- the window: pending withdrawals and cuts do not escape admitted usage --------------------------
def test_tokens_waiting_to_leave_still_pay(ledger: Ledger, escrowed: Actors) -> None:
    ent = escrowed.enterprise.address
    ledger.request_withdrawal(escrowed.enterprise, 600 * ONE_TOKEN)
    unlocks_at = ledger.pending_withdrawal_of(ent).unlocks_at

    result = settle(ledger, escrowed, "w", [SettlementItem(ent, ent, 100 * ONE_TOKEN)])

    assert result.redeemed == [Redemption(ent, ent, 100 * ONE_TOKEN)]
    assert ledger.escrow_of(ent) == 500 * ONE_TOKEN
    assert ledger.pending_withdrawal_of(ent) == PendingWithdrawal(500 * ONE_TOKEN, unlocks_at)
    advance_time(ledger, DAY)
    tx = ledger.withdraw(escrowed.enterprise)
    assert events(ledger.settlement.events.Withdrawn, tx) == [{"account": ent, "amount": 500 * ONE_TOKEN}]
    assert ledger.escrow_of(ent) == 0
    assert ledger.balance_of(ent) == 900 * ONE_TOKEN
    assert_conserved(ledger, ent)


def test_a_partial_withdrawal_keeps_its_amount_while_the_rest_pays(ledger: Ledger, escrowed: Actors) -> None:
    ent = escrowed.enterprise.address
    ledger.request_withdrawal(escrowed.enterprise, 100 * ONE_TOKEN)

    settle(ledger, escrowed, "pw", [SettlementItem(ent, ent, 450 * ONE_TOKEN)])

    assert ledger.escrow_of(ent) == 150 * ONE_TOKEN
    assert ledger.pending_withdrawal_of(ent).amount == 100 * ONE_TOKEN


def test_a_pending_cut_does_not_stop_admitted_usage(ledger: Ledger, escrowed: Actors) -> None:
    ent, dev = escrowed.enterprise.address, escrowed.developer.address
    ledger.set_budget(escrowed.enterprise, dev, 100 * ONE_TOKEN)
    ledger.set_budget(escrowed.enterprise, dev, 10 * ONE_TOKEN)
    effective_at = ledger.budget_of(ent, dev).effective_at

    result = settle(ledger, escrowed, "cut", [SettlementItem(ent, dev, 30 * ONE_TOKEN)])

    assert result.redeemed == [Redemption(ent, dev, 30 * ONE_TOKEN)]
    # The cut never gives back what was spent: 10 scheduled, 30 spent, nothing left after it.
    assert ledger.budget_of(ent, dev) == Budget(70 * ONE_TOKEN, 0, effective_at)
    advance_time(ledger, DAY)
    assert ledger.budget_of(ent, dev) == Budget(0, 0, 0)


def test_spend_under_a_pending_cut_shrinks_the_scheduled_amount(ledger: Ledger, escrowed: Actors) -> None:
    ent, dev = escrowed.enterprise.address, escrowed.developer.address
    ledger.set_budget(escrowed.enterprise, dev, 100 * ONE_TOKEN)
    ledger.set_budget(escrowed.enterprise, dev, 50 * ONE_TOKEN)
    effective_at = ledger.budget_of(ent, dev).effective_at

    settle(ledger, escrowed, "cut2", [SettlementItem(ent, dev, 20 * ONE_TOKEN)])

    budget = ledger.budget_of(ent, dev)
    assert budget == Budget(80 * ONE_TOKEN, 30 * ONE_TOKEN, effective_at)
    assert budget.effective == 30 * ONE_TOKEN
    advance_time(ledger, DAY)
    assert ledger.budget_of(ent, dev) == Budget(30 * ONE_TOKEN, 0, 0)


def test_a_matured_cut_limits_settlement(ledger: Ledger, escrowed: Actors) -> None:
    ent, dev = escrowed.enterprise.address, escrowed.developer.address
    ledger.set_budget(escrowed.enterprise, dev, 100 * ONE_TOKEN)
    ledger.set_budget(escrowed.enterprise, dev, 10 * ONE_TOKEN)
    advance_time(ledger, DAY)

    result = settle(ledger, escrowed, "late", [SettlementItem(ent, dev, 30 * ONE_TOKEN)])

    assert result.redeemed == [Redemption(ent, dev, 10 * ONE_TOKEN)]
    assert result.shortfalls == [Shortfall(ent, dev, 30 * ONE_TOKEN, 10 * ONE_TOKEN)]
    assert ledger.budget_of(ent, dev) == Budget(0, 0, 0)


def test_event_signatures_match_the_design(ledger: Ledger, payers: Actors) -> None:
    ent, dev = payers.enterprise.address, payers.developer.address
    items = [SettlementItem(ent, ent, ONE_TOKEN), SettlementItem(dev, dev, 60 * ONE_TOKEN)]

    result = settle(ledger, payers, "sig", items)

    topics = [
        bytes(log["topics"][0]) for log in result.tx.receipt["logs"] if log["address"] == ledger.settlement.address
    ]
    redeemed = keccak(text="Redeemed(bytes32,address,address,uint256)")
    shortfall = keccak(text="Shortfall(bytes32,address,address,uint256,uint256)")
    settled = keccak(text="BatchSettled(bytes32,bytes32,uint256,uint256)")
    assert topics == [redeemed, redeemed, shortfall, settled]
    signatures = {
        "Deposited(address,address,uint256)", "WithdrawalRequested(address,uint256,uint64)",
        "Withdrawn(address,uint256)", "BudgetSet(address,address,uint256,uint64)",
    }
    declared = {
        f"{e['name']}({','.join(i['type'] for i in e['inputs'])})"
        for e in ledger.settlement.abi if e.get("type") == "event"
    }
    assert signatures <= declared


# -- refusals --------------------------------------------------------------------------------
def test_the_same_root_settles_once(ledger: Ledger, escrowed: Actors) -> None:
    ent = escrowed.enterprise.address
    settle(ledger, escrowed, "i", [SettlementItem(ent, ent, ONE_TOKEN)])
    supply = ledger.total_supply()
    bid = batch_id_of(root("i"))

    # Whatever items or count come with it, a root settled once never burns again.
    with reverts("SettlementBatchAlreadySettled", batchId=bid, receiptsRoot=root("i")):
        settle(ledger, escrowed, "i", [SettlementItem(ent, ent, ONE_TOKEN)])
    with reverts("SettlementBatchAlreadySettled", batchId=bid, receiptsRoot=root("i")):
        ledger.settle_batch(escrowed.settler, root("i"), 9, [SettlementItem(ent, ent, 2 * ONE_TOKEN)])
    assert ledger.total_supply() == supply
    assert ledger.escrow_of(ent) == 599 * ONE_TOKEN
    assert ledger.receipts_root_of(bid) == root("i")


def test_invalid_batches_are_refused(ledger: Ledger, escrowed: Actors) -> None:
    ent = escrowed.enterprise.address
    item = [SettlementItem(ent, ent, ONE_TOKEN)]
    r = root("j")

    with reverts("SettlementInvalidBatch", receiptsRoot=ZERO32, receiptCount=1, items=1):
        ledger.settle_batch(escrowed.settler, ZERO32, 1, item)
    with reverts("SettlementInvalidBatch", receiptsRoot=r, receiptCount=0, items=0):
        ledger.settle_batch(escrowed.settler, r, 0, [])
    with reverts("SettlementInvalidBatch", receiptsRoot=r, receiptCount=1, items=2):
        ledger.settle_batch(escrowed.settler, r, 1, item * 2)
    assert not ledger.is_settled(batch_id_of(r))
    assert ledger.escrow_of(ent) == 600 * ONE_TOKEN


def test_only_settler_role_settles(ledger: Ledger, escrowed: Actors) -> None:
    ent = escrowed.enterprise.address
    item = [SettlementItem(ent, ent, ONE_TOKEN)]
    for caller in (escrowed.operator, escrowed.enterprise):
        with reverts("AccessControlUnauthorizedAccount", account=caller.address, neededRole=role_id("SETTLER_ROLE")):
            ledger.settle_batch(caller, root("k"), 1, item)
    assert not ledger.is_settled(batch_id_of(root("k")))

    ledger.grant_role(escrowed.operator, "SETTLER_ROLE", escrowed.other.address)
    result = ledger.settle_batch(escrowed.other, root("k"), 1, item)
    assert result.total == ONE_TOKEN


def test_settlement_without_redeemer_role_reverts_whole(ledger: Ledger, escrowed: Actors) -> None:
    ent = escrowed.enterprise.address
    ledger.revoke_role(escrowed.operator, "REDEEMER_ROLE", ledger.settlement.address)

    with reverts("AccessControlUnauthorizedAccount", account=ledger.settlement.address,
                 neededRole=role_id("REDEEMER_ROLE")):
        settle(ledger, escrowed, "nr", [SettlementItem(ent, ent, ONE_TOKEN)])
    assert not ledger.is_settled(batch_id_of(root("nr")))


@pytest.mark.parametrize("what", ["token", "settlement"])
def test_a_pause_reverts_the_whole_batch_for_a_retry(ledger: Ledger, escrowed: Actors, what: str) -> None:
    ent = escrowed.enterprise.address
    item = [SettlementItem(ent, ent, ONE_TOKEN)]
    pause, unpause = (
        (ledger.pause, ledger.unpause) if what == "token" else (ledger.pause_settlement, ledger.unpause_settlement)
    )
    pause(escrowed.operator)

    with reverts("EnforcedPause"):
        settle(ledger, escrowed, "l", item)
    assert not ledger.is_settled(batch_id_of(root("l")))

    unpause(escrowed.operator)
    assert settle(ledger, escrowed, "l", item).total == ONE_TOKEN


# -- receipts and Merkle proofs -----------------------------------------------------------------
def sample_receipts(actors: Actors) -> list[Receipt]:
    ent, dev, other = actors.enterprise.address, actors.developer.address, actors.other.address
    return [
        (job_id(1), ent, ent, 3 * ONE_TOKEN),
        (job_id(2), ent, dev, 5 * ONE_TOKEN + 17),
        (job_id(3), ent, dev, 1),
        (job_id(4), ent, other, 2 * ONE_TOKEN),
        (job_id(5), ent, ent, 11),
    ]


def verify(ledger: Ledger, bid: bytes, receipt: Receipt, proof: Sequence[bytes]) -> bool:
    jid, payer, spender, cost = receipt
    return bool(ledger.settlement.functions.verifyReceipt(bid, jid, payer, spender, cost, list(proof)).call())


def test_verify_receipt_with_proofs(ledger: Ledger, escrowed: Actors) -> None:
    funded = escrowed
    receipts = sample_receipts(funded)
    ent = funded.enterprise.address
    for spender in (funded.developer.address, funded.other.address):
        ledger.set_budget(funded.enterprise, spender, 10 * ONE_TOKEN)
    tree = build_tree([receipt_leaf(*r) for r in receipts])
    bid = batch_id_of(tree.root)

    result = ledger.settle_batch(funded.settler, tree.root, len(receipts), items_of(receipts))

    assert events(ledger.settlement.events.BatchSettled, result.tx) == [
        {"batchId": bid, "receiptsRoot": tree.root, "items": 5, "total": sum(r[3] for r in receipts)}
    ]
    assert ledger.receipts_root_of(bid) == tree.root
    assert ledger.escrow_of(ent) == 600 * ONE_TOKEN - sum(r[3] for r in receipts)
    for receipt in receipts:
        proof = tree.proof(receipt_leaf(*receipt))
        assert verify_proof(receipt_leaf(*receipt), proof, tree.root)
        assert verify(ledger, bid, receipt, proof)
        jid, payer, spender, cost = receipt
        assert not verify(ledger, bid, (jid, payer, spender, cost + 1), proof)  # tampered cost
        assert not verify(ledger, bid, (jid, payer, ent if spender != ent else funded.other.address, cost), proof)
        assert not verify(ledger, batch_id_of(root("never settled")), receipt, proof)
    # A proof belongs to its own leaf.
    assert not verify(ledger, bid, receipts[0], tree.proof(receipt_leaf(*receipts[1])))


def test_receipt_of_another_batch_does_not_verify(ledger: Ledger, escrowed: Actors) -> None:
    funded = escrowed
    ent = funded.enterprise.address
    first = [(job_id(10), ent, ent, 1), (job_id(11), ent, ent, 2)]
    second = [(job_id(12), ent, ent, 3), (job_id(13), ent, ent, 4)]
    tree_a = build_tree([receipt_leaf(*r) for r in first])
    tree_b = build_tree([receipt_leaf(*r) for r in second])
    ledger.settle_batch(funded.settler, tree_a.root, 2, items_of(first))
    ledger.settle_batch(funded.settler, tree_b.root, 2, items_of(second))

    assert verify(ledger, batch_id_of(tree_b.root), second[0], tree_b.proof(receipt_leaf(*second[0])))
    assert not verify(ledger, batch_id_of(tree_a.root), second[0], tree_b.proof(receipt_leaf(*second[0])))


def test_single_receipt_batch_root_is_its_leaf(ledger: Ledger, escrowed: Actors) -> None:
    funded = escrowed
    ent = funded.enterprise.address
    receipt = (job_id(20), ent, ent, 9)
    tree = build_tree([receipt_leaf(*receipt)])
    assert tree.root == receipt_leaf(*receipt)
    assert tree.proof(tree.root) == []

    ledger.settle_batch(funded.settler, tree.root, 1, items_of([receipt]))
    assert verify(ledger, batch_id_of(tree.root), receipt, [])


def test_receipt_leaf_is_the_contract_leaf(ledger: Ledger, funded: Actors) -> None:
    """receipt_leaf == keccak256(bytes.concat(keccak256(abi.encode(jobId, payer, spender, cost))))."""
    from eth_abi import encode

    for jid, payer, spender, cost in sample_receipts(funded):
        encoded = encode(["bytes32", "address", "address", "uint256"], [jid, payer, spender, cost])
        assert receipt_leaf(jid, payer, spender, cost) == keccak(keccak(encoded))
        assert receipt_leaf(jid, payer.lower(), spender.lower(), cost) == keccak(keccak(encoded))


@pytest.mark.parametrize("size", [1, 5, 8])
def test_build_tree_matches_openzeppelin_standard_merkle_tree(size: int) -> None:
    """Cross-check against @openzeppelin/merkle-tree (the reference implementation) in Node."""
    node = shutil.which("node")
    if node is None or not (REPO / "node_modules" / "@openzeppelin" / "merkle-tree").is_dir():
        pytest.skip("needs node and the @openzeppelin/merkle-tree package")
    receipts = [
        (job_id(100 + i), "0x" + os.urandom(20).hex(), "0x" + os.urandom(20).hex(), i * 10**15 + i) for i in range(size)
    ]
    values = [["0x" + j.hex(), p, s, str(c)] for j, p, s, c in receipts]
    script = """
const {StandardMerkleTree} = require("@openzeppelin/merkle-tree");
const values = JSON.parse(require("fs").readFileSync(0, "utf8"));
const tree = StandardMerkleTree.of(values, ["bytes32", "address", "address", "uint256"]);
console.log(JSON.stringify({root: tree.root, proofs: values.map((_, i) => tree.getProof(i))}));
"""
    out = subprocess.run(
        [node, "-e", script], input=json.dumps(values), capture_output=True, text=True, cwd=REPO, check=True, timeout=30
    )
    reference = json.loads(out.stdout)

    tree = build_tree([receipt_leaf(*r) for r in receipts])
    assert "0x" + tree.root.hex() == reference["root"]
    for receipt, proof in zip(receipts, reference["proofs"], strict=True):
        assert ["0x" + p.hex() for p in tree.proof(receipt_leaf(*receipt))] == proof
