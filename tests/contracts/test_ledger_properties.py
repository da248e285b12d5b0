"""Property test over the whole ledger: random sequences of buy / issue / transfer / approve / burn /
settle (over-balance and over-allowance settles included, and batch replays) against a Python model.

After every operation the chain must equal the model (no balance ever below zero, every refusal
the exact custom error the model predicts). After each sequence:
  * totalSupply == minted - burned, from the Transfer logs to and from the zero address;
  * the sum of Redeemed amounts == the burns made by Settlement transactions, per payer and spender;
  * every Redeemed / Shortfall event is the one the model predicts.

Each example runs inside its own EVM snapshot, reverted when it ends, so the function-scoped
`ledger` fixture is shared safely across examples.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import pytest
from eth_account import Account
from eth_account.signers.local import LocalAccount
from eth_utils import keccak
from hypothesis import HealthCheck, Phase, event, given, settings
from hypothesis import strategies as st

from ledger.chain.client import Ledger, SettlementItem
from ledger.chain.deploy import DEFAULT_SALE_TIERS
from ledger.errors import ContractRevert
from ledger.units import ONE_TOKEN

# property tests: hypothesis drives whole contract histories
pytestmark = pytest.mark.slow

if TYPE_CHECKING:
    from tests.support.ledger import Actors

ZERO_ADDRESS = "0x" + "00" * 20
MAX_UINT = 2**256 - 1
PAYMENT_FUNDS = 10_000 * 10**6
OPENING_BALANCE = 100 * ONE_TOKEN
# Account roles in a sequence: two enterprises (allowlisted, hold test dollars), one allowlisted
# developer, one developer who is never allowlisted.
ENTERPRISES = (0, 1)
ALLOWLISTED = (0, 1, 2)
ACCOUNTS = (0, 1, 2, 3)

account = st.sampled_from(ACCOUNTS)
amount = st.one_of(
    st.integers(0, 160).map(lambda n: n * ONE_TOKEN // 2),  # whole and half tokens, up to above balances
    st.integers(0, 10**6),  # dust in base units
)
allowance_amount = st.one_of(amount, st.just(MAX_UINT))
settle_item = st.one_of(
    st.tuples(account, account, amount),
    account.flatmap(lambda a: st.tuples(st.just(a), st.just(a), amount)),  # the developer is the payer
)

operation = st.one_of(
    st.tuples(st.just("buy"), st.sampled_from(ENTERPRISES), amount, st.booleans()),
    st.tuples(st.just("issue"), account, amount),
    st.tuples(st.just("transfer"), account, account, amount),
    st.tuples(st.just("approve"), account, account, allowance_amount),
    st.tuples(st.just("burn"), account, amount),
    # Settles are the point: listed twice, so twice as likely.
    st.tuples(st.just("settle"), st.lists(settle_item, min_size=1, max_size=3)),
    st.tuples(st.just("settle"), st.lists(settle_item, min_size=1, max_size=3)),
    st.tuples(st.just("replay")),
)


def sale_cost(amount: int) -> int:
    price = next(p for minimum, p in reversed(DEFAULT_SALE_TIERS) if amount >= minimum)
    return -(-amount * price // ONE_TOKEN)


@dataclass
class Model:
    """What the chain should hold for the sequence's accounts."""

    addresses: list[str]
    balances: dict[str, int] = field(default_factory=dict)
    allowances: Counter[tuple[str, str]] = field(default_factory=Counter)
    payments: dict[str, int] = field(default_factory=dict)
    supply: int = 0
    holder_burns: int = 0
    redeemed: Counter[tuple[str, str]] = field(default_factory=Counter)
    shortfalls: list[tuple[bytes, str, str, int, int]] = field(default_factory=list)
    settled: list[bytes] = field(default_factory=list)

    def allowlisted(self, address: str) -> bool:
        return self.addresses.index(address) in ALLOWLISTED

    def expect_transfer(self, sender: str, to: str, value: int) -> tuple[str, dict[str, Any]] | None:
        """The refusal ComputeToken._update then ERC20._update raise, or None when it moves."""
        if not self.allowlisted(to):
            return "ComputeTokenNotAllowlisted", {"account": to}
        if not self.allowlisted(sender):
            return "ComputeTokenNotAllowlisted", {"account": sender}
        if self.balances[sender] < value:
            return "ERC20InsufficientBalance", {"sender": sender, "balance": self.balances[sender], "needed": value}
        return None

    def redeem(self, payer: str, spender: str, owed: int) -> int:
        """ComputeToken.redeemBatch for one item: pay what the balance and allowance cover."""
        paid = min(owed, self.balances[payer])
        if spender != payer:
            allowed = self.allowances[(payer, spender)]
            paid = min(paid, allowed)
            if allowed != MAX_UINT:
                self.allowances[(payer, spender)] -= paid
        self.balances[payer] -= paid
        self.supply -= paid
        return paid


