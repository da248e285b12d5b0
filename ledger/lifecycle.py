"""The token lifecycle walked by `sluice demo`: buy, approve a developer, settle a batch, audit.

Every step is a real transaction on the configured chain; the transcript shows
balances in whole tokens and each event with its transaction hash.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

from eth_account import Account
from eth_account.signers.local import LocalAccount
from eth_utils.crypto import keccak

from ledger.client import Ledger, SettlementItem, usage_cost
from ledger.merkle import build_tree, receipt_leaf
from ledger.units import ONE_TOKEN, format_amount, format_tokens

Say = Callable[[str], None]


@dataclass(frozen=True)
class Call:
    """One metered call: who paid, who spent, which model, how many model tokens."""

    job_id: bytes
    payer: str
    spender: str
    model: str
    prompt_tokens: int
    completion_tokens: int
    cost: int


def walk_lifecycle(ledger: Ledger, operator: LocalAccount, settler: LocalAccount, say: Say = print) -> dict[str, int]:
    """Run the lifecycle once with fresh enterprise and developer wallets; returns the final figures."""
    enterprise: LocalAccount = Account.create()
    developer: LocalAccount = Account.create()
    say(f"enterprise wallet {enterprise.address}\ndeveloper key     {developer.address}")

    tx = ledger.set_allowlisted(operator, enterprise.address, True)
    say(f"operator allowlists the enterprise              tx {tx.tx_hash}")
    tx = ledger.mint_payment(operator, enterprise.address, 1_000 * 10**6)
    say(f"enterprise receives 1000 tUSD (test stablecoin)  tx {tx.tx_hash}")

    amount = 50_000 * ONE_TOKEN
    cost, tier = ledger.quote_purchase(amount)
    say(f"quote: {format_tokens(amount)} compute tokens cost {format_amount(cost, 6)} tUSD (volume tier {tier})")
    tx = ledger.buy(enterprise, amount, cost)
    say(f"enterprise buys with an EIP-2612 permit          tx {tx.tx_hash}")

    budget = 25 * ONE_TOKEN
    tx = ledger.approve(enterprise, developer.address, budget)
    say(f"enterprise approves the developer for {format_tokens(budget)} tokens   tx {tx.tx_hash}")

    rates = {r.model: r for r in ledger.rates()}
    model = next(iter(rates))
    rate = rates[model]
    calls = []
    for prompt, completion, spender in ((412, 128, developer.address), (1_980, 512, developer.address),
                                        (96, 16, enterprise.address)):
        cost_units = usage_cost(prompt, completion, rate.input_rate, rate.output_rate)
        calls.append(Call(os.urandom(32), enterprise.address, spender, model, prompt, completion, cost_units))
        say(f"metered call on {model}: {prompt}+{completion} model tokens -> {format_tokens(cost_units)} tokens")

    leaves = {c.job_id: receipt_leaf(c.job_id, c.payer, c.spender, c.cost) for c in calls}
    tree = build_tree(list(leaves.values()))
    totals: dict[tuple[str, str], int] = {}
    for c in calls:
        totals[(c.payer, c.spender)] = totals.get((c.payer, c.spender), 0) + c.cost
    items = [SettlementItem(p, s, a) for (p, s), a in sorted(totals.items())]  # type: ignore[arg-type]
    batch_id = keccak(tree.root + len(calls).to_bytes(32, "big"))
    settled = ledger.settle_batch(settler, batch_id, tree.root, len(calls), items)
    say(f"settler submits batch 0x{batch_id.hex()[:16]}… ({len(calls)} receipts, root 0x{tree.root.hex()[:16]}…)")
    say(f"  BatchSettled total={format_tokens(settled.total)} gas={settled.tx.gas_used:,} tx {settled.tx.tx_hash}")
    for r in settled.redeemed:
        who = "developer" if r.spender == developer.address else "enterprise"
        say(f"  Redeemed payer=enterprise spender={who} amount={format_tokens(r.amount)}")

    proven = all(
        ledger.settlement.functions.verifyReceipt(
            batch_id, c.job_id, c.payer, c.spender, c.cost, tree.proof(leaves[c.job_id])
        ).call()
        for c in calls
    )
    say(f"every receipt proves against the on-chain root: {proven}")

    figures: dict[str, int] = {
        "enterprise_balance": ledger.balance_of(enterprise.address),
        "developer_allowance": ledger.allowance(enterprise.address, developer.address),
        "burned": settled.total,
        "total_supply": ledger.total_supply(),
    }
    say(f"enterprise balance {format_tokens(figures['enterprise_balance'])} tokens; developer budget left "
        f"{format_tokens(figures['developer_allowance'])}; total supply {format_tokens(figures['total_supply'])}")
    if not proven or figures["enterprise_balance"] != amount - settled.total:
        raise RuntimeError("the lifecycle's figures do not add up")
    return figures
