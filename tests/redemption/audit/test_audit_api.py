"""The audit API against a whole running deployment (`tests.support.audit.history`): auditor-only access,
every on-chain event with its position, filters, cursor pagination, CSV, batch and receipt detail with
proofs the contract accepts, and reconciliation."""

from __future__ import annotations

import csv
import io
import json
import time
from collections.abc import Iterator
from typing import Any
from uuid import uuid4

import httpx
import pytest
from eth_account import Account
from eth_account.signers.local import LocalAccount
from eth_hash.auto import keccak

from ledger.protocol.eip712 import Domains, Redemption, typed_digest
from ledger.protocol.secp256k1 import sign_digest
from redemption.audit.models import AuditBatch, AuditReceiptDetail
from tests.support.audit import CHAT, History, audit_client
from tests.support.stack import SMALL_MODEL, Deployed


@pytest.fixture(scope="module")
def auditor(deployed: Deployed, history: History) -> Iterator[httpx.Client]:
    with audit_client(deployed, history.auditor) as client:
        yield client


def all_events(auditor: httpx.Client, **params: Any) -> list[dict[str, Any]]:
    page = auditor.get("/audit/transactions", params={"limit": 1000, **params})
    assert page.status_code == 200, page.text
    assert not page.json()["has_more"]
    rows: list[dict[str, Any]] = page.json()["data"]
    return rows


# -- who may call ------------------------------------------------------------------------------
def test_only_auditor_keys_with_valid_signatures_get_in(deployed: Deployed, history: History) -> None:
    with audit_client(deployed, Account.create()) as stranger:
        refused = stranger.get("/audit/transactions")
    assert refused.status_code == 403 and refused.json()["error"]["code"] == "not_auditor"
    assert refused.json()["error"]["type"] == "permission_error"

    unsigned = httpx.get(deployed.api + "/audit/reconciliation")
    assert unsigned.status_code == 401 and unsigned.json()["error"]["code"] == "missing_signature"

    domains = Domains(deployed.deployment.chain_id, deployed.deployment.contracts["settlement"])

    def signed(max_cost: int = 0, signer: LocalAccount = history.auditor, deadline: int | None = None,
               nonce: int = 7) -> dict[str, str]:
        deadline = int(time.time()) + 60 if deadline is None else deadline
        message = Redemption(history.auditor.address, keccak(b""), max_cost, nonce, deadline)
        signature = sign_digest(bytes(signer.key), typed_digest(domains.redemption, message.struct_hash()))
        return {"Sluice-Payer": history.auditor.address, "Sluice-Max-Cost": str(max_cost), "Sluice-Nonce": str(nonce),
                "Sluice-Deadline": str(deadline), "Sluice-Signature": "0x" + signature.hex()}

    url = deployed.api + "/audit/nodes"
    forged = httpx.get(url, headers=signed(signer=Account.create(), nonce=int(uuid4()) % 2**64))
    assert forged.status_code == 401 and forged.json()["error"]["code"] == "invalid_signature"
    expired = httpx.get(url, headers=signed(deadline=int(time.time()) - 5, nonce=int(uuid4()) % 2**64))
    assert expired.status_code == 401 and expired.json()["error"]["code"] == "signature_expired"
    priced = httpx.get(url, headers=signed(max_cost=1, nonce=int(uuid4()) % 2**64))
    assert priced.status_code == 400 and priced.json()["error"]["code"] == "invalid_header"
    headers = signed(nonce=int(uuid4()) % 2**64)
    assert httpx.get(url, headers=headers).status_code == 200
    replay = httpx.get(url, headers=headers)
    assert replay.status_code == 401 and replay.json()["error"]["code"] == "nonce_replayed"
    nonce = int(headers["Sluice-Nonce"])
    assert deployed.sql("SELECT count(*) FROM call_nonces WHERE signer = %s AND nonce = %s",
                        bytes.fromhex(history.auditor.address[2:]), nonce) == [(1,)]


