"""Settlement's escrow accounts and budgets: deposits (approve, permit, for another account, minted
in by the sale), withdrawals that leave only after the unlock period, budgets that rise at once and
fall only after it, the unlock period's bounds, pause and roles.

Time moves with Anvil's clock (`evm_increaseTime`); every refusal is asserted by its exact custom
error and values, every event by its exact args.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest
from eth_account.signers.local import LocalAccount

from ledger.chain.client import Budget, Ledger, PendingWithdrawal, role_id
from ledger.errors import ContractRevert, WithdrawalLocked
from ledger.units import ONE_TOKEN
from tests.support.assertions import ZERO_ADDRESS, events, latest_timestamp, reverts
from tests.support.ledger import advance_time

if TYPE_CHECKING:
    from tests.support.ledger import Actors

MAX_BUDGET = 2**96 - 1
DAY = 24 * 60 * 60


def test_unlock_period_is_the_deployment_default(ledger: Ledger) -> None:
    # The test settings name an RPC URL, so the deployment took the production default.
    assert ledger.unlock_period() == DAY
    assert ledger.settlement.functions.MIN_UNLOCK_PERIOD().call() == 60
    assert ledger.settlement.functions.MAX_UNLOCK_PERIOD().call() == 30 * DAY
    assert ledger.settlement.functions.MAX_BUDGET().call() == MAX_BUDGET


def assert_locked(ledger: Ledger, account: LocalAccount, unlocks_at: int) -> None:
    """withdraw() refuses with SettlementWithdrawalLocked(account, unlocksAt, now): `now` is the
    pending block's time, which Anvil takes from its (offset) clock, so only its range is exact."""
    with pytest.raises(ContractRevert) as info:
        ledger.withdraw(account)
    assert info.value.error == "SettlementWithdrawalLocked"
    assert type(info.value) is WithdrawalLocked
    args = info.value.args_by_name
    assert (args["account"], args["unlocksAt"]) == (account.address, unlocks_at)
    assert latest_timestamp(ledger) <= args["now"] < unlocks_at


# -- deposits ----------------------------------------------------------------------------------
def test_deposit_after_approve(ledger: Ledger, funded: Actors) -> None:
    ent = funded.enterprise.address

    tx = ledger.deposit(funded.enterprise, 250 * ONE_TOKEN + 7, permit=False)

    assert events(ledger.settlement.events.Deposited, tx) == [
        {"account": ent, "from": ent, "amount": 250 * ONE_TOKEN + 7}
    ]
    assert events(ledger.token.events.Transfer, tx) == [
        {"from": ent, "to": ledger.settlement.address, "value": 250 * ONE_TOKEN + 7}
    ]
    assert ledger.escrow_of(ent) == 250 * ONE_TOKEN + 7
    assert ledger.balance_of(ent) == 750 * ONE_TOKEN - 7
    assert ledger.total_escrowed() == ledger.balance_of(ledger.settlement.address) == 250 * ONE_TOKEN + 7
    assert ledger.allowance(ent, ledger.settlement.address) == 0


def test_deposit_with_permit_is_one_transaction(ledger: Ledger, funded: Actors) -> None:
    ent = funded.enterprise.address

    tx = ledger.deposit(funded.enterprise, 40 * ONE_TOKEN)

    assert events(ledger.token.events.Approval, tx) == [
        {"owner": ent, "spender": ledger.settlement.address, "value": 40 * ONE_TOKEN}
    ]
    assert events(ledger.settlement.events.Deposited, tx) == [{"account": ent, "from": ent, "amount": 40 * ONE_TOKEN}]
    assert ledger.escrow_of(ent) == 40 * ONE_TOKEN
    assert ledger.token.functions.nonces(ent).call() == 1