class Run:
    """One example: applies operations to the chain and the model, checking they agree."""

    def __init__(self, ledger: Ledger, actors: Actors) -> None:
        self.ledger = ledger
        self.operator, self.settler = actors.operator, actors.settler
        self.keys: list[LocalAccount] = [Account.create() for _ in ACCOUNTS]
        self.model = Model([k.address for k in self.keys])
        self.supply_before = ledger.total_supply()
        self.model.supply = self.supply_before
        for key in self.keys:
            self.model.balances[key.address] = 0
            self.model.payments[key.address] = 0
        for i in ALLOWLISTED:
            ledger.set_allowlisted(self.operator, self.keys[i].address, True)
        for i in ENTERPRISES:
            address = self.keys[i].address
            ledger.mint_payment(self.operator, address, PAYMENT_FUNDS)
            ledger.mint(self.operator, address, OPENING_BALANCE)
            self.model.payments[address] = PAYMENT_FUNDS
            self.model.balances[address] = OPENING_BALANCE
            self.model.supply += OPENING_BALANCE
        self.batches = 0

    def address(self, index: int) -> str:
        return self.keys[index].address

    def attempt(self, refusal: tuple[str, dict[str, Any]] | None, action: Any) -> Any:
        """Run `action`; it must fail with exactly `refusal`, or succeed when that is None."""
        event(f"refused: {refusal[0]}" if refusal else "succeeded")
        if refusal is None:
            return action()
        try:
            action()
        except ContractRevert as exc:
            assert (exc.error, exc.args_by_name) == refusal
            return None
        raise AssertionError(f"expected {refusal}, but the transaction succeeded")

    # -- operations --------------------------------------------------------------------------
    def apply(self, op: tuple[Any, ...]) -> None:
        getattr(self, "op_" + op[0])(*op[1:])
        self.check_balances()

    def op_buy(self, who: int, value: int, permit: bool) -> None:
        buyer, m = self.address(who), self.model
        refusal = ("TokenSaleZeroAmount", {}) if value == 0 else None
        self.attempt(refusal, lambda: self.ledger.buy(self.keys[who], value, permit=permit))
        if refusal is None:
            cost = sale_cost(value)
            m.balances[buyer] += value
            m.supply += value
            m.payments[buyer] -= cost

    def op_issue(self, to: int, value: int) -> None:
        address, m = self.address(to), self.model
        refusal: tuple[str, dict[str, Any]] | None = None
        if value == 0:
            refusal = ("TokenSaleZeroAmount", {})
        elif not m.allowlisted(address):
            refusal = ("ComputeTokenNotAllowlisted", {"account": address})
        self.attempt(refusal, lambda: self.ledger.issue(self.operator, address, value, "prop"))
        if refusal is None:
            m.balances[address] += value
            m.supply += value

    def op_transfer(self, frm: int, to: int, value: int) -> None:
        sender, recipient, m = self.address(frm), self.address(to), self.model
        refusal = m.expect_transfer(sender, recipient, value)
        self.attempt(refusal, lambda: self.ledger.transfer(self.keys[frm], recipient, value))
        if refusal is None:
            m.balances[sender] -= value
            m.balances[recipient] += value

    def op_approve(self, owner: int, spender: int, value: int) -> None:
        self.ledger.approve(self.keys[owner], self.address(spender), value)
        self.model.allowances[(self.address(owner), self.address(spender))] = value

    def op_burn(self, who: int, value: int) -> None:
        holder, m = self.address(who), self.model
        refusal: tuple[str, dict[str, Any]] | None = None
        if m.balances[holder] < value:
            refusal = ("ERC20InsufficientBalance", {"sender": holder, "balance": m.balances[holder], "needed": value})
        self.attempt(refusal, lambda: self.ledger.burn(self.keys[who], value))
        if refusal is None:
            m.balances[holder] -= value
            m.supply -= value
            m.holder_burns += value

    def op_settle(self, raw_items: list[tuple[int, int, int]]) -> None:
        m = self.model
        self.batches += 1
        batch_id = keccak(text=f"prop-batch-{self.batches}")
        items = [SettlementItem(self.address(p), self.address(s), a) for p, s, a in raw_items]
        result = self.ledger.settle_batch(self.settler, batch_id, keccak(batch_id), len(items), items)

        expected_redeemed, expected_shortfalls, total = [], [], 0
        for item in items:
            paid = m.redeem(item.payer, item.spender, item.amount)
            total += paid
            if paid:
                expected_redeemed.append((item.payer, item.spender, paid))
                m.redeemed[(item.payer, item.spender)] += paid
            if paid < item.amount:
                expected_shortfalls.append((item.payer, item.spender, item.amount, paid))
                m.shortfalls.append((batch_id, item.payer, item.spender, item.amount, paid))
        assert [(r.payer, r.spender, r.amount) for r in result.redeemed] == expected_redeemed
        assert [(s.payer, s.spender, s.owed, s.paid) for s in result.shortfalls] == expected_shortfalls
        assert result.total == total
        event("settle with a shortfall" if expected_shortfalls else "settle paid in full")
        m.settled.append(batch_id)

    def op_replay(self) -> None:
        if not self.model.settled:
            return
        batch_id = self.model.settled[-1]
        payer = self.address(0)
        refusal = ("SettlementBatchAlreadySettled", {"batchId": batch_id})
        self.attempt(
            refusal,
            lambda: self.ledger.settle_batch(
                self.settler, batch_id, keccak(b"again"), 1, [SettlementItem(payer, payer, 1)]
            ),
        )

    # -- checks ------------------------------------------------------------------------------
    def check_balances(self) -> None:
        m = self.model
        for address in m.addresses:
            assert m.balances[address] >= 0
            assert self.ledger.balance_of(address) == m.balances[address]
        assert self.ledger.total_supply() == m.supply

    def check_final(self, first_block: int) -> None:
        ledger, m = self.ledger, self.model
        for owner in m.addresses:
            assert ledger.payment_balance(owner) == m.payments[owner]
            for spender in m.addresses:
                assert ledger.allowance(owner, spender) == m.allowances[(owner, spender)]

        # Supply adds up, over the whole history of the token and over this sequence alone.
        everything = {"from_block": ledger.deployment.deploy_block, "to_block": "latest"}
        transfers = list(ledger.token.events.Transfer().get_logs(**everything))
        minted = sum(e["args"]["value"] for e in transfers if e["args"]["from"] == ZERO_ADDRESS)
        burned = sum(e["args"]["value"] for e in transfers if e["args"]["to"] == ZERO_ADDRESS)
        assert ledger.total_supply() == minted - burned == m.supply

        ours = [e for e in transfers if e["blockNumber"] >= first_block]
        minted_here = sum(e["args"]["value"] for e in ours if e["args"]["from"] == ZERO_ADDRESS)
        burned_here = sum(e["args"]["value"] for e in ours if e["args"]["to"] == ZERO_ADDRESS)
        assert m.supply - self.supply_before == minted_here - burned_here

        # Every Settlement burn is a Redeemed amount, per payer and spender, and nothing else burns there.
        window = {"from_block": first_block, "to_block": "latest"}
        events = ledger.settlement.events
        settle_txs = {e["transactionHash"] for e in events.BatchSettled().get_logs(**window)}
        assert len(settle_txs) == len(m.settled)
        redeemed_logs = list(events.Redeemed().get_logs(**window))
        redeemed = Counter[tuple[str, str]]()
        for e in redeemed_logs:
            redeemed[(e["args"]["payer"], e["args"]["spender"])] += e["args"]["amount"]
        burns_by_settlement = Counter[str]()
        for e in ours:
            if e["args"]["to"] == ZERO_ADDRESS and e["transactionHash"] in settle_txs:
                burns_by_settlement[e["args"]["from"]] += e["args"]["value"]
        redeemed_by_payer = Counter[str]()
        for (payer, _spender), value in redeemed.items():
            redeemed_by_payer[payer] += value
        assert +redeemed == +m.redeemed
        assert +burns_by_settlement == +redeemed_by_payer
        assert sum(redeemed.values()) + m.holder_burns == burned_here

        shortfalls = [
            (
                bytes(e["args"]["batchId"]),
                e["args"]["payer"],
                e["args"]["spender"],
                e["args"]["owed"],
                e["args"]["paid"],
            )
            for e in events.Shortfall().get_logs(**window)
        ]
        assert shortfalls == m.shortfalls


# No shrink phase: at ~1 s per example shrinking a failure takes minutes, and a failing sequence of
# at most 12 operations reads well as generated (the database replays it on the next run).
@settings(
    max_examples=25,
    deadline=None,
    phases=[Phase.explicit, Phase.reuse, Phase.generate],
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(operations=st.lists(operation, min_size=4, max_size=12))
def test_random_operations_keep_the_ledger_consistent(
    ledger: Ledger, actors: Actors, operations: list[tuple[Any, ...]]
) -> None:
    w3 = ledger.w3
    snapshot = w3.provider.make_request("evm_snapshot", [])["result"]
    try:
        # A fresh Ledger per example: nonce caches must not outlive the snapshot they were read in.
        first_block = int(w3.eth.block_number) + 1  # the sequence's setup mints count too
        run = Run(Ledger(w3, ledger.deployment, timeout=30), actors)
        for op in operations:
            run.apply(op)
        run.check_final(first_block)
    finally:
        assert w3.provider.make_request("evm_revert", [snapshot])["result"] is True
