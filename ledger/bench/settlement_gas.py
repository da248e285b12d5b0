"""Gas per settled item: one Settlement batch versus one plain ERC-20 burn transaction per item.

For batches of 1, 10, 100 and 500 items, with the payer as spender and with a
separate spender (allowance path), on a freshly deployed ledger of a throwaway
embedded chain (its own state dir and a free port), so it never touches a running stack.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

from eth_account import Account
from eth_account.signers.local import LocalAccount
from eth_utils.crypto import keccak

from ledger.bench.harness import Report, send_all
from ledger.chain.client import Ledger, SettlementItem
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
BURN_SAMPLES = 20


def _fund(ledger: Ledger, operator: LocalAccount, payers: list[LocalAccount], amount: int) -> None:
    token = ledger.token.functions
    txs: list[dict[str, Any]] = []
    for payer in payers:
        for fn in (token.setAllowlisted(payer.address, True), token.mint(payer.address, amount)):
            txs.append({"to": ledger.token.address, "data": fn._encode_transaction_data()})
    send_all(ledger.sender(operator), txs)


def _approve_all(ledger: Ledger, pairs: list[tuple[LocalAccount, LocalAccount]], amount: int) -> None:
    pending = []
    for payer, spender in pairs:
        tx = {"to": ledger.token.address,
              "data": ledger.token.functions.approve(spender.address, amount)._encode_transaction_data()}
        sender = ledger.sender(payer)
        pending.append((sender, tx, *sender.send(tx)))  # type: ignore[arg-type]
    for sender, tx, tx_hash, nonce in pending:
        sender.wait(tx_hash, nonce, tx)  # type: ignore[arg-type]


def measure(ledger: Ledger, operator: LocalAccount, settler: LocalAccount, report: Report = print) -> dict[str, Any]:
    """Run every case and return the figures (gas is exact; per-item figures are integer-rounded)."""
    results: dict[str, Any] = {"batches": [], "plain_burn": {}}
    amount = 3 * 10**15  # a typical metered call's cost, far below the payer's balance
    for mode in ("payer_is_spender", "payer_is_not_spender"):
        burn_gas: list[int] = []
        for size in BATCH_SIZES:
            payers = [Account.create() for _ in range(size)]
            _fund(ledger, operator, payers, 10 * ONE_TOKEN)
            if mode == "payer_is_spender":
                pairs = [(p, p) for p in payers]
            else:
                pairs = [(p, Account.create()) for p in payers]
                _approve_all(ledger, pairs, 10 * ONE_TOKEN)
            items = [SettlementItem(p.address, s.address, amount) for p, s in pairs]  # type: ignore[arg-type]
            leaves = [receipt_leaf(os.urandom(32), p.address, s.address, amount) for p, s in pairs]
            root = build_tree(leaves).root
            batch_id = keccak(root + size.to_bytes(32, "big") + mode.encode())
            settled = ledger.settle_batch(settler, batch_id, root, size, items)
            assert settled.total == amount * size and not settled.shortfalls
            row = {"mode": mode, "items": size, "gas": settled.tx.gas_used, "gas_per_item": settled.tx.gas_used // size}
            results["batches"].append(row)
            report(f"{mode:22} batch of {size:3}: {row['gas']:>10,} gas  {row['gas_per_item']:>7,} per item")
            if size == BATCH_SIZES[-1]:
                for payer, spender in pairs[:BURN_SAMPLES]:
                    if mode == "payer_is_spender":
                        burn_gas.append(ledger.burn(payer, amount).gas_used)
                    else:
                        burn_gas.append(ledger.burn_from(spender, payer.address, amount).gas_used)
        plain = sum(burn_gas) // len(burn_gas)
        results["plain_burn"][mode] = plain
        report(f"{mode:22} plain {'burn' if mode == 'payer_is_spender' else 'burnFrom'} tx per item: {plain:,} gas")
    for row in results["batches"]:
        row["saving_vs_plain_burn"] = round(results["plain_burn"][row["mode"]] / row["gas_per_item"], 2)
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