def test_deposit_with_a_used_permit_still_deposits_on_the_allowance(ledger: Ledger, funded: Actors) -> None:
    owner = funded.enterprise
    deadline = latest_timestamp(ledger) + 3600
    v, r, s = ledger.sign_permit(ledger.token, owner, ledger.settlement.address, 10 * ONE_TOKEN, deadline)
    # Someone front-runs the permit itself: the deposit must not be griefed.
    ledger.permit(funded.other, owner.address, ledger.settlement.address, 10 * ONE_TOKEN, deadline, v, r, s)

    tx = ledger.deposit_with_permit(owner, 10 * ONE_TOKEN, deadline, v, r, s)

    assert events(ledger.settlement.events.Deposited, tx) == [
        {"account": owner.address, "from": owner.address, "amount": 10 * ONE_TOKEN}
    ]


def test_deposit_with_a_bad_permit_and_no_allowance_is_refused(ledger: Ledger, funded: Actors) -> None:
    owner = funded.enterprise
    deadline = latest_timestamp(ledger) - 1  # expired

    v, r, s = ledger.sign_permit(ledger.token, owner, ledger.settlement.address, ONE_TOKEN, deadline)
    with reverts("ERC20InsufficientAllowance", spender=ledger.settlement.address, allowance=0, needed=ONE_TOKEN):
        ledger.deposit_with_permit(owner, ONE_TOKEN, deadline, v, r, s)
    assert ledger.escrow_of(owner.address) == 0


def test_deposit_for_funds_another_account(ledger: Ledger, funded: Actors) -> None:
    ent, dev = funded.enterprise.address, funded.developer.address
    ledger.set_allowlisted(funded.operator, dev, True)

    tx = ledger.deposit_for(funded.enterprise, dev, 3 * ONE_TOKEN)

    assert events(ledger.settlement.events.Deposited, tx) == [{"account": dev, "from": ent, "amount": 3 * ONE_TOKEN}]
    assert ledger.escrow_of(dev) == 3 * ONE_TOKEN
    assert ledger.escrow_of(ent) == 0
    assert ledger.balance_of(ent) == 997 * ONE_TOKEN


def test_deposit_for_a_non_allowlisted_account_is_refused(ledger: Ledger, funded: Actors) -> None:
    with reverts("SettlementNotAllowlisted", account=funded.developer.address):
        ledger.deposit_for(funded.enterprise, funded.developer.address, ONE_TOKEN)
    assert ledger.escrow_of(funded.developer.address) == 0


def test_deposit_by_a_non_allowlisted_holder_is_refused(ledger: Ledger, funded: Actors) -> None:
    ledger.set_allowlisted(funded.operator, funded.enterprise.address, False)

    with reverts("ComputeTokenNotAllowlisted", account=funded.enterprise.address):
        ledger.deposit(funded.enterprise, ONE_TOKEN, permit=False)
    assert ledger.escrow_of(funded.enterprise.address) == 0


def test_zero_deposits_are_refused(ledger: Ledger, funded: Actors) -> None:
    with reverts("SettlementZeroAmount"):
        ledger.deposit(funded.enterprise, 0, permit=False)
    with reverts("SettlementZeroAmount"):
        ledger.deposit_for(funded.enterprise, funded.enterprise.address, 0)


def test_deposit_above_the_wallet_is_refused(ledger: Ledger, funded: Actors) -> None:
    ent = funded.enterprise.address
    with reverts("ERC20InsufficientBalance", sender=ent, balance=1_000 * ONE_TOKEN, needed=1_000 * ONE_TOKEN + 1):
        ledger.deposit(funded.enterprise, 1_000 * ONE_TOKEN + 1, permit=False)