# -- the history -------------------------------------------------------------------------------
def test_transactions_hold_every_event_with_its_position(deployed: Deployed, auditor: httpx.Client,
                                                         history: History) -> None:
    rows = all_events(auditor)
    chain_logs = sum(len(deployed.ledger.w3.eth.get_logs({
        "address": deployed.ledger.contract(k).address, "fromBlock": deployed.deployment.deploy_block,
        "toBlock": rows[-1]["block"]})) for k in ("token", "sale", "rate_card", "settlement"))
    assert len(rows) == chain_logs
    assert [(r["block"], r["log_index"]) for r in rows] == sorted((r["block"], r["log_index"]) for r in rows)
    for row in rows[:5] + rows[-5:]:
        receipt = deployed.ledger.w3.eth.get_transaction_receipt(row["tx_hash"])
        assert receipt["blockNumber"] == row["block"]
        assert any(int(log["logIndex"]) == row["log_index"] for log in receipt["logs"])
        assert row["timestamp"] and row["block_hash"].startswith("0x")
    settled = [r for r in rows if r["kind"] == "batch"]
    assert [bytes.fromhex(r["args"]["batchId"][2:]) for r in settled] == [*history.batches, history.debt_batch]
    shortfall = [r for r in rows if r["kind"] == "shortfall"]
    assert len(shortfall) == 1 and shortfall[0]["args"]["payer"] == history.short_payer
    assert any(r["kind"] == "role_change" and r["args"]["roleName"] == "AUDITOR_ROLE" for r in rows)


