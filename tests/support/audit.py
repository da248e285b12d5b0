"""An audited history for the audit API, verifier and `sluice audit` tests, made by the real thing.

On a whole running deployment (`tests.support.stack.deployed`): signed calls metered by the service
and its nodes, settled on chain in two usage batches (the second with a shortfall) and the debt batch
that clears it, indexed by the service's own indexer thread, and an auditor key holding AUDITOR_ROLE.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import httpx
import psycopg
import pytest
from eth_account import Account
from eth_account.signers.local import LocalAccount

from ledger.keys import embedded_account
from ledger.polling import poll_until
from ledger.settlement.debts import clear_debts
from ledger.settlement.settings import SettlementSettings
from ledger.settlement.settler import Settler
from ledger.settlement.store import Database, cut_batch
from ledger.units import ONE_TOKEN
from redemption.sdk import SluiceAuth
from tests.support import escrow
from tests.support.stack import SMALL_MODEL, Deployed

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
    # The operator's failure Invariant 7 guards against: the batch lands only after the unlock period, and
    # the payer took all but half of what it owes out of escrow by then, so the batch is short.
    ledger.request_withdrawal(small, ONE_TOKEN - owed // 2)
    escrow.advance_time(ledger, ledger.unlock_period() + 1)
    ledger.withdraw(small)
    ledger.transfer(small, sink.address, ONE_TOKEN - owed // 2)
    made.batches.append(settle_waiting(deployed, settler))
    made.short_payer, made.short_spender = small.address, dev_c.address
    escrow.deposit(ledger, operator, small, ONE_TOKEN)  # tops up, so the operator clears the debt
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


def first_job(deployed: Deployed, history: History) -> bytes:
    """A receipt of the first usage batch (whose payers all paid in full)."""
    rows = deployed.sql("SELECT job_id FROM usage_records WHERE batch_id = %s ORDER BY job_id LIMIT 1",
                        history.batches[0])
    return bytes(rows[0][0])