def test_credit_minted_only_by_depositor_role_and_only_what_was_minted_in(ledger: Ledger, funded: Actors) -> None:
    ent = funded.enterprise.address
    with reverts("AccessControlUnauthorizedAccount", account=funded.operator.address,
                 neededRole=role_id("DEPOSITOR_ROLE")):
        ledger.credit_minted(funded.operator, ent, ONE_TOKEN)

    ledger.grant_role(funded.operator, "DEPOSITOR_ROLE", funded.operator.address)
    with reverts("SettlementUnbackedCredit", amount=ONE_TOKEN, unbacked=0):
        ledger.credit_minted(funded.operator, ent, ONE_TOKEN)
    ledger.mint(funded.operator, ledger.settlement.address, 2 * ONE_TOKEN)
    with reverts("SettlementUnbackedCredit", amount=3 * ONE_TOKEN, unbacked=2 * ONE_TOKEN):
        ledger.credit_minted(funded.operator, ent, 3 * ONE_TOKEN)
    with reverts("SettlementZeroAmount"):
        ledger.credit_minted(funded.operator, ent, 0)
    with reverts("SettlementNotAllowlisted", account=funded.developer.address):
        ledger.credit_minted(funded.operator, funded.developer.address, ONE_TOKEN)

    tx = ledger.credit_minted(funded.operator, ent, 2 * ONE_TOKEN)

    assert events(ledger.settlement.events.Deposited, tx) == [
        {"account": ent, "from": funded.operator.address, "amount": 2 * ONE_TOKEN}
    ]
    assert ledger.total_escrowed() == ledger.balance_of(ledger.settlement.address) == 2 * ONE_TOKEN


# -- withdrawals -------------------------------------------------------------------------------
def test_withdrawal_waits_for_the_unlock_period(ledger: Ledger, escrowed: Actors) -> None:
    ent = escrowed.enterprise.address

    tx = ledger.request_withdrawal(escrowed.enterprise, 100 * ONE_TOKEN)
    requested_at = latest_timestamp(ledger)

    unlocks_at = requested_at + DAY
    assert events(ledger.settlement.events.WithdrawalRequested, tx) == [
        {"account": ent, "amount": 100 * ONE_TOKEN, "unlocksAt": unlocks_at}
    ]
    assert ledger.pending_withdrawal_of(ent) == PendingWithdrawal(100 * ONE_TOKEN, unlocks_at)
    assert ledger.escrow_of(ent) == 600 * ONE_TOKEN  # still escrowed until withdrawn

    advance_time(ledger, DAY - 10)
    assert_locked(ledger, escrowed.enterprise, unlocks_at)

    advance_time(ledger, 10)
    tx = ledger.withdraw(escrowed.enterprise)

    assert events(ledger.settlement.events.Withdrawn, tx) == [{"account": ent, "amount": 100 * ONE_TOKEN}]
    assert events(ledger.token.events.Transfer, tx) == [
        {"from": ledger.settlement.address, "to": ent, "value": 100 * ONE_TOKEN}
    ]
    assert ledger.escrow_of(ent) == 500 * ONE_TOKEN
    assert ledger.balance_of(ent) == 500 * ONE_TOKEN
    assert ledger.pending_withdrawal_of(ent) == PendingWithdrawal(0, 0)
    assert ledger.total_escrowed() == ledger.balance_of(ledger.settlement.address) == 500 * ONE_TOKEN


