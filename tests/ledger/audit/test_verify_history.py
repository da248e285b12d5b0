"""`ledger.audit.verifier.verify` against the audit API of a whole running deployment
(`tests.support.audit.history`): it passes on the honest history, with every count, and names each
check a tampered receipt breaks."""

from __future__ import annotations

from typing import Any

import pytest
from eth_account import Account

from ledger.audit.api import AuditApi
from ledger.audit.verifier import VerifyReport, verify
from ledger.protocol.secp256k1 import sign_digest
from tests.support.audit import History, execute, first_job
from tests.support.stack import Deployed


def run_verify(deployed: Deployed, history: History, workers: int = 1) -> VerifyReport:
    api = AuditApi(deployed.api, history.auditor)
    try:
        return verify(deployed.settings.effective_rpc_url, api, workers=workers)
    finally:
        api.close()


def beyond_the_shortfall(report: Any, history: History) -> list[Any]:
    """The discrepancies other than the one Shortfall the history has on purpose (its second batch)."""
    late = "0x" + history.batches[1].hex()
    return [d for d in report.discrepancies if not (d.check == "shortfall" and d.batch == late)]


# -- the honest history ---------------------------------------------------------------------
def test_verify_passes_on_the_honest_history_but_for_its_shortfall(deployed: Deployed, history: History) -> None:
    report = run_verify(deployed, history, workers=2)  # the process pool, as the CLI runs it
    # Invariant 7: a Shortfall is the operator's failure (here a batch that landed after the unlock period).
    assert [(d.check, d.batch) for d in report.discrepancies] == [("shortfall", "0x" + history.batches[1].hex())]
    assert beyond_the_shortfall(report, history) == []
    assert (report.batches, report.receipts, report.debt_receipts) == (3, len(history.jobs), 1)
    assert report.signatures == 2 * len(history.jobs) and report.node_keys >= 1
    assert report.total_supply == report.minted - report.burned == deployed.ledger.total_supply()


# -- tampering --------------------------------------------------------------------------------
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
    job = first_job(deployed, history)
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
    found = beyond_the_shortfall(report, history)
    assert {d.check for d in found} == expected, found
    assert {d.batch for d in found} == {"0x" + history.batches[0].hex()}
    assert all(d.job in (None, "0x" + job.hex()) for d in found)
