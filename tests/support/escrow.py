"""Funding test accounts the way enterprises do: compute tokens into escrow, budgets on Settlement.

Each helper is one or two transactions through the contracts' own functions, so the tests exercise
the same paths as `sluice wallet deposit | budget` and the sale's buy-into-escrow.
"""

from __future__ import annotations

from eth_account.signers.local import LocalAccount

from ledger.chain.client import Ledger
from ledger.chain.sender import TxResult


def deposit(ledger: Ledger, operator: LocalAccount, account: LocalAccount, amount: int) -> TxResult:
    """Mint `amount` base units to `account`'s wallet and deposit them into its escrow (approve + deposit).

    `account` must be allowlisted already.
    """
    ledger.mint(operator, account.address, amount)
    return ledger.deposit(account, amount, permit=False)  # no permit deadline: tests move the chain clock


def set_budget(ledger: Ledger, payer: LocalAccount, spender: str, amount: int) -> TxResult:
    """`payer` gives `spender` a budget of `amount` (a raise at once; a cut after the unlock period)."""
    return ledger.set_budget(payer, spender, amount)


def request_withdrawal(ledger: Ledger, payer: LocalAccount, amount: int) -> TxResult:
    return ledger.request_withdrawal(payer, amount)


def request_everything(ledger: Ledger, payer: LocalAccount) -> int:
    """Ask to withdraw the whole escrow as it stands; a settlement landing in between is raced again."""
    from ledger.errors import WithdrawalRefused

    for _ in range(10):
        amount = escrow_of(ledger, payer.address)
        try:
            request_withdrawal(ledger, payer, amount)
        except WithdrawalRefused:  # a batch burned some of it since the read
            continue
        return amount
    raise AssertionError("the escrow kept shrinking under ten withdrawal requests")


def withdraw(ledger: Ledger, payer: LocalAccount) -> TxResult:
    return ledger.withdraw(payer)


def escrow_of(ledger: Ledger, account: str) -> int:
    return int(ledger.settlement.functions.escrowOf(account).call())


def pending_withdrawal_of(ledger: Ledger, account: str) -> tuple[int, int]:
    amount, unlocks_at = ledger.settlement.functions.pendingWithdrawalOf(account).call()
    return int(amount), int(unlocks_at)


def budget_of(ledger: Ledger, payer: str, spender: str) -> tuple[int, int, int]:
    remaining, scheduled, effective_at = ledger.settlement.functions.budgetOf(payer, spender).call()
    return int(remaining), int(scheduled), int(effective_at)


def advance_time(ledger: Ledger, seconds: int) -> None:
    """Move the chain's clock on by `seconds` and mine a block (Anvil's evm_increaseTime + evm_mine)."""
    ledger.w3.provider.make_request("evm_increaseTime", [seconds])  # type: ignore[arg-type]
    ledger.w3.provider.make_request("evm_mine", [])  # type: ignore[arg-type]