def test_a_new_request_replaces_the_old_and_restarts_the_clock(ledger: Ledger, escrowed: Actors) -> None:
    ent = escrowed.enterprise.address
    ledger.request_withdrawal(escrowed.enterprise, 100 * ONE_TOKEN)
    advance_time(ledger, DAY // 2)

    ledger.request_withdrawal(escrowed.enterprise, 600 * ONE_TOKEN)
    unlocks_at = latest_timestamp(ledger) + DAY

    assert ledger.pending_withdrawal_of(ent) == PendingWithdrawal(600 * ONE_TOKEN, unlocks_at)
    advance_time(ledger, DAY // 2 + 1)
    assert_locked(ledger, escrowed.enterprise, unlocks_at)


def test_a_zero_request_cancels(ledger: Ledger, escrowed: Actors) -> None:
    ent = escrowed.enterprise.address
    ledger.request_withdrawal(escrowed.enterprise, 100 * ONE_TOKEN)

    tx = ledger.request_withdrawal(escrowed.enterprise, 0)

    assert events(ledger.settlement.events.WithdrawalRequested, tx) == [{"account": ent, "amount": 0, "unlocksAt": 0}]
    assert ledger.pending_withdrawal_of(ent) == PendingWithdrawal(0, 0)
    advance_time(ledger, DAY)
    with reverts("SettlementNoWithdrawalPending", account=ent):
        ledger.withdraw(escrowed.enterprise)


def test_a_request_above_escrow_is_refused(ledger: Ledger, escrowed: Actors) -> None:
    ent = escrowed.enterprise.address
    with reverts("SettlementWithdrawalAboveEscrow", account=ent, amount=600 * ONE_TOKEN + 1, escrow=600 * ONE_TOKEN):
        ledger.request_withdrawal(escrowed.enterprise, 600 * ONE_TOKEN + 1)
    with reverts("SettlementNoWithdrawalPending", account=ent):
        ledger.withdraw(escrowed.enterprise)


def test_a_delisted_account_cannot_withdraw_to_its_wallet(ledger: Ledger, escrowed: Actors) -> None:
    ent = escrowed.enterprise.address
    ledger.request_withdrawal(escrowed.enterprise, ONE_TOKEN)
    advance_time(ledger, DAY)
    ledger.set_allowlisted(escrowed.operator, ent, False)

    with reverts("ComputeTokenNotAllowlisted", account=ent):
        ledger.withdraw(escrowed.enterprise)
    assert ledger.escrow_of(ent) == 600 * ONE_TOKEN


# -- budgets -----------------------------------------------------------------------------------
def test_a_new_budget_applies_at_once(ledger: Ledger, escrowed: Actors) -> None:
    ent, dev = escrowed.enterprise.address, escrowed.developer.address
    assert ledger.budget_of(ent, dev) == Budget(0, 0, 0)

    tx = ledger.set_budget(escrowed.enterprise, dev, 50 * ONE_TOKEN)

    assert events(ledger.settlement.events.BudgetSet, tx) == [
        {"payer": ent, "spender": dev, "amount": 50 * ONE_TOKEN, "effectiveAt": latest_timestamp(ledger)}
    ]
    assert ledger.budget_of(ent, dev) == Budget(50 * ONE_TOKEN, 0, 0)


def test_a_cut_applies_after_the_unlock_period(ledger: Ledger, escrowed: Actors) -> None:
    ent, dev = escrowed.enterprise.address, escrowed.developer.address
    ledger.set_budget(escrowed.enterprise, dev, 50 * ONE_TOKEN)

    tx = ledger.set_budget(escrowed.enterprise, dev, 20 * ONE_TOKEN)
    effective_at = latest_timestamp(ledger) + DAY

    assert events(ledger.settlement.events.BudgetSet, tx) == [
        {"payer": ent, "spender": dev, "amount": 20 * ONE_TOKEN, "effectiveAt": effective_at}
    ]
    budget = ledger.budget_of(ent, dev)
    assert budget == Budget(50 * ONE_TOKEN, 20 * ONE_TOKEN, effective_at)
    assert budget.cut_pending and budget.effective == 20 * ONE_TOKEN

    advance_time(ledger, DAY - 5)
    assert ledger.budget_of(ent, dev) == Budget(50 * ONE_TOKEN, 20 * ONE_TOKEN, effective_at)
    advance_time(ledger, 5)
    assert ledger.budget_of(ent, dev) == Budget(20 * ONE_TOKEN, 0, 0)


def test_a_cut_to_zero(ledger: Ledger, escrowed: Actors) -> None:
    ent, dev = escrowed.enterprise.address, escrowed.developer.address
    ledger.set_budget(escrowed.enterprise, dev, 50 * ONE_TOKEN)
    ledger.set_budget(escrowed.enterprise, dev, 0)
    effective_at = latest_timestamp(ledger) + DAY

    assert ledger.budget_of(ent, dev) == Budget(50 * ONE_TOKEN, 0, effective_at)
    assert ledger.budget_of(ent, dev).effective == 0
    advance_time(ledger, DAY)
    assert ledger.budget_of(ent, dev) == Budget(0, 0, 0)


def test_a_raise_cancels_a_pending_cut(ledger: Ledger, escrowed: Actors) -> None:
    ent, dev = escrowed.enterprise.address, escrowed.developer.address
    ledger.set_budget(escrowed.enterprise, dev, 50 * ONE_TOKEN)
    ledger.set_budget(escrowed.enterprise, dev, 20 * ONE_TOKEN)

    tx = ledger.set_budget(escrowed.enterprise, dev, 50 * ONE_TOKEN)

    assert events(ledger.settlement.events.BudgetSet, tx) == [
        {"payer": ent, "spender": dev, "amount": 50 * ONE_TOKEN, "effectiveAt": latest_timestamp(ledger)}
    ]
    assert ledger.budget_of(ent, dev) == Budget(50 * ONE_TOKEN, 0, 0)
    advance_time(ledger, DAY)
    assert ledger.budget_of(ent, dev) == Budget(50 * ONE_TOKEN, 0, 0)


def test_a_second_cut_replaces_the_first(ledger: Ledger, escrowed: Actors) -> None:
    ent, dev = escrowed.enterprise.address, escrowed.developer.address
    ledger.set_budget(escrowed.enterprise, dev, 50 * ONE_TOKEN)
    ledger.set_budget(escrowed.enterprise, dev, 30 * ONE_TOKEN)
    advance_time(ledger, DAY // 2)

    ledger.set_budget(escrowed.enterprise, dev, 10 * ONE_TOKEN)
    effective_at = latest_timestamp(ledger) + DAY

    assert ledger.budget_of(ent, dev) == Budget(50 * ONE_TOKEN, 10 * ONE_TOKEN, effective_at)
    advance_time(ledger, DAY // 2 + 1)  # the first cut's time: replaced, so nothing applies yet
    assert ledger.budget_of(ent, dev) == Budget(50 * ONE_TOKEN, 10 * ONE_TOKEN, effective_at)


def test_a_raise_after_a_matured_cut_starts_from_the_cut(ledger: Ledger, escrowed: Actors) -> None:
    ent, dev = escrowed.enterprise.address, escrowed.developer.address
    ledger.set_budget(escrowed.enterprise, dev, 50 * ONE_TOKEN)
    ledger.set_budget(escrowed.enterprise, dev, 20 * ONE_TOKEN)
    advance_time(ledger, DAY)

    # 30 is a raise over the applied 20 (not a cut under the old 50): it applies at once.
    tx = ledger.set_budget(escrowed.enterprise, dev, 30 * ONE_TOKEN)

    assert events(ledger.settlement.events.BudgetSet, tx)[0]["effectiveAt"] == latest_timestamp(ledger)
    assert ledger.budget_of(ent, dev) == Budget(30 * ONE_TOKEN, 0, 0)


def test_budget_bounds_and_spenders(ledger: Ledger, escrowed: Actors) -> None:
    ent, dev = escrowed.enterprise.address, escrowed.developer.address
    with reverts("SettlementBudgetTooLarge", amount=MAX_BUDGET + 1, max=MAX_BUDGET):
        ledger.set_budget(escrowed.enterprise, dev, MAX_BUDGET + 1)
    with reverts("SettlementInvalidSpender", spender=ent):
        ledger.set_budget(escrowed.enterprise, ent, ONE_TOKEN)
    with reverts("SettlementInvalidSpender", spender=ZERO_ADDRESS):
        ledger.set_budget(escrowed.enterprise, ZERO_ADDRESS, ONE_TOKEN)

    ledger.set_budget(escrowed.enterprise, dev, MAX_BUDGET)
    assert ledger.budget_of(ent, dev) == Budget(MAX_BUDGET, 0, 0)


def test_budgets_are_per_payer(ledger: Ledger, escrowed: Actors) -> None:
    ent, dev, other = escrowed.enterprise.address, escrowed.developer.address, escrowed.other.address
    ledger.set_budget(escrowed.enterprise, dev, 5 * ONE_TOKEN)

    assert ledger.budget_of(ent, other) == Budget(0, 0, 0)
    assert ledger.budget_of(other, dev) == Budget(0, 0, 0)
    assert ledger.budget_of(dev, ent) == Budget(0, 0, 0)


# -- the unlock period -------------------------------------------------------------------------
def test_set_unlock_period_within_bounds(ledger: Ledger, escrowed: Actors) -> None:
    tx = ledger.set_unlock_period(escrowed.operator, 15 * 60)

    assert events(ledger.settlement.events.UnlockPeriodSet, tx) == [{"unlockPeriod": 15 * 60}]
    assert ledger.unlock_period() == 15 * 60
    ledger.request_withdrawal(escrowed.enterprise, ONE_TOKEN)
    assert ledger.pending_withdrawal_of(escrowed.enterprise.address).unlocks_at == latest_timestamp(ledger) + 15 * 60

    for seconds in (59, 30 * DAY + 1, 0):
        with reverts("SettlementUnlockPeriodOutOfRange", unlockPeriod=seconds, min=60, max=30 * DAY):
            ledger.set_unlock_period(escrowed.operator, seconds)
    ledger.set_unlock_period(escrowed.operator, 60)
    ledger.set_unlock_period(escrowed.operator, 30 * DAY)
    assert ledger.unlock_period() == 30 * DAY


def test_only_admin_sets_the_unlock_period(ledger: Ledger, actors: Actors) -> None:
    with reverts("AccessControlUnauthorizedAccount", account=actors.settler.address,
                 neededRole=role_id("DEFAULT_ADMIN_ROLE")):
        ledger.set_unlock_period(actors.settler, 60)
    assert ledger.unlock_period() == DAY


# -- pause -------------------------------------------------------------------------------------
def test_pausing_settlement_stops_escrow_and_budget_changes(ledger: Ledger, escrowed: Actors) -> None:
    ent = escrowed.enterprise
    ledger.request_withdrawal(ent, ONE_TOKEN)
    advance_time(ledger, DAY)
    with reverts("AccessControlUnauthorizedAccount", account=ent.address, neededRole=role_id("PAUSER_ROLE")):
        ledger.pause_settlement(ent)

    tx = ledger.pause_settlement(escrowed.operator)

    assert events(ledger.settlement.events.Paused, tx) == [{"account": escrowed.operator.address}]
    assert ledger.settlement_paused() and not ledger.paused()
    for attempt in (
        lambda: ledger.deposit(ent, ONE_TOKEN, permit=False),
        lambda: ledger.deposit_for(ent, ent.address, ONE_TOKEN),
        lambda: ledger.request_withdrawal(ent, 2 * ONE_TOKEN),
        lambda: ledger.withdraw(ent),
        lambda: ledger.set_budget(ent, escrowed.developer.address, ONE_TOKEN),
    ):
        with reverts("EnforcedPause"):
            attempt()
    ledger.unpause_settlement(escrowed.operator)
    ledger.withdraw(ent)
    assert ledger.escrow_of(ent.address) == 599 * ONE_TOKEN


def test_pausing_the_token_stops_withdrawals(ledger: Ledger, escrowed: Actors) -> None:
    ledger.request_withdrawal(escrowed.enterprise, ONE_TOKEN)
    advance_time(ledger, DAY)
    ledger.pause(escrowed.operator)

    with reverts("EnforcedPause"):
        ledger.withdraw(escrowed.enterprise)
    assert ledger.escrow_of(escrowed.enterprise.address) == 600 * ONE_TOKEN
