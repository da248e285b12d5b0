"""Debts: what a `Shortfall` left unpaid, settled later as a `debt` batch once the payer can cover it.

A shortfall records a debt per (payer, spender) and suspends the payer (SQL, `confirm_batch`).
`sluice admin debts clear PAYER` checks the payer's balance and allowances, cuts one debt batch
(one leaf per debt: the batch that recorded it, payer, spender, amount outstanding), and drives it
through the same `Settler` as usage batches; its confirmation lifts the suspension when nothing
remains owed. The rows are `ledger.settlement.store`'s.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

from ledger.chain.client import Ledger
from ledger.errors import DebtNotCovered, SettlementPending
from ledger.settlement.settler import Settler, chain_errors
from ledger.settlement.store import Debt, create_debt_batch, is_suspended, outstanding_debts, settled_figures
from ledger.units import BaseUnits


@dataclass(frozen=True)
class Clearance:
    batch_id: bytes
    tx_hash: str
    block: int
    paid: BaseUnits
    owed: BaseUnits
    still_suspended: bool


def check_covered(ledger: Ledger, debts: Sequence[Debt]) -> None:
    """Raise DebtNotCovered unless the payer's escrow (and each spender's budget) covers the debts."""
    if not debts:
        return
    payer = debts[0].payer
    total = sum(d.outstanding for d in debts)
    escrow = ledger.escrow_of(payer)
    if escrow < total:
        raise DebtNotCovered(
            f"{payer} owes {total} base units but holds {escrow} in escrow; it must top up (deposit) first"
        )
    per_spender: dict[str, int] = {}
    for d in debts:
        if d.spender != payer:
            per_spender[d.spender] = per_spender.get(d.spender, 0) + d.outstanding
    for spender, owed in per_spender.items():
        budget = ledger.budget_of(payer, spender).remaining
        if budget < owed:
            raise DebtNotCovered(
                f"{payer} owes {owed} base units for {spender}'s usage but gives it a budget of only {budget}; "
                "it must raise the budget first"
            )


def clear_debts(settler: Settler, payer: str, *, force: bool = False, timeout: float = 120.0) -> Clearance | None:
    """Settle `payer`'s outstanding debts on chain as a new batch and wait for it; None when it owes nothing.

    Unless `force`, refuses (DebtNotCovered) while the payer's escrow or budgets fall short.
    The suspension is lifted by the confirmation when nothing remains owed.
    """
    conn = settler.db.conn()
    debts = outstanding_debts(conn, payer)
    if not debts:
        return None
    if not force:
        with chain_errors():
            check_covered(settler.ledger, debts)
    batch_id = create_debt_batch(conn, payer)
    if batch_id is None:
        return None
    deadline = time.monotonic() + timeout
    delay = 0.1
    while True:
        try:
            if settler.settle(batch_id) == "confirmed":
                break
        except SettlementPending:
            pass
        if time.monotonic() > deadline:
            raise SettlementPending(f"debt batch 0x{batch_id.hex()} is not confirmed after {timeout:.0f} s; "
                                    "the settlement workers will finish it")
        time.sleep(delay)  # a worker holds the batch, or the transaction waits for confirmations
        delay = min(delay * 2, 1.0)
    figures = settled_figures(conn, batch_id)
    return Clearance(batch_id, figures.tx_hash, figures.block, figures.paid, figures.total,
                     is_suspended(conn, payer))
