"""Each user's main journey through the portal, in headless Chromium with an injected EIP-1193 wallet, on a
whole deployment (Anvil, PostgreSQL, the service serving the portal, two simulated nodes).

The browser does what a user does; the test checks every figure the pages show against the chain and the
database. Screenshots of every page visited go to `<basetemp>/.../portal-screens/` and
`portal/test-results/journeys/` (printed with -s).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
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
from redemption.sdk import SluiceAuth
from tests.portal.support import PORTAL, journey, require_portal
from tests.support import escrow
from tests.support.audit import CHAT, settle_waiting, wait_indexed
from tests.support.stack import SMALL_MODEL, Deployed, deployment

pytestmark = pytest.mark.slow
RESULTS = PORTAL / "test-results" / "journeys"


class Story:
    def __init__(self, d: Deployed, out: Path) -> None:
        self.d, self.out = d, out
        self.enterprise: LocalAccount = Account.create()
        self.dev1: LocalAccount = Account.create()
        self.dev2: LocalAccount = Account.create()
        self.portal = d.api + "/portal/"
        self.results: dict[str, dict[str, Any]] = {}

    def key(self, account: LocalAccount) -> str:
        return "0x" + bytes(account.key).hex()

    def step(self, name: str, account: LocalAccount, **config: object) -> dict[str, Any]:
        result = journey(name, portal=self.portal, privateKey=self.key(account), out=str(self.out), **config)
        self.results[name + (f"-{config['label']}" if "label" in config else "")] = result
        return result


@pytest.fixture(scope="module")
def story(postgres_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Story]:
    require_portal()
    with deployment(postgres_url, tmp_path_factory.mktemp("portal-stack")) as d:
        s = Story(d, tmp_path_factory.mktemp("portal-screens"))
        d.ledger.set_allowlisted(d.operator, s.enterprise.address, True)
        d.ledger.mint_payment(d.operator, s.enterprise.address, 1_000 * 10**6)
        yield s
        (s.out / "journeys.json").write_text(json.dumps(s.results, indent=2))
        # Also where the shell's browser tests leave theirs (git-ignored): portal/test-results/journeys/.
        shutil.copytree(s.out, RESULTS, dirs_exist_ok=True)
        print(f"\nportal screenshots and results: {s.out} and {RESULTS}")


def test_the_portal_is_served_by_the_service(story: Story) -> None:
    page = httpx.get(story.portal, timeout=10)
    assert page.status_code == 200 and page.headers["cache-control"] == "no-cache"
    assert '<div id="app">' in page.text


def test_enterprise_buys_into_escrow_and_gives_two_keys_budgets(story: Story) -> None:
    d, who = story.d, story.enterprise
    cost, tier = d.ledger.quote_purchase(50 * ONE_TOKEN)
    keys = [{"address": story.dev1.address, "budget": "10"}, {"address": story.dev2.address, "budget": "5"}]
    shown = story.step("enterprise-buy", who, buy="50", keys=keys)
    whole, cents = divmod(cost, 10**6)
    fraction = "." + str(cents).rjust(6, "0").rstrip("0") if cents else ""
    assert shown["quote"] == f"Costs {whole:,}{fraction} tUSD at tier {tier}."
    assert shown["bought"].startswith("Bought 50 compute tokens into escrow. Mined in block ")
    assert shown["escrow"] == str(50 * ONE_TOKEN) == str(d.ledger.escrow_of(who.address))
    assert d.ledger.payment_balance(who.address) == 1_000 * 10**6 - cost
    by_key = {row["spender"]: row["units"] for row in shown["budgets"]}
    assert by_key == {story.dev1.address: str(10 * ONE_TOKEN), story.dev2.address: str(5 * ONE_TOKEN)}
    for dev, amount in ((story.dev1, 10), (story.dev2, 5)):
        assert escrow.budget_of(d.ledger, who.address, dev.address) == (amount * ONE_TOKEN, 0, 0)
    offered = "/v1/keys" in httpx.get(d.api + "/openapi.json", timeout=10).json()["paths"]
    assert shown["keys_offered"] is offered
    # The wallet was asked only what a browser wallet is asked: connect, chain, permit, transactions, reads.
    methods = set(shown["methods"])
    assert {"eth_requestAccounts", "wallet_addEthereumChain", "eth_signTypedData_v4", "eth_sendTransaction"} <= methods
    assert "eth_sign" not in methods and "personal_sign" not in methods


@pytest.mark.parametrize("case", ["not_allowlisted", "no_payment_token", "declined"])
def test_a_refused_purchase_says_why_in_words(story: Story, case: str) -> None:
    d = story.d
    buyer: LocalAccount = Account.create()
    if case != "not_allowlisted":
        d.ledger.set_allowlisted(d.operator, buyer.address, True)
    if case != "no_payment_token":
        d.ledger.mint_payment(d.operator, buyer.address, 100 * 10**6)
    cost, _ = d.ledger.quote_purchase(10 * ONE_TOKEN)
    decline = ["eth_signTypedData_v4"] if case == "declined" else []
    shown = story.step("enterprise-refused", buyer, buy="10", decline=decline, label=case)
    expected = {
        "not_allowlisted": f"The account {buyer.address} is not allowlisted, so it cannot hold compute tokens"
                           " or escrow. Ask the operator to allowlist it.",
        "no_payment_token": f"Insufficient payment token: the purchase costs {_units(cost, 6)} and {buyer.address}"
                            " holds or approved only 0 (payment token, 6 decimals). Add payment token to the wallet,"
                            " or buy less.",
        "declined": "You declined the request in your wallet. Nothing was signed or sent.",
    }[case]
    assert shown["alert"] == expected
    assert d.ledger.escrow_of(buyer.address) == 0


def test_the_enterprise_names_a_key_and_limits_it(story: Story) -> None:
    shown = story.step("enterprise-key-policy", story.enterprise, key=story.dev2.address, label="batch jobs", rpm="30")
    assert shown["row"] == [story.dev2.address, "batch jobs", "30", "no limit", "never", "Delete policy"]
    listed = httpx.get(story.d.api + "/v1/keys", auth=SluiceAuth(story.enterprise, max_cost=0), timeout=10).json()
    policy = next(k for k in listed["keys"] if k["spender"] == story.dev2.address)
    assert (policy["label"], policy["requests_per_minute"], policy["tokens_per_minute"], policy["expires_at"]) == (
        "batch jobs", 30, None, None)


def test_the_enterprise_deletes_a_key_policy_and_the_budget_stays(story: Story) -> None:
    d = story.d
    shown = story.step("enterprise-key-policy-delete", story.enterprise, key=story.dev2.address)
    assert shown["before"] == [story.dev2.address, "batch jobs", "30", "no limit", "never", "Delete policy"]
    assert shown["deleted"] == f"Policy of {story.dev2.address} deleted; its budget stays on chain."
    assert shown["after"] == [story.dev2.address, "—", "no limit", "no limit", "never", "Delete policy"]
    assert d.sql("SELECT count(*) FROM key_policies WHERE spender = %s", bytes.fromhex(story.dev2.address[2:])) == [
        (0,)]
    assert escrow.budget_of(d.ledger, story.enterprise.address, story.dev2.address)[0] == 5 * ONE_TOKEN


def test_a_developer_call_shows_in_the_chart_and_the_csv(story: Story) -> None:
    d = story.d
    d.wait_mirrored()
    auth = SluiceAuth(story.dev1, payer=story.enterprise.address, max_cost=10**17)
    response = httpx.post(d.api + "/v1/chat/completions", content=CHAT, auth=auth, timeout=30,
                          headers={"content-type": "application/json"})
    assert response.status_code == 200, response.text
    cost = int(response.headers["Sluice-Cost"])
    assert cost > 0
    usage = d.sql("SELECT prompt_tokens, completion_tokens FROM usage_records WHERE payer = %s",
                  bytes.fromhex(story.enterprise.address[2:]))
    prompt, completion = usage[0]
    shown = story.step("enterprise-usage", story.enterprise)
    assert shown["keys"] == [{"label": story.dev1.address, "units": str(cost)}]
    assert shown["models"] == [{"label": SMALL_MODEL, "units": str(cost)}]
    today = datetime.now(UTC).strftime("%Y-%m-%d")
    assert shown["days"] == [{"label": today, "units": str(cost)}]
    assert shown["csv"] == ("spender,model,calls,prompt_tokens,completion_tokens,metered\r\n"
                            f"{story.dev1.address},{SMALL_MODEL},1,{prompt},{completion},{cost}\r\n")
    assert shown["fits_390"] is True


def test_a_budget_cut_shows_when_it_takes_effect(story: Story) -> None:
    d = story.d
    shown = story.step("enterprise-cut", story.enterprise, key=story.dev1.address, budget="1")
    remaining, scheduled, effective_at = escrow.budget_of(d.ledger, story.enterprise.address, story.dev1.address)
    assert (remaining, scheduled) == (10 * ONE_TOKEN, ONE_TOKEN)  # a cut waits; the usage above is not settled
    block = d.ledger.w3.eth.get_block("latest")
    assert effective_at == int(block["timestamp"]) + d.ledger.unlock_period()
    iso = datetime.fromtimestamp(effective_at, UTC).isoformat().replace("+00:00", ".000Z")
    assert shown["effective"] == iso
    assert str(shown["cut"]).startswith("to 1 SCT, effective at " + iso.replace(".000Z", "Z"))
    assert "This is a cut: it applies after the unlock period" in str(shown["status"])


def test_the_developer_sees_its_budget_and_a_snippet(story: Story) -> None:
    shown = story.step("developer", story.dev1, payer=story.enterprise.address)
    assert f'payer="{story.enterprise.address}"' in str(shown["python"])
    assert f'base_url="{story.d.api}/v1"' in str(shown["python"])
    budget = story.d.budget(story.enterprise.address, story.dev1.address).json()
    assert f"budget_available\n{_tokens(int(budget['budget_available']))} SCT" in str(shown["left"])
    calls = story.d.sql("SELECT '0x' || encode(job_id, 'hex'), model, prompt_tokens, completion_tokens, cost,"
                        " extract(epoch FROM finished_at)::bigint FROM usage_records WHERE spender = %s",
                        bytes.fromhex(story.dev1.address[2:]))
    assert len(calls) == 1  # the call of test_a_developer_call_shows_in_the_chart_and_the_csv
    job, model, prompt, completion, cost, finished = calls[0]
    assert shown["callsStatus"] == "1 recent call read from the service."
    assert shown["calls"] == [{
        "job": job, "units": str(cost), "amount": str(cost), "settled": "not yet",
        "finished": datetime.fromtimestamp(finished, UTC).isoformat().replace("+00:00", ".000Z"),
        "cells": [model, str(prompt), str(completion)]}]


def test_the_auditor_verifies_a_batch_and_sees_a_tampered_receipt_flagged(story: Story) -> None:
    d = story.d
    auditor: LocalAccount = Account.create()
    d.ledger.grant_role(d.operator, "AUDITOR_ROLE", auditor.address)
    settings = SettlementSettings(home=d.settings.home, rpc_url=d.settings.effective_rpc_url, database_url=d.db_url)
    batch = settle_waiting(d, Settler(d.ledger, embedded_account(1), Database(d.db_url), settings))
    wait_indexed(d)
    job = bytes(d.sql("SELECT job_id FROM usage_records WHERE batch_id = %s", batch)[0][0])
    shown = story.step("auditor", auditor)
    assert shown["events"] == ["BatchSettled"]
    assert shown["receipts"] == ["0x" + job.hex()]
    csv_lines = str(shown["csv"]).split("\r\n")
    assert csv_lines[0] == "block,log_index,timestamp,tx_hash,contract,event,accounts,args" and len(csv_lines) == 3
    verified = shown["verified"]
    assert verified["ok"] == "true", verified
    assert str(verified["text"]).startswith("Verified. 1 receipts, 2 signatures checked against 2 registered node keys")
    tampered = shown["tampered"]
    assert tampered["codes"] == ["merkle_proof", "node_signature", "merkle_root"], tampered
    assert str(tampered["text"]).startswith("Verification failed.")
    cost = int(d.sql("SELECT cost FROM usage_records WHERE job_id = %s", job)[0][0])
    # metered, settled, redeemed, short unpaid, difference: the one call, settled and burned in full
    assert shown["reconciliation"] == {"balanced": "true", "rows": [
        {"payer": story.enterprise.address, "spender": story.dev1.address,
         "units": [str(cost), str(cost), str(cost), "0", "0"]}]}


def test_the_enterprise_withdraws_after_the_unlock_period_and_deposits_again(story: Story) -> None:
    d, who = story.d, story.enterprise
    escrow_before = d.ledger.escrow_of(who.address)
    shown = story.step("enterprise-request-withdrawal", who, amount="5")
    amount, unlocks_at = escrow.pending_withdrawal_of(d.ledger, who.address)
    assert amount == 5 * ONE_TOKEN
    assert unlocks_at == int(d.ledger.w3.eth.get_block("latest")["timestamp"]) + d.ledger.unlock_period()
    iso = datetime.fromtimestamp(unlocks_at, UTC).isoformat().replace("+00:00", "Z")
    assert shown["pending"] == f"5 SCT, unlocks at {iso} (in 24 h)" and shown["locked"] is True
    escrow.advance_time(d.ledger, d.ledger.unlock_period())
    shown = story.step("enterprise-withdraw-and-deposit", who, deposit="2")
    assert str(shown["pending"]).startswith(f"5 SCT, unlocked since {iso} (")
    assert shown["wallet_after_withdraw"] == str(5 * ONE_TOKEN)
    assert shown["wallet"] == str(3 * ONE_TOKEN) == str(d.ledger.balance_of(who.address))
    assert shown["escrow"] == str(escrow_before - 3 * ONE_TOKEN) == str(d.ledger.escrow_of(who.address))
    assert str(shown["deposited"]).startswith("Deposited 2 compute tokens. Mined in block ")


def test_the_operator_changes_a_rate_and_sees_it_in_the_history(story: Story) -> None:
    d = story.d
    before = d.ledger.rate(SMALL_MODEL)
    tier = ["edge", "regional", "cloud"][int(before.tier)]
    node = Account.create().address
    shown = story.step("operator", d.operator, model=SMALL_MODEL, input="123", output="456", tier=tier, node=node,
                       endpoint="http://127.0.0.1:9/")
    after = d.ledger.rate(SMALL_MODEL)
    assert (after.input_rate, after.output_rate, after.tier) == (123, 456, before.tier)
    block = d.ledger.w3.eth.block_number - 4  # then the node's register and retire, pause and unpause
    assert shown["status"] == f"Rate of {SMALL_MODEL} set. Mined in block {block}: see it in the history."
    history = shown["history"]
    assert history[:4] == [str(block), SMALL_MODEL, "123", "456"]
    assert int(shown["history_rows"]) >= 3  # the deployment's rates, then this one
    d.wait_rates(SMALL_MODEL, "123")
    assert shown["nodes"] == 2  # the embedded nodes
    shortfalls = d.ledger.settlement.events.Shortfall().get_logs(from_block=0, to_block="latest")
    assert len(shortfalls) == 0
    assert shown["shortfalls"] == "No settlement has fallen short: every batch was paid in full."
    assert shown["node"]["before"] == "active" and shown["node"]["registered"].startswith("Node ")
    assert shown["node"]["row"].split("\t")[1:5] == ["retired", "http://127.0.0.1:9/", "regional", "eu-test"]
    pause = shown["pause"]
    assert pause["paused"].startswith("settlement paused. Mined in block ")
    assert pause["whilePaused"] == "Settlement: paused Unpause"
    assert pause["unpaused"].startswith("settlement unpaused. Mined in block ")
    assert d.ledger.settlement.functions.paused().call() is False
    paused_logs = d.ledger.settlement.events.Paused().get_logs(from_block=0, to_block="latest")
    assert [e["args"]["account"] for e in paused_logs] == [d.operator.address]
    record = d.ledger.node_registry.functions.nodeOf(node).call()
    assert (record[0], record[3], record[4], record[5]) == (2, "http://127.0.0.1:9/", "regional", "eu-test")


def _units(units: int, decimals: int) -> str:
    whole, fraction = divmod(units, 10**decimals)
    text = f"{whole:,}"
    return text + ("." + str(fraction).rjust(decimals, "0").rstrip("0") if fraction else "")


def _tokens(units: int) -> str:
    return _units(units, 18)
