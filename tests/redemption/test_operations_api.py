"""GET /v1/operations against a whole deployment of its own (module-scoped, so every figure is exact):
the operator's signed read of the settlement backlog, totals, lag, debts, nodes and workers."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from eth_account import Account
from eth_account.signers.local import LocalAccount

from ledger.keys import embedded_account
from ledger.settlement.settings import SettlementSettings
from ledger.settlement.settler import Settler
from ledger.settlement.store import Database
from ledger.units import ONE_TOKEN
from redemption.sdk import reader_auth
from tests.support.audit import CHAT, History, call, settle_waiting
from tests.support.stack import Deployed


def read(deployed: Deployed, key: LocalAccount) -> httpx.Response:
    return httpx.get(deployed.api + "/v1/operations", auth=reader_auth(key), timeout=30)


def figures(deployed: Deployed, key: LocalAccount) -> dict[str, Any]:
    response = read(deployed, key)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def test_the_operator_reads_backlog_settlement_nodes_and_workers(deployed: Deployed) -> None:
    enterprise = deployed.fund(10)
    developer = deployed.developer(enterprise, 5 * ONE_TOKEN)
    deployed.wait_mirrored()
    made = History(Account.create(), [], b"")
    call(deployed, developer, enterprise, made)
    (cost,) = [c for _p, _s, c in made.jobs.values()]
    assert cost > 0 and CHAT
    deployed.sql("INSERT INTO settlement_workers (name, pid, concurrency, beat) VALUES ('w1@host', 4242, 2, true)"
                 " RETURNING 1")

    before = figures(deployed, deployed.operator)
    backlog = before["backlog"]
    assert backlog["oldest_unsettled_seconds"] is not None and 0 <= backlog["oldest_unsettled_seconds"] < 60
    assert {**backlog, "oldest_unsettled_seconds": None} == {
        "records": 1, "amount": str(cost), "oldest_unsettled_seconds": None, "waiting_for_cut": 1,
        "open_batches": {}, "open_batch_records": {}, "unreleased_batches": 0}
    assert before["settled"] == {"confirmed_batches": {}, "records": 0, "items": 0, "gas_used": 0, "failures": 0,
                                 "last_confirmed_at": None}
    assert before["lag"] == {"window_seconds": 300, "batches": 0, "p50_seconds": None, "p99_seconds": None}
    assert before["debts"] == {"outstanding": 0, "amount": "0", "suspended_accounts": 0}
    nodes = deployed.sql("SELECT '0x' || encode(node, 'hex'), url, tier, region, capacity FROM nodes"
                         " WHERE NOT retired ORDER BY tier, url")
    assert len(nodes) == 2
    assert [{k: n[k] for k in ("node", "url", "tier", "region", "capacity", "queue_depth", "running", "health",
                               "healthy")} for n in before["nodes"]] == [
        {"node": node, "url": url, "tier": tier, "region": region, "capacity": capacity, "queue_depth": 0,
         "running": 0, "health": "ok", "healthy": True} for node, url, tier, region, capacity in nodes]
    assert all(0 <= n["heartbeat_age_seconds"] < 15 for n in before["nodes"])
    (worker,) = before["workers"]
    assert {**worker, "heartbeat_age_seconds": 0} == {"name": "w1@host", "pid": 4242, "concurrency": 2,
                                                       "beat": True, "heartbeat_age_seconds": 0, "up": True}

    settings = SettlementSettings(home=deployed.settings.home, rpc_url=deployed.settings.effective_rpc_url,
                                  database_url=deployed.db_url)
    settle_waiting(deployed, Settler(deployed.ledger, embedded_account(1), Database(deployed.db_url), settings))
    (gas,) = deployed.sql("SELECT gas_used FROM settlement_batches WHERE status = 'confirmed'")[0]
    after = figures(deployed, deployed.operator)
    assert after["backlog"]["records"] == 0 and after["backlog"]["amount"] == "0"
    assert after["backlog"]["oldest_unsettled_seconds"] is None and after["backlog"]["waiting_for_cut"] == 0
    assert {**after["settled"], "last_confirmed_at": None} == {
        "confirmed_batches": {"usage": 1}, "records": 1, "items": 1, "gas_used": int(gas), "failures": 0,
        "last_confirmed_at": None}
    assert after["lag"]["batches"] == 1 and 0 <= after["lag"]["p50_seconds"] == after["lag"]["p99_seconds"] < 60


def test_only_the_operator_and_auditors_read_operations(deployed: Deployed) -> None:
    enterprise = deployed.fund(10)
    developer = deployed.developer(enterprise, ONE_TOKEN)
    auditor = Account.create()
    deployed.ledger.grant_role(deployed.operator, "AUDITOR_ROLE", auditor.address)
    assert read(deployed, auditor).status_code == 200
    for key in (developer, enterprise, Account.create()):  # a developer key, a payer, a stranger
        refused = read(deployed, key)
        assert refused.status_code == 403, (key.address, refused.text)
        error = refused.json()["error"]
        assert error["code"] == "not_operator" and error["type"] == "permission_error"
        assert error["message"].startswith(f"{key.address.lower()} holds neither AUDITOR_ROLE nor the operator's"), \
            error["message"]
    unsigned = httpx.get(deployed.api + "/v1/operations", timeout=30)
    assert unsigned.status_code == 401 and unsigned.json()["error"]["code"] == "missing_signature"


@pytest.fixture(autouse=True)
def _no_faults(deployed: Deployed) -> None:
    deployed.clear_faults()
