"""The main job's story, end to end on a running stack: buy into escrow → budgets → signed calls →
a withdrawal that does not escape them → settlement → audit.

An operator allowlists an enterprise and funds it with the test stablecoin; the enterprise buys
compute tokens straight into its escrow account with a permit and gives two developer keys budgets
there; the developers make signed calls with the official `openai` package (one streams, one runs
out of budget and gets 402); while a few streams run, the enterprise asks to withdraw its whole
escrow — new calls are refused at once, the streams already admitted finish and are paid; the
Celery workers settle the usage on chain; an auditor verifies the whole history from the chain and
the audit API (no Shortfall) and prints it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import httpx
from eth_account import Account
from eth_account.signers.local import LocalAccount

from ledger.chain.client import Ledger
from ledger.polling import poll_until
from ledger.units import ONE_TOKEN, format_amount, format_tokens
from redemption.sdk import reader_auth

Say = Callable[[str], None]
MODEL = "meta-llama/Llama-3.1-8B-Instruct"


@dataclass
class Outcome:
    calls_served: int
    refused_402: int
    metered: int
    withdrawal_requested: int
    settled: int
    verify_discrepancies: int


def _budget(api: str, payer: LocalAccount, spender: str) -> int:
    """The payer's own signed read of what `spender` may still spend from its escrow."""
    data = httpx.get(api + "/v1/budget", params={"payer": payer.address, "spender": spender}, timeout=10,
                     auth=reader_auth(payer)).json()
    return int(data["budget_available"] if data["budget_available"] is not None else data["escrow_available"])


def _escrow(ledger: Ledger, account: str) -> tuple[int, int, int]:
    """(escrow, pending withdrawal, unlocksAt) of `account` on Settlement."""
    settlement = ledger.settlement.functions
    pending, unlocks_at = settlement.pendingWithdrawalOf(account).call()
    return int(settlement.escrowOf(account).call()), int(pending), int(unlocks_at)


def _buy_into_escrow(ledger: Ledger, buyer: LocalAccount, amount: int, limit: int) -> str:
    deadline = int(ledger.w3.eth.get_block("latest")["timestamp"]) + 3600
    v, r, s = ledger.sign_permit(ledger.payment_token, buyer, ledger.sale.address, limit, deadline)
    fn = ledger.sale.functions.buyToEscrowWithPermit(amount, limit, deadline, v, r, s)
    return ledger._transact(buyer, fn).tx_hash


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
        f"(volume tier {tier}) straight into its escrow account, paying with an EIP-2612 permit")
    tx_hash = _buy_into_escrow(ledger, enterprise, amount, cost)
    say(f"  tx {tx_hash}; escrow {format_tokens(_escrow(ledger, enterprise.address)[0])} tokens, wallet "
        f"{format_tokens(ledger.balance_of(enterprise.address))}")
    budgets = {alice.address: 2 * ONE_TOKEN, bob.address: ONE_TOKEN // 100}
    for name, dev in (("alice", alice), ("bob", bob)):
        tx = ledger._transact(enterprise, ledger.settlement.functions.setBudget(dev.address, budgets[dev.address]))
        say(f"[enterprise] gives {name} a budget of {format_tokens(budgets[dev.address])} tokens   tx {tx.tx_hash}")

    poll_until(lambda: _budget(api, enterprise, bob.address) == budgets[bob.address], 30,
               "the service's chain mirror seeing the budgets")

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
    say(f"  alice's remaining budget: {format_tokens(_budget(api, enterprise, alice.address))} tokens")
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
            f"{format_tokens(_budget(api, enterprise, bob.address))}")

    say("\n[alice] starts 5 streams; while they run the enterprise asks to withdraw its whole escrow")
    escrow_before = _escrow(ledger, enterprise.address)[0]

    started_streams = threading.Semaphore(0)

    def one_stream(i: int) -> int:
        stream = client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": f"Stream report {i}"}], max_tokens=128, stream=True)
        chunks = [next(stream)]
        started_streams.release()  # admitted: its hold is taken and its first token is here
        chunks += list(stream)
        return int((chunks[-1].model_extra or {})["sluice"]["cost"])

    with ThreadPoolExecutor(5) as pool:
        streams = [pool.submit(one_stream, i) for i in range(5)]
        for _ in streams:
            if not started_streams.acquire(timeout=30):
                raise TimeoutError("the streams did not start within 30 s")
        tx = ledger._transact(enterprise, ledger.settlement.functions.requestWithdrawal(escrow_before))
        _escrow_now, pending, unlocks_at = _escrow(ledger, enterprise.address)
        say(f"[enterprise] requests a withdrawal of {format_tokens(pending)} tokens (all of it); it unlocks at "
            f"unix {unlocks_at}   tx {tx.tx_hash}")
        poll_until(lambda: _budget(api, enterprise, enterprise.address) <= 0, 30,
                   "the service's chain mirror seeing the withdrawal request")
        try:
            client.chat.completions.create(model=MODEL, max_tokens=8,
                                           messages=[{"role": "user", "content": "one more"}])
        except APIStatusError as exc:
            body = exc.body if isinstance(exc.body, dict) else {}
            error = body.get("error", body)
            say(f"  a new call: HTTP {exc.status_code} {error.get('code')}: {error.get('message')}")
            refused += 1
        costs = [f.result() for f in streams]
    served += len(costs)
    say(f"  the 5 streams admitted before the request finished: {', '.join(format_tokens(c) for c in costs)} "
        "tokens; they are paid from the escrow that is waiting to leave")

    say("\n[workers] settle the metered usage on chain (Celery beat cuts a batch every 2 s)")
    started = time.monotonic()

    def usage_rows() -> list[dict[str, Any]]:
        spenders: list[dict[str, Any]] = httpx.get(api + "/v1/usage", params={"payer": enterprise.address},
                                                   timeout=10, auth=reader_auth(enterprise)).json()["spenders"]
        return spenders

    poll_until(lambda: all(int(s["unsettled"]) == 0 for s in usage_rows()), 120, "every call settled on chain")
    rows = usage_rows()
    metered = sum(int(s["metered"]) for s in rows)
    settled = sum(int(s["settled"]) for s in rows)
    for s in rows:
        who = {alice.address: "alice", bob.address: "bob"}.get(s["spender"], s["spender"])
        say(f"  {who}: {s['calls']} calls, metered {format_tokens(int(s['metered']))}, "
            f"settled {format_tokens(int(s['settled']))}")
    escrow_after, pending_after, _unlocks = _escrow(ledger, enterprise.address)
    say(f"  all settled after {time.monotonic() - started:.1f} s: the escrow went from {format_tokens(escrow_before)} "
        f"to {format_tokens(escrow_after)} tokens (burned {format_tokens(escrow_before - escrow_after)} for the "
        f"calls), pending withdrawal {format_tokens(pending_after)}; total supply "
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
    return Outcome(served, refused, metered, pending, settled, len(report.discrepancies))
