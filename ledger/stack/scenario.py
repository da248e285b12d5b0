"""The main job's story, end to end on a running stack: buy → signed calls → settlement → audit.

An operator allowlists an enterprise; the enterprise buys compute tokens with a
permit and approves two developer keys with budgets; the developers make signed
calls with the official `openai` package (one streams, one runs out of budget and
gets 402); the Celery workers settle the usage on chain; an auditor verifies the
whole history from the chain and the audit API and prints it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx
from eth_account import Account
from eth_account.signers.local import LocalAccount

from ledger.chain.client import Ledger
from ledger.polling import poll_until
from ledger.units import ONE_TOKEN, format_amount, format_tokens

Say = Callable[[str], None]
MODEL = "meta-llama/Llama-3.1-8B-Instruct"


@dataclass
class Outcome:
    calls_served: int
    refused_402: int
    metered: int
    settled: int
    verify_discrepancies: int


def _budget(api: str, payer: str, spender: str) -> int:
    data = httpx.get(api + "/v1/budget", params={"payer": payer, "spender": spender}, timeout=10).json()
    return int(data["allowance_available"] if data["allowance_available"] is not None else data["balance_available"])


def run_story(ledger: Ledger, api: str, operator: LocalAccount, say: Say = print) -> Outcome:
    from openai import APIStatusError

    from redemption.sdk import openai_client

    enterprise: LocalAccount = Account.create()
    alice: LocalAccount = Account.create()
    bob: LocalAccount = Account.create()
    auditor: LocalAccount = Account.create()
    say(f"enterprise wallet {enterprise.address}\ndeveloper alice   {alice.address}\ndeveloper bob     {bob.address}")

    say("\n[operator] allowlists the enterprise and funds it with 1,000 tUSD (the embedded test stablecoin)")
    tx = ledger.set_allowlisted(operator, enterprise.address, True)
    say(f"  tx {tx.tx_hash}")
    ledger.mint_payment(operator, enterprise.address, 1_000 * 10**6)

    amount = 20_000 * ONE_TOKEN
    cost, tier = ledger.quote_purchase(amount)
    say(f"[enterprise] buys {format_tokens(amount)} compute tokens for {format_amount(cost, 6)} tUSD "
        f"(volume tier {tier}), paying with an EIP-2612 permit")
    tx = ledger.buy(enterprise, amount, cost)
    say(f"  tx {tx.tx_hash}; balance {format_tokens(ledger.balance_of(enterprise.address))} tokens")
    budgets = {alice.address: 2 * ONE_TOKEN, bob.address: ONE_TOKEN // 100}
    for name, dev in (("alice", alice), ("bob", bob)):
        tx = ledger.approve(enterprise, dev.address, budgets[dev.address])
        say(f"[enterprise] approves {name} for {format_tokens(budgets[dev.address])} tokens   tx {tx.tx_hash}")

    poll_until(lambda: _budget(api, enterprise.address, bob.address) == budgets[bob.address], 30,
               "the service's chain mirror seeing the approvals")

    say("\n[alice] signed calls with the openai package")
    client = openai_client(api, alice, payer=enterprise.address, max_cost=ONE_TOKEN // 10)
    raw = client.chat.completions.with_raw_response.create(
        model=MODEL, messages=[{"role": "user", "content": "Summarise our network KPIs"}], max_tokens=48)
    reply = raw.parse()
    usage = reply.usage
    assert usage is not None
    say(f"  chat: {usage.prompt_tokens}+{usage.completion_tokens} model tokens, cost "
        f"{format_tokens(int(raw.headers['Sluice-Cost']))} tokens (job {raw.headers['Sluice-Job-Id'][:18]}…)")
    stream = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Stream a status report"}], max_tokens=32, stream=True)
    chunks = list(stream)
    final = chunks[-1]
    streamed_cost = int((final.model_extra or {})["sluice"]["cost"])
    say(f"  stream: {len(chunks) - 1} chunks, final usage chunk reports cost {format_tokens(streamed_cost)} tokens")
    say(f"  alice's remaining budget: {format_tokens(_budget(api, enterprise.address, alice.address))} tokens")
    served = 2

    say("\n[bob] calls until his budget of 0.01 tokens runs out")
    bob_client = openai_client(api, bob, payer=enterprise.address, max_cost=ONE_TOKEN // 200)
    refused = 0
    for i in range(20):
        try:
            bob_client.chat.completions.create(model=MODEL, max_tokens=16,
                                               messages=[{"role": "user", "content": f"question {i}"}])
            served += 1
        except APIStatusError as exc:
            body: Any = exc.body if isinstance(exc.body, dict) else {}
            error: dict[str, Any] = body.get("error", body)  # the openai package may unwrap the envelope
            say(f"  call {i + 1}: HTTP {exc.status_code} {error.get('code')}: {error.get('message')}")
            refused += 1
            break
        say(f"  call {i + 1}: cost {format_tokens(bob_client.sluice_auth.last_cost)}, remaining "
            f"{format_tokens(_budget(api, enterprise.address, bob.address))}")

    say("\n[workers] settle the metered usage on chain (Celery beat cuts a batch every 2 s)")
    started = time.monotonic()

    def usage_rows() -> list[dict[str, Any]]:
        spenders: list[dict[str, Any]] = httpx.get(api + "/v1/usage", params={"payer": enterprise.address},
                                                   timeout=10).json()["spenders"]
        return spenders

    poll_until(lambda: all(int(s["unsettled"]) == 0 for s in usage_rows()), 120, "every call settled on chain")
    rows = usage_rows()
    metered = sum(int(s["metered"]) for s in rows)
    settled = sum(int(s["settled"]) for s in rows)
    for s in rows:
        who = {alice.address: "alice", bob.address: "bob"}.get(s["spender"], s["spender"])
        say(f"  {who}: {s['calls']} calls, metered {format_tokens(int(s['metered']))}, "
            f"settled {format_tokens(int(s['settled']))}")
    say(f"  all settled after {time.monotonic() - started:.1f} s; enterprise balance "
        f"{format_tokens(ledger.balance_of(enterprise.address))} tokens; total supply "
        f"{format_tokens(ledger.total_supply())}")

    say("\n[auditor] granted AUDITOR_ROLE, verifies the history from the chain and the audit API")
    ledger.grant_role(operator, "AUDITOR_ROLE", auditor.address)
    from ledger.audit.api import AuditApi
    from ledger.audit.verifier import verify

    audit_api = AuditApi(api, auditor)
    try:
        report = verify(ledger.deployment.rpc_url, audit_api, from_block=ledger.deployment.deploy_block)
        history = audit_api.get("/audit/transactions", {"account": enterprise.address, "limit": 20})
    finally:
        audit_api.close()
    say(f"  {report.batches} batches, {report.receipts} receipts, {report.signatures} signatures checked; "
        f"supply {format_tokens(report.total_supply)} = minted {format_tokens(report.minted)} - burned "
        f"{format_tokens(report.burned)}; discrepancies: {len(report.discrepancies)}")
    for d in report.discrepancies:
        say(f"  DISCREPANCY {d.check}: {d.detail}")
    say("  the enterprise's history:")
    for row in history["data"]:
        say(f"    block {row['block']:>4}  {row['kind']:12} {row['event']:16} tx {row['tx_hash'][:18]}…")
    return Outcome(served, refused, metered, settled, len(report.discrepancies))
