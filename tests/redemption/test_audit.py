"""The audit API and `sluice audit` against a whole running deployment: real signed calls metered by the
service and its nodes, settled on chain (two usage batches, one with a shortfall, and the debt batch
that clears it), indexed by the service's own indexer thread; then auditor-only access, filters,
pagination, CSV, batch and receipt detail, reconciliation, and `verify` on the honest history and on
each kind of tampering with the stored receipts."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any
from uuid import uuid4

import httpx
import psycopg
import pytest
from eth_account import Account
from eth_account.signers.local import LocalAccount
from eth_hash.auto import keccak
from typer.testing import CliRunner

from ledger.audit.api import AuditApi
from ledger.audit.verifier import VerifyReport, verify
from ledger.cli.app import app as cli
from ledger.keys import embedded_account
from ledger.polling import poll_until
from ledger.protocol.eip712 import Domains, Redemption, typed_digest
from ledger.protocol.secp256k1 import sign_digest
from ledger.settlement.debts import clear_debts
from ledger.settlement.settings import SettlementSettings
from ledger.settlement.settler import Settler
from ledger.settlement.store import Database, cut_batch
from ledger.units import ONE_TOKEN
from redemption.audit.service import AuditBatch, AuditReceiptDetail
from redemption.sdk import SluiceAuth
from tests.support.stack import SMALL_MODEL, Deployed, with_database

CHAT = json.dumps({"model": SMALL_MODEL, "messages": [{"role": "user", "content": "meter me"}], "max_tokens": 6})


@dataclass
class History:
    auditor: LocalAccount
    batches: list[bytes]
    debt_batch: bytes
    jobs: dict[bytes, tuple[str, str, int]] = field(default_factory=dict)  # job -> (payer, spender, cost)
    short_payer: str = ""
    short_spender: str = ""


def call(deployed: Deployed, key: LocalAccount, payer: LocalAccount, history: History) -> None:
    auth = SluiceAuth(key, payer=payer.address, max_cost=10**17)
    response = httpx.post(deployed.api + "/v1/chat/completions", content=CHAT, auth=auth, timeout=30,
                          headers={"content-type": "application/json"})
    assert response.status_code == 200, response.text
    job = bytes.fromhex(response.headers["Sluice-Job-Id"][2:])
    history.jobs[job] = (payer.address, key.address, int(response.headers["Sluice-Cost"]))


def settle_waiting(deployed: Deployed, settler: Settler) -> bytes:
    with psycopg.connect(deployed.db_url, autocommit=True) as conn:
        cut = cut_batch(conn, 500, 400)
    assert cut is not None
    assert settler.settle(cut.batch_id) == "confirmed"
    return cut.batch_id


def wait_indexed(deployed: Deployed) -> None:
    head = deployed.ledger.w3.eth.block_number
    poll_until(lambda: bool(deployed.sql("SELECT 1 FROM indexer_cursor WHERE block >= %s", head)), 30,
               f"the service's indexer reaching block {head}")


@pytest.fixture(scope="module")
def history(deployed: Deployed) -> History:
    ledger, operator = deployed.ledger, deployed.operator
    auditor: LocalAccount = Account.create()
    ledger.grant_role(operator, "AUDITOR_ROLE", auditor.address)
    settings = SettlementSettings(home=deployed.settings.home, rpc_url=deployed.settings.effective_rpc_url,
                                  database_url=deployed.db_url)
    settler = Settler(ledger, embedded_account(1), Database(deployed.db_url), settings)
    made = History(auditor, [], b"")
    big, small, sink = deployed.fund(10), deployed.fund(1), deployed.fund(0)
    dev_a, dev_b = deployed.developer(big, 5 * ONE_TOKEN), deployed.developer(big, 5 * ONE_TOKEN)
    dev_c = deployed.developer(small, ONE_TOKEN)
    deployed.wait_mirrored()
    for key in (dev_a, dev_a, dev_a, big, big):
        call(deployed, key, big, made)
    made.batches.append(settle_waiting(deployed, settler))
    for key, payer in ((dev_b, big), (dev_b, big), (dev_c, small)):
        call(deployed, key, payer, made)
    owed = sum(cost for payer, _s, cost in made.jobs.values() if payer == small.address)
    ledger.transfer(small, sink.address, ONE_TOKEN - owed // 2)  # the payer is short when its batch settles
    made.batches.append(settle_waiting(deployed, settler))
    made.short_payer, made.short_spender = small.address, dev_c.address
    ledger.mint(operator, small.address, ONE_TOKEN)  # tops up, so the operator clears the debt
    cleared = clear_debts(settler, small.address, timeout=30)
    assert cleared is not None and cleared.paid == owed - owed // 2
    made.debt_batch = cleared.batch_id
    wait_indexed(deployed)
    return made


def execute(deployed: Deployed, query: str, *params: Any) -> None:
    with psycopg.connect(deployed.db_url, autocommit=True) as conn:
        conn.execute(query.encode(), params)


def audit_client(deployed: Deployed, key: LocalAccount) -> httpx.Client:
    return httpx.Client(base_url=deployed.api, auth=SluiceAuth(key, max_cost=0), timeout=30)


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


def run_verify(deployed: Deployed, history: History, workers: int = 1) -> VerifyReport:
    api = AuditApi(deployed.api, history.auditor)
    try:
        return verify(deployed.settings.effective_rpc_url, api, workers=workers)
    finally:
        api.close()


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
    assert {r["event"] for r in mine} >= {"Approval", "Redeemed", "Shortfall"}
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


# -- sluice audit ------------------------------------------------------------------------------
def test_verify_passes_on_the_honest_history(deployed: Deployed, history: History) -> None:
    report = run_verify(deployed, history, workers=2)  # the process pool, as the CLI runs it
    assert report.discrepancies == []
    assert (report.batches, report.receipts, report.debt_receipts) == (3, len(history.jobs), 1)
    assert report.signatures == 2 * len(history.jobs) and report.node_keys >= 1
    assert report.total_supply == report.minted - report.burned == deployed.ledger.total_supply()
    result = CliRunner().invoke(cli, ["audit", "verify", "--rpc", deployed.settings.effective_rpc_url,
                                      "--api", deployed.api, "--key", "0x" + bytes(history.auditor.key).hex(),
                                      "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["ok"] is True


def _first_job(deployed: Deployed, history: History) -> bytes:
    """A receipt of the first usage batch (whose payers all paid in full)."""
    rows = deployed.sql("SELECT job_id FROM usage_records WHERE batch_id = %s ORDER BY job_id LIMIT 1",
                        history.batches[0])
    return bytes(rows[0][0])


TAMPERINGS: dict[str, tuple[str, set[str]]] = {
    "tokens": ("UPDATE usage_records SET completion_tokens = completion_tokens + 1 WHERE job_id = %s",
               {"node_signature", "cost_not_at_published_rate"}),
    "cost": ("UPDATE usage_records SET cost = cost - 1 WHERE job_id = %s",
             {"merkle_root", "merkle_proof", "redeemed_sum", "node_signature", "cost_not_at_published_rate"}),
    "request_signature": ("UPDATE usage_records SET request_signature = %s WHERE job_id = %s", {"request_signature"}),
    "missing_receipt": ("UPDATE usage_records SET batch_id = NULL WHERE job_id = %s",
                        {"receipt_count", "merkle_root", "redeemed_sum"}),
}


@pytest.mark.parametrize("tampering", list(TAMPERINGS))
def test_verify_catches_a_tampered_receipt(deployed: Deployed, history: History, tampering: str) -> None:
    job = _first_job(deployed, history)
    before = deployed.sql("SELECT completion_tokens, cost, request_signature, batch_id FROM usage_records"
                          " WHERE job_id = %s", job)[0]
    sql, expected = TAMPERINGS[tampering]
    if tampering == "request_signature":
        digest = deployed.sql("SELECT request_digest FROM usage_records WHERE job_id = %s", job)[0][0]
        execute(deployed, sql, sign_digest(bytes(Account.create().key), bytes(digest)), job)
    else:
        execute(deployed, sql, job)
    try:
        report = run_verify(deployed, history)
    finally:
        execute(deployed, "UPDATE usage_records SET completion_tokens = %s, cost = %s, request_signature = %s,"
                     " batch_id = %s WHERE job_id = %s", *before, job)
    found = {d.check for d in report.discrepancies}
    assert found == expected, report.discrepancies
    assert {d.batch for d in report.discrepancies} == {"0x" + history.batches[0].hex()}
    assert all(d.job in (None, "0x" + job.hex()) for d in report.discrepancies)


def test_verify_cli_exits_1_and_prints_every_discrepancy(deployed: Deployed, history: History) -> None:
    job = _first_job(deployed, history)
    execute(deployed, "UPDATE usage_records SET prompt_tokens = prompt_tokens + 3 WHERE job_id = %s", job)
    try:
        result = CliRunner().invoke(cli, ["audit", "verify", "--rpc", deployed.settings.effective_rpc_url,
                                          "--api", deployed.api, "--key", "0x" + bytes(history.auditor.key).hex()],
                                    env={"COLUMNS": "200"})
    finally:
        execute(deployed, "UPDATE usage_records SET prompt_tokens = prompt_tokens - 3 WHERE job_id = %s", job)
    assert result.exit_code == 1, result.output
    assert "node_signature" in result.output and "discrepancies" in result.output


def test_history_cli_prints_the_redemptions(deployed: Deployed, history: History) -> None:
    key = "0x" + bytes(history.auditor.key).hex()
    shown = CliRunner().invoke(cli, ["audit", "history", "--api", deployed.api, "--key", key, "--kind", "redemption",
                                     "--json", "--all", "--limit", "2"])
    assert shown.exit_code == 0, shown.output
    rows = json.loads(shown.stdout)["data"]
    assert len(rows) == 5 and all(r["event"] == "Redeemed" for r in rows)  # 2 + 2 pairs, then the debt
    table = CliRunner().invoke(cli, ["audit", "history", "--api", deployed.api, "--key", key, "--kind", "shortfall"],
                               env={"COLUMNS": "200"})
    assert table.exit_code == 0 and "Shortfall" in table.output
    refused = CliRunner().invoke(cli, ["audit", "history", "--api", deployed.api, "--key",
                                       "0x" + bytes(Account.create().key).hex()])
    assert refused.exit_code == 1 and "not_auditor" in refused.output


def test_index_cli_backfills_a_fresh_database_to_the_same_rows(
    deployed: Deployed, history: History, postgres_url: str, make_db: Callable[[], str]
) -> None:
    db_url = make_db()
    env = {**os.environ, "SLUICE_HOME": str(deployed.settings.home), "RPC_URL": deployed.settings.effective_rpc_url,
           "DATABASE_URL": db_url}
    out = subprocess.run([sys.executable, "-c", "from ledger.cli.app import main; main()", "audit", "index", "--json"],
                         env=env,
                         capture_output=True, text=True, timeout=60, check=False)
    assert out.returncode == 0, out.stderr
    figures = json.loads(out.stdout)
    with psycopg.connect(db_url) as conn:
        fresh = conn.execute("SELECT block, log_index, tx_hash, args FROM chain_events"
                             " WHERE block <= %s ORDER BY 1, 2", (figures["block"],)).fetchall()
    served = deployed.sql("SELECT block, log_index, tx_hash, args FROM chain_events WHERE block <= %s ORDER BY 1, 2",
                          figures["block"])
    assert fresh == served and figures["events"] == len(fresh) and figures["lag"] == 0


@pytest.fixture
def make_db(postgres_url: str) -> Iterator[Callable[[], str]]:
    made: list[str] = []

    def make() -> str:
        name = f"audit_index_{uuid4().hex[:10]}"
        with psycopg.connect(postgres_url, autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name}".encode())
        made.append(name)
        return with_database(postgres_url, name)

    yield make
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        for name in made:
            conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)".encode())
