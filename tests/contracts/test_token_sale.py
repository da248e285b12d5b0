"""TokenSale behaviour: tiered quotes, buying with approve or permit, issuance, tier and treasury admin."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest

from ledger.chain.client import Ledger, ref_bytes32, role_id
from ledger.chain.deploy import DEFAULT_SALE_TIERS
from ledger.chain.sender import TxResult
from ledger.units import ONE_TOKEN
from tests.support.assertions import ZERO_ADDRESS, events, latest_timestamp, reverts

if TYPE_CHECKING:
    from tests.support.ledger import Actors

DOLLAR = 10**6  # the test stablecoin has 6 decimals
TIER1_MIN = DEFAULT_SALE_TIERS[1][0]
TIER2_MIN = DEFAULT_SALE_TIERS[2][0]








def approve_payment(ledger: Ledger, owner: Any, amount: int) -> TxResult:
    return ledger._transact(owner, ledger.payment_token.functions.approve(ledger.sale.address, amount))


def buy_with_allowance(ledger: Ledger, buyer: Any, amount: int, max_cost: int) -> TxResult:
    return ledger._transact(buyer, ledger.sale.functions.buy(amount, max_cost))


def payment_allowance(ledger: Ledger, owner: str) -> int:
    return int(ledger.payment_token.functions.allowance(owner, ledger.sale.address).call())


# -- quotes ----------------------------------------------------------------------------------
def test_deployment_tiers(ledger: Ledger, actors: Actors) -> None:
    assert DEFAULT_SALE_TIERS == ((0, 10_000), (100_000 * ONE_TOKEN, 9_500), (1_000_000 * ONE_TOKEN, 9_000))
    assert ledger.sale_tiers() == [tuple(t) for t in DEFAULT_SALE_TIERS]
    assert ledger.sale.functions.treasury().call() == actors.operator.address


@pytest.mark.parametrize(
    ("amount", "cost", "tier"),
    [
        (0, 0, 0),
        (1, 1, 0),  # 1e-14 of a dollar unit rounds up to one unit
        (10**14, 1, 0),  # exactly one unit
        (10**14 + 1, 2, 0),
        (ONE_TOKEN, 10_000, 0),
        (TIER1_MIN - 1, 1_000_000_000, 0),  # 999,999.99...e-18 tokens at 0.01: rounds up to 1,000 dollars
        (TIER1_MIN, 950_000_000, 1),
        (TIER1_MIN + 1, 950_000_001, 1),
        (TIER2_MIN - 1, 9_500_000_000, 1),
        (TIER2_MIN, 9_000_000_000, 2),
        (10 * TIER2_MIN, 90_000_000_000, 2),
    ],
)
def test_quote_at_tier_boundaries(ledger: Ledger, amount: int, cost: int, tier: int) -> None:
    assert ledger.quote_purchase(amount) == (cost, tier)


# -- buying ----------------------------------------------------------------------------------
@pytest.mark.parametrize("permit", [False, True], ids=["approve", "permit"])
def test_buy_moves_payment_to_treasury_and_mints(ledger: Ledger, funded: Actors, permit: bool) -> None:
    buyer, treasury = funded.enterprise.address, funded.operator.address
    amount = 250 * ONE_TOKEN + 1
    cost = 2_500_001  # ceil((250e18 + 1) * 10_000 / 1e18)
    assert ledger.quote_purchase(amount) == (cost, 0)
    supply, treasury_before = ledger.total_supply(), ledger.payment_balance(treasury)

    tx = ledger.buy(funded.enterprise, amount, permit=permit)

    assert events(ledger.sale.events.Purchased, tx) == [{"buyer": buyer, "amount": amount, "cost": cost, "tier": 0}]
    assert events(ledger.token.events.Transfer, tx) == [{"from": ZERO_ADDRESS, "to": buyer, "value": amount}]
    assert events(ledger.payment_token.events.Transfer, tx) == [{"from": buyer, "to": treasury, "value": cost}]
    assert ledger.payment_balance(buyer) == 10_000 * DOLLAR - cost
    assert ledger.payment_balance(treasury) == treasury_before + cost
    assert ledger.balance_of(buyer) == 1_000 * ONE_TOKEN + amount
    assert ledger.total_supply() == supply + amount
    assert payment_allowance(ledger, buyer) == 0
    assert ledger.payment_token.functions.nonces(buyer).call() == (1 if permit else 0)


def test_buy_at_tier_minimum_uses_that_tier(ledger: Ledger, funded: Actors) -> None:
    tx = ledger.buy(funded.enterprise, TIER1_MIN)

    assert events(ledger.sale.events.Purchased, tx) == [
        {"buyer": funded.enterprise.address, "amount": TIER1_MIN, "cost": 950 * DOLLAR, "tier": 1}
    ]
    assert ledger.payment_balance(funded.enterprise.address) == 9_050 * DOLLAR


def test_buy_one_unit_below_tier_minimum_uses_the_lower_tier(ledger: Ledger, funded: Actors) -> None:
    tx = ledger.buy(funded.enterprise, TIER1_MIN - 1, permit=False)

    assert events(ledger.sale.events.Purchased, tx) == [
        {"buyer": funded.enterprise.address, "amount": TIER1_MIN - 1, "cost": 1_000 * DOLLAR, "tier": 0}
    ]


def test_buy_charges_the_quote_not_the_limit(ledger: Ledger, funded: Actors) -> None:
    buyer = funded.enterprise.address

    tx = ledger.buy(funded.enterprise, ONE_TOKEN, max_cost=50_000, permit=False)

    assert events(ledger.sale.events.Purchased, tx) == [
        {"buyer": buyer, "amount": ONE_TOKEN, "cost": 10_000, "tier": 0}
    ]
    assert ledger.payment_balance(buyer) == 10_000 * DOLLAR - 10_000
    assert payment_allowance(ledger, buyer) == 40_000


def test_buy_with_balance_short(ledger: Ledger, actors: Actors) -> None:
    buyer = actors.developer
    ledger.set_allowlisted(actors.operator, buyer.address, True)
    ledger.mint_payment(actors.operator, buyer.address, 1 * DOLLAR)

    # 200 tokens cost 2 dollars; the buyer approved 2 but holds only 1.
    with reverts("TokenSalePaymentShort", buyer=buyer.address, required=2 * DOLLAR, available=1 * DOLLAR):
        ledger.buy(buyer, 200 * ONE_TOKEN, permit=False)
    with reverts("TokenSalePaymentShort", buyer=buyer.address, required=2 * DOLLAR, available=1 * DOLLAR):
        ledger.buy(buyer, 200 * ONE_TOKEN, permit=True)
    assert ledger.payment_balance(buyer.address) == 1 * DOLLAR
    assert ledger.balance_of(buyer.address) == 0


def test_buy_with_allowance_short(ledger: Ledger, funded: Actors) -> None:
    buyer = funded.enterprise.address
    approve_payment(ledger, funded.enterprise, 4 * DOLLAR)

    with reverts("TokenSalePaymentShort", buyer=buyer, required=5 * DOLLAR, available=4 * DOLLAR):
        buy_with_allowance(ledger, funded.enterprise, 500 * ONE_TOKEN, 5 * DOLLAR)
    assert ledger.payment_balance(buyer) == 10_000 * DOLLAR
    assert ledger.balance_of(buyer) == 1_000 * ONE_TOKEN


def test_buy_with_a_failed_permit_falls_back_to_the_allowance(ledger: Ledger, funded: Actors) -> None:
    buyer = funded.enterprise
    expired = latest_timestamp(ledger) - 1
    v, r, s = ledger.sign_permit(ledger.payment_token, buyer, ledger.sale.address, 5 * DOLLAR, expired)
    buy = ledger.sale.functions.buyWithPermit(500 * ONE_TOKEN, 5 * DOLLAR, expired, v, r, s)

    with reverts("TokenSalePaymentShort", buyer=buyer.address, required=5 * DOLLAR, available=0):
        ledger._transact(buyer, buy)

    approve_payment(ledger, buyer, 5 * DOLLAR)
    tx = ledger._transact(buyer, buy)
    assert events(ledger.sale.events.Purchased, tx) == [
        {"buyer": buyer.address, "amount": 500 * ONE_TOKEN, "cost": 5 * DOLLAR, "tier": 0}
    ]


def test_buy_with_a_front_run_permit_still_succeeds(ledger: Ledger, funded: Actors) -> None:
    buyer = funded.enterprise
    deadline = latest_timestamp(ledger) + 3600
    v, r, s = ledger.sign_permit(ledger.payment_token, buyer, ledger.sale.address, 5 * DOLLAR, deadline)
    # Someone watching the pool submits the permit first.
    front_run = ledger.payment_token.functions.permit(buyer.address, ledger.sale.address, 5 * DOLLAR, deadline, v, r, s)
    ledger._transact(funded.other, front_run)

    tx = ledger._transact(buyer, ledger.sale.functions.buyWithPermit(500 * ONE_TOKEN, 5 * DOLLAR, deadline, v, r, s))

    assert events(ledger.sale.events.Purchased, tx) == [
        {"buyer": buyer.address, "amount": 500 * ONE_TOKEN, "cost": 5 * DOLLAR, "tier": 0}
    ]
    assert ledger.balance_of(buyer.address) == 1_500 * ONE_TOKEN


@pytest.mark.parametrize("permit", [False, True], ids=["approve", "permit"])
def test_buy_above_max_cost_is_refused(ledger: Ledger, funded: Actors, permit: bool) -> None:
    with reverts("TokenSaleCostAboveMax", cost=10_000, maxCost=9_999):
        ledger.buy(funded.enterprise, ONE_TOKEN, max_cost=9_999, permit=permit)
    assert ledger.payment_balance(funded.enterprise.address) == 10_000 * DOLLAR


def test_buy_by_non_allowlisted_buyer_is_refused(ledger: Ledger, actors: Actors) -> None:
    buyer = actors.developer
    ledger.mint_payment(actors.operator, buyer.address, 100 * DOLLAR)

    with reverts("ComputeTokenNotAllowlisted", account=buyer.address):
        ledger.buy(buyer, ONE_TOKEN)
    with reverts("ComputeTokenNotAllowlisted", account=buyer.address):
        ledger.buy(buyer, ONE_TOKEN, permit=False)
    assert ledger.payment_balance(buyer.address) == 100 * DOLLAR


@pytest.mark.parametrize("permit", [False, True], ids=["approve", "permit"])
def test_buy_zero_is_refused(ledger: Ledger, funded: Actors, permit: bool) -> None:
    with reverts("TokenSaleZeroAmount"):
        ledger.buy(funded.enterprise, 0, max_cost=1, permit=permit)


def test_buy_while_token_paused_is_refused(ledger: Ledger, funded: Actors) -> None:
    ledger.pause(funded.operator)
    with reverts("EnforcedPause"):
        ledger.buy(funded.enterprise, ONE_TOKEN)
    assert ledger.payment_balance(funded.enterprise.address) == 10_000 * DOLLAR


# -- issuance --------------------------------------------------------------------------------
def test_issue_by_issuer_role(ledger: Ledger, actors: Actors) -> None:
    ledger.set_allowlisted(actors.operator, actors.enterprise.address, True)
    supply = ledger.total_supply()

    tx = ledger.issue(actors.operator, actors.enterprise.address, 50 * ONE_TOKEN, "INV-2024-0001")

    ref = b"INV-2024-0001" + b"\x00" * 19
    assert ref_bytes32("INV-2024-0001") == ref
    assert events(ledger.sale.events.Issued, tx) == [
        {"to": actors.enterprise.address, "amount": 50 * ONE_TOKEN, "ref": ref}
    ]
    assert events(ledger.token.events.Transfer, tx) == [
        {"from": ZERO_ADDRESS, "to": actors.enterprise.address, "value": 50 * ONE_TOKEN}
    ]
    assert ledger.balance_of(actors.enterprise.address) == 50 * ONE_TOKEN
    assert ledger.total_supply() == supply + 50 * ONE_TOKEN


def test_issue_without_issuer_role_is_refused(ledger: Ledger, actors: Actors) -> None:
    ledger.set_allowlisted(actors.operator, actors.enterprise.address, True)
    # Even MINTER_ROLE on the token does not make a key an issuer on the sale.
    ledger.grant_role(actors.operator, "MINTER_ROLE", actors.other.address)

    with reverts("AccessControlUnauthorizedAccount", account=actors.other.address, neededRole=role_id("ISSUER_ROLE")):
        ledger.issue(actors.other, actors.enterprise.address, ONE_TOKEN, "INV-1")
    assert ledger.balance_of(actors.enterprise.address) == 0


def test_issue_zero_or_to_non_allowlisted_is_refused(ledger: Ledger, actors: Actors) -> None:
    with reverts("ComputeTokenNotAllowlisted", account=actors.developer.address):
        ledger.issue(actors.operator, actors.developer.address, ONE_TOKEN, "INV-2")
    ledger.set_allowlisted(actors.operator, actors.developer.address, True)
    with reverts("TokenSaleZeroAmount"):
        ledger.issue(actors.operator, actors.developer.address, 0, "INV-2")


def test_issue_reference_longer_than_32_bytes_is_refused_locally() -> None:
    with pytest.raises(ValueError, match="33 bytes"):
        ref_bytes32("x" * 33)


# -- tiers and treasury ----------------------------------------------------------------------
def set_tiers(ledger: Ledger, signer: Any, tiers: list[tuple[int, int]]) -> TxResult:
    return ledger._transact(signer, ledger.sale.functions.setTiers([list(t) for t in tiers]))


@pytest.mark.parametrize(
    ("tiers", "index"),
    [
        ([], 0),
        ([(1, 10_000)], 0),  # does not start at 0
        ([(0, 0)], 0),  # zero price
        ([(0, 10_000), (0, 9_000)], 1),  # not strictly rising
        ([(0, 10_000), (5, 0)], 1),
        ([(0, 10_000), (10, 9_000), (10, 8_000)], 2),
        ([(0, 10_000), (10, 9_000), (5, 8_000)], 2),
    ],
)
def test_set_tiers_validation(ledger: Ledger, actors: Actors, tiers: list[tuple[int, int]], index: int) -> None:
    with reverts("TokenSaleInvalidTiers", index=index):
        set_tiers(ledger, actors.operator, tiers)
    assert ledger.sale_tiers() == [tuple(t) for t in DEFAULT_SALE_TIERS]


def test_set_tiers_replaces_the_tiers(ledger: Ledger, funded: Actors) -> None:
    tiers = [(0, 20_000), (10 * ONE_TOKEN, 15_000)]

    tx = set_tiers(ledger, funded.operator, tiers)

    [emitted] = events(ledger.sale.events.TiersSet, tx)
    assert [(t["minAmount"], t["price"]) for t in emitted["tiers"]] == tiers
    assert ledger.sale_tiers() == tiers
    assert ledger.quote_purchase(10 * ONE_TOKEN - 1) == (200_000, 0)
    assert ledger.quote_purchase(10 * ONE_TOKEN) == (150_000, 1)
    assert ledger.quote_purchase(TIER2_MIN) == (15_000 * DOLLAR, 1)


def test_only_admin_sets_tiers(ledger: Ledger, actors: Actors) -> None:
    with reverts(
        "AccessControlUnauthorizedAccount", account=actors.other.address, neededRole=role_id("DEFAULT_ADMIN_ROLE")
    ):
        set_tiers(ledger, actors.other, [(0, 1)])
    assert ledger.sale_tiers() == [tuple(t) for t in DEFAULT_SALE_TIERS]


def test_set_treasury(ledger: Ledger, funded: Actors) -> None:
    new_treasury = funded.other.address
    set_treasury = ledger.sale.functions.setTreasury

    with reverts("TokenSaleInvalidTreasury", treasury=ZERO_ADDRESS):
        ledger._transact(funded.operator, set_treasury(ZERO_ADDRESS))
    with reverts(
        "AccessControlUnauthorizedAccount", account=funded.other.address, neededRole=role_id("DEFAULT_ADMIN_ROLE")
    ):
        ledger._transact(funded.other, set_treasury(new_treasury))

    tx = ledger._transact(funded.operator, set_treasury(new_treasury))
    assert events(ledger.sale.events.TreasurySet, tx) == [{"treasury": new_treasury}]
    ledger.buy(funded.enterprise, ONE_TOKEN)
    assert ledger.payment_balance(new_treasury) == 10_000


# -- buying and issuing into escrow -------------------------------------------------------------
@pytest.mark.parametrize("permit", [False, True], ids=["approve", "permit"])
def test_buy_to_escrow_mints_into_settlement_and_credits_the_buyer(
    ledger: Ledger, funded: Actors, permit: bool
) -> None:
    buyer, treasury = funded.enterprise.address, funded.operator.address
    amount = 250 * ONE_TOKEN + 1
    cost = 2_500_001
    supply, treasury_before = ledger.total_supply(), ledger.payment_balance(treasury)

    tx = ledger.buy(funded.enterprise, amount, permit=permit, into_escrow=True)

    assert events(ledger.sale.events.Purchased, tx) == [{"buyer": buyer, "amount": amount, "cost": cost, "tier": 0}]
    assert events(ledger.token.events.Transfer, tx) == [
        {"from": ZERO_ADDRESS, "to": ledger.settlement.address, "value": amount}
    ]
    assert events(ledger.settlement.events.Deposited, tx) == [
        {"account": buyer, "from": ledger.sale.address, "amount": amount}
    ]
    assert events(ledger.payment_token.events.Transfer, tx) == [{"from": buyer, "to": treasury, "value": cost}]
    assert ledger.escrow_of(buyer) == amount
    assert ledger.balance_of(buyer) == 1_000 * ONE_TOKEN  # the wallet is untouched
    assert ledger.balance_of(ledger.settlement.address) == ledger.total_escrowed() == amount
    assert ledger.total_supply() == supply + amount
    assert ledger.payment_balance(treasury) == treasury_before + cost
    assert payment_allowance(ledger, buyer) == 0


def test_buy_to_escrow_refuses_a_non_allowlisted_buyer(ledger: Ledger, actors: Actors) -> None:
    buyer = actors.developer
    ledger.mint_payment(actors.operator, buyer.address, 10 * DOLLAR)
    approve_payment(ledger, buyer, 10 * DOLLAR)

    with reverts("SettlementNotAllowlisted", account=buyer.address):
        ledger._transact(buyer, ledger.sale.functions.buyToEscrow(ONE_TOKEN, 10 * DOLLAR))
    assert ledger.payment_balance(buyer.address) == 10 * DOLLAR
    assert ledger.escrow_of(buyer.address) == 0


def test_buy_to_escrow_over_the_limit_is_refused(ledger: Ledger, funded: Actors) -> None:
    approve_payment(ledger, funded.enterprise, 10 * DOLLAR)

    with reverts("TokenSaleCostAboveMax", cost=10_000, maxCost=9_999):
        ledger._transact(funded.enterprise, ledger.sale.functions.buyToEscrow(ONE_TOKEN, 9_999))
    assert ledger.escrow_of(funded.enterprise.address) == 0


def test_issue_to_escrow_by_issuer_role(ledger: Ledger, actors: Actors) -> None:
    account = actors.enterprise.address
    ledger.set_allowlisted(actors.operator, account, True)
    supply = ledger.total_supply()

    tx = ledger.issue(actors.operator, account, 50 * ONE_TOKEN, "INV-2024-0002", into_escrow=True)

    assert events(ledger.sale.events.Issued, tx) == [
        {"to": account, "amount": 50 * ONE_TOKEN, "ref": ref_bytes32("INV-2024-0002")}
    ]
    assert events(ledger.settlement.events.Deposited, tx) == [
        {"account": account, "from": ledger.sale.address, "amount": 50 * ONE_TOKEN}
    ]
    assert ledger.escrow_of(account) == 50 * ONE_TOKEN
    assert ledger.balance_of(account) == 0
    assert ledger.total_supply() == supply + 50 * ONE_TOKEN


def test_issue_to_escrow_refusals(ledger: Ledger, actors: Actors) -> None:
    account = actors.enterprise.address
    with reverts("AccessControlUnauthorizedAccount", account=actors.other.address, neededRole=role_id("ISSUER_ROLE")):
        ledger.issue(actors.other, account, ONE_TOKEN, "INV-3", into_escrow=True)
    with reverts("SettlementNotAllowlisted", account=account):
        ledger.issue(actors.operator, account, ONE_TOKEN, "INV-3", into_escrow=True)
    with reverts("TokenSaleZeroAmount"):
        ledger.issue(actors.operator, account, 0, "INV-3", into_escrow=True)
    assert ledger.total_escrowed() == 0
