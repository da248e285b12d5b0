"""Gas per settled item of Settlement.settle, burning from escrow within budgets.

For batches of 1, 10, 100 and 500 items, with the payer as spender and with a
separate spender (budget path), on a freshly deployed ledger of a throwaway
embedded chain (its own state dir and a free port), so it never touches a running stack.
Each payer is funded into escrow by operator issuance and, for the budget path, gives
its spender a budget. Beside each figure: the allowance-based settlement it replaced
(one token burn per item from wallets), measured at 100 items.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

from eth_account import Account
from eth_account.signers.local import LocalAccount

from ledger.bench.harness import Report, send_all
from ledger.chain.client import Ledger, SettlementItem, ref_bytes32
from ledger.chain.connection import connect
from ledger.chain.deploy import deploy_all
from ledger.config import Settings
from ledger.keys import embedded_account
from ledger.paths import StatePaths
from ledger.protocol.merkle import build_tree, receipt_leaf
from ledger.stack.probes import free_port
from ledger.stack.services import anvil_binary, anvil_service
from ledger.stack.supervisor import Stack
from ledger.units import ONE_TOKEN

BATCH_SIZES = (1, 10, 100, 500)
# Gas per item at 100 items of the allowance-based settle this release replaced (ComputeToken.redeemBatch).
PREVIOUS_PER_ITEM_AT_100 = {"payer_is_spender": 12_427, "payer_is_not_spender": 17_903}


def _fund_escrow(ledger: Ledger, operator: LocalAccount, payers: list[LocalAccount], amount: int) -> None:
    token, sale = ledger.token.functions, ledger.sale.functions
    txs: list[dict[str, Any]] = []
    for payer in payers:
        txs.append({"to": ledger.token.address,
                    "data": token.setAllowlisted(payer.address, True)._encode_transaction_data()})
        txs.append({"to": ledger.sale.address,
                    "data": sale.issueToEscrow(payer.address, amount, ref_bytes32("bench"))._encode_transaction_data()})
    send_all(ledger.sender(operator), txs)


def _budget_all(ledger: Ledger, pairs: list[tuple[LocalAccount, LocalAccount]], amount: int) -> None:
    pending = []
    for payer, spender in pairs:
        tx = {"to": ledger.settlement.address,
              "data": ledger.settlement.functions.setBudget(spender.address, amount)._encode_transaction_data()}
        sender = ledger.sender(payer)
        pending.append((sender, tx, *sender.send(tx)))  # type: ignore[arg-type]
    for sender, tx, tx_hash, nonce in pending:
        sender.wait(tx_hash, nonce, tx)  # type: ignore[arg-type]


def measure(ledger: Ledger, operator: LocalAccount, settler: LocalAccount, report: Report = print) -> dict[str, Any]:
    """Run every case and return the figures (gas is exact; per-item figures are integer-rounded)."""
    results: dict[str, Any] = {"batches": [], "previous_per_item_at_100": dict(PREVIOUS_PER_ITEM_AT_100)}
    amount = 3 * 10**15  # a typical metered call's cost, far below the payer's escrow
    for mode in ("payer_is_spender", "payer_is_not_spender"):
        for size in BATCH_SIZES:
            payers = [Account.create() for _ in range(size)]
            _fund_escrow(ledger, operator, payers, 10 * ONE_TOKEN)
            if mode == "payer_is_spender":
                pairs = [(p, p) for p in payers]
            else:
                pairs = [(p, Account.create()) for p in payers]
                _budget_all(ledger, pairs, 10 * ONE_TOKEN)
            items = [SettlementItem(p.address, s.address, amount) for p, s in pairs]  # type: ignore[arg-type]
            leaves = [receipt_leaf(os.urandom(32), p.address, s.address, amount) for p, s in pairs]
            root = build_tree(leaves).root
            settled = ledger.settle_batch(settler, root, size, items)
            assert settled.total == amount * size and not settled.shortfalls
            per_item = settled.tx.gas_used // size
            row = {"mode": mode, "items": size, "gas": settled.tx.gas_used, "gas_per_item": per_item,
                   "previous_per_item_at_100": PREVIOUS_PER_ITEM_AT_100[mode]}
            results["batches"].append(row)
            report(f"{mode:22} batch of {size:3}: {row['gas']:>10,} gas  {per_item:>7,} per item"
                   f" (was {PREVIOUS_PER_ITEM_AT_100[mode]:,} at 100)")
    return results


def run(report: Report = print, progress: Report | None = None) -> dict[str, Any]:
    """Start a throwaway Anvil, deploy, measure every case; `progress` gets the chain's start and stop lines."""
    with tempfile.TemporaryDirectory(prefix="sluice-bench-") as home:
        port = free_port()
        settings = Settings(home=Path(home), chain_port=port)
        service = anvil_service(StatePaths(settings.state_dir), port=port,
                                chain_id=settings.chain_id, binary=anvil_binary(settings))
        stack = Stack([service], progress or report)
        stack.start()
        try:
            w3 = connect(settings.effective_rpc_url)
            operator, settler = embedded_account(0), embedded_account(1)
            deployment = deploy_all(settings, w3, operator, settler)
            return measure(Ledger(w3, deployment), operator, settler, report=report)
        finally:
            stack.stop()