def test_filters_by_kind_account_blocks_and_time(auditor: httpx.Client, history: History) -> None:
    rows = all_events(auditor)
    redemptions = all_events(auditor, kind="redemption")
    assert redemptions == [r for r in rows if r["kind"] == "redemption"] and redemptions
    spoken = all_events(auditor, kind=["rate change", "role_change"])
    assert spoken == [r for r in rows if r["kind"] in ("rate_change", "role_change")]
    mine = all_events(auditor, account=history.short_spender)
    assert mine == [r for r in rows if history.short_spender in r["accounts"]]
    assert {r["event"] for r in mine} >= {"BudgetSet", "Redeemed", "Shortfall"}
    middle = rows[len(rows) // 2]["block"]
    assert all_events(auditor, from_block=middle, to_block=middle + 2) == [
        r for r in rows if middle <= r["block"] <= middle + 2]
    since, until = rows[len(rows) // 3]["timestamp"], rows[2 * len(rows) // 3]["timestamp"]
    window = all_events(auditor, since=since, until=until)
    assert window == [r for r in rows if since <= r["timestamp"] <= until] and window
    bad = auditor.get("/audit/transactions", params={"kind": "refund"})
    assert bad.status_code == 400 and "unknown kind" in bad.json()["error"]["message"]


@pytest.mark.parametrize("order", ["asc", "desc"])
def test_cursor_pages_walk_every_row_once(auditor: httpx.Client, order: str) -> None:
    rows = all_events(auditor, order=order)
    walked: list[dict[str, Any]] = []
    cursor: str | None = None
    while True:
        page = auditor.get("/audit/transactions", params={"limit": 7, "order": order,
                                                          **({"cursor": cursor} if cursor else {})}).json()
        walked.extend(page["data"])
        cursor = page["next_cursor"]
        assert page["has_more"] is (cursor is not None)
        if cursor is None:
            break
    assert walked == rows
    assert auditor.get("/audit/transactions", params={"cursor": "garbage!"}).status_code == 400


def test_csv_export_has_one_row_per_event(auditor: httpx.Client) -> None:
    rows = all_events(auditor, kind="burn")
    export = auditor.get("/audit/transactions", params={"kind": "burn", "format": "csv"})
    assert export.status_code == 200 and export.headers["content-type"].startswith("text/csv")
    table = list(csv.DictReader(io.StringIO(export.text)))
    assert [(int(t["block"]), int(t["log_index"]), t["tx_hash"]) for t in table] == [
        (r["block"], r["log_index"], r["tx_hash"]) for r in rows]
    assert all(t["kind"] == "burn" and t["timestamp"] and int(t["amount"]) > 0 for t in table)
    assert json.loads(table[0]["args"])["to"] == "0x" + "00" * 20
    paged = auditor.get("/audit/transactions", params={"format": "csv", "limit": 2})
    assert len(paged.text.splitlines()) == 3 and paged.headers["Sluice-Next-Cursor"]


# -- batches, receipts, reconciliation ----------------------------------------------------------
def test_a_batch_serves_every_receipt_with_signatures_and_a_proof_the_contract_accepts(
    deployed: Deployed, auditor: httpx.Client, history: History
) -> None:
    for batch_id in history.batches:
        batch = auditor.get(f"/audit/batches/0x{batch_id.hex()}").json()
        AuditBatch.model_validate(batch)  # rendered by SQL: still exactly the documented shape
        assert batch["kind"] == "usage" and batch["status"] == "confirmed"
        assert batch["settlement"]["receipts_root"] == batch["receipts_root"]
        assert batch["settlement"]["items"] == len(batch["receipts"]) == batch["receipt_count"]
        for r in batch["receipts"]:
            job = bytes.fromhex(r["job_id"][2:])
            assert (r["payer"], r["spender"], int(r["cost"])) == history.jobs[job]
            assert int(r["cost"]) <= int(r["max_cost"]) and r["model"] == SMALL_MODEL
            assert set(r["request"]) == {"payer", "body_hash", "max_cost", "nonce", "deadline", "signature", "digest"}
            assert r["request"]["body_hash"] == "0x" + keccak(CHAT.encode()).hex()
            assert len(bytes.fromhex(r["node_signature"][2:])) == 65 and r["node"].startswith("0x")
            proof = [bytes.fromhex(p[2:]) for p in r["merkle_proof"]]
            accepted = deployed.ledger.settlement.functions.verifyReceipt(
                batch_id, job, r["payer"], r["spender"], int(r["cost"]), proof).call()
            assert accepted is True
        one = auditor.get(f"/audit/receipts/{batch['receipts'][0]['job_id']}").json()
        AuditReceiptDetail.model_validate(one)
        assert one["receipt"] == batch["receipts"][0]
        assert one["settlement"] == batch["settlement"]
    short = auditor.get(f"/audit/batches/0x{history.batches[1].hex()}").json()
    assert [s["payer"] for s in short["shortfalls"]] == [history.short_payer]
    debt = auditor.get(f"/audit/batches/0x{history.debt_batch.hex()}").json()
    AuditBatch.model_validate(debt)
    assert debt["kind"] == "debt" and len(debt["receipts"]) == 1
    assert debt["receipts"][0]["debt"]["batch_id"] == "0x" + history.batches[1].hex()
    assert auditor.get("/audit/batches/0x" + "ab" * 32).json()["error"]["code"] == "not_found"
    assert auditor.get("/audit/receipts/0x" + "ab" * 32).status_code == 404
    assert auditor.get("/audit/batches/0x1234").status_code == 400


def test_reconciliation_balances_metered_settled_and_redeemed(auditor: httpx.Client, history: History) -> None:
    report = auditor.get("/audit/reconciliation").json()
    assert report["balanced"] is True
    rows = {(r["payer"], r["spender"]): r for r in report["rows"]}
    for (payer, spender) in {(p, s) for p, s, _c in history.jobs.values()}:
        metered = sum(c for p, s, c in history.jobs.values() if (p, s) == (payer, spender))
        row = rows[(payer, spender)]
        assert int(row["metered"]) == int(row["settled"]) == metered and row["difference"] == "0"
    short = rows[(history.short_payer, history.short_spender)]
    assert short["shortfalls"] == 1 and int(short["shortfall_unpaid"]) == int(short["debt_cleared"]) > 0
    assert int(short["redeemed_usage"]) + int(short["shortfall_unpaid"]) == int(short["settled"])
    assert short["outstanding_debt"] == "0"
    assert int(report["totals"]["metered"]) == sum(c for _p, _s, c in history.jobs.values())
    export = auditor.get("/audit/reconciliation", params={"format": "csv", "account": history.short_payer})
    assert [r["payer"] for r in csv.DictReader(io.StringIO(export.text))] == [history.short_payer]
