"""Property test over the whole ledger: random sequences of buy / issue (to wallets or into escrow),
transfer, deposit / depositFor, withdrawal request / withdraw, budget set / cut, clock moves and
settle (over escrow and over budget included, and replays of a settled root) against a Python model.

After every operation the chain must equal the model: wallets, escrow, pending withdrawals and
budgets (with scheduled cuts), and every refusal is the exact custom error the model predicts.
After every operation, too: sum(escrow) == token.balanceOf(Settlement) == totalEscrowed, and no
budget or balance is ever below zero. After each sequence:
  * totalSupply == minted - burned, from the Transfer logs to and from the zero address;
  * every burn is a settlement: burns happen only in BatchSettled transactions, from Settlement;
  * the sum of Redeemed amounts == the burns, per transaction, and == the model per payer and spender;
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

from ledger.chain.client import Budget, Ledger, SettlementItem, batch_id_of
from ledger.chain.deploy import DEFAULT_SALE_TIERS
from ledger.chain.sender import TxResult
from ledger.errors import ContractRevert
from ledger.units import ONE_TOKEN
from tests.support.ledger import advance_time

# property tests: hypothesis drives whole contract histories
pytestmark = pytest.mark.slow

if TYPE_CHECKING:
    from tests.support.ledger import Actors

Refusal = tuple[str, dict[str, Any]] | None

ZERO_ADDRESS = "0x" + "00" * 20
MAX_BUDGET = 2**96 - 1
PAYMENT_FUNDS = 10_000 * 10**6
OPENING_BALANCE = 100 * ONE_TOKEN
OPENING_ESCROW = 60 * ONE_TOKEN
# (payer, spender, amount): budgets given at the start, so cuts and spending under them happen.
OPENING_BUDGETS = ((0, 2, 50 * ONE_TOKEN), (1, 2, 50 * ONE_TOKEN), (0, 1, 20 * ONE_TOKEN))
DAY = 24 * 60 * 60  # the test deployment's unlock period
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
budget_amount = st.one_of(amount, st.just(MAX_BUDGET), st.just(MAX_BUDGET + 1))
settle_item = st.one_of(
    st.tuples(account, account, amount),
    account.flatmap(lambda a: st.tuples(st.just(a), st.just(a), amount)),  # the payer's own key
)

operation = st.one_of(
    st.tuples(st.just("buy"), st.sampled_from(ENTERPRISES), amount, st.booleans()),
    st.tuples(st.just("issue"), account, amount, st.booleans()),
    st.tuples(st.just("transfer"), account, st.sampled_from((*ACCOUNTS, "settlement")), amount),
    st.tuples(st.just("deposit"), account, amount),
    st.tuples(st.just("deposit_for"), account, account, amount),
    st.tuples(st.just("request_withdrawal"), account, amount),
    st.tuples(st.just("withdraw"), account),
    st.tuples(st.just("budget"), account, account, budget_amount),
    st.tuples(st.just("budget"), account, account, budget_amount),
    st.tuples(st.just("warp"), st.sampled_from((DAY // 2 + 7, DAY + 13))),
    # Settles are the point: listed three times, so three times as likely.
    st.tuples(st.just("settle"), st.lists(settle_item, min_size=1, max_size=4)),
    st.tuples(st.just("settle"), st.lists(settle_item, min_size=1, max_size=4)),
    st.tuples(st.just("settle"), st.lists(settle_item, min_size=1, max_size=4)),
    st.tuples(st.just("replay")),
)


def sale_cost(value: int) -> int:
    price = next(p for minimum, p in reversed(DEFAULT_SALE_TIERS) if value >= minimum)
    return -(-value * price // ONE_TOKEN)


@dataclass
class ModelBudget:
    remaining: int = 0
    scheduled: int = 0
    effective_at: int = 0

    def at(self, now: int) -> ModelBudget:
        """This budget as of `now`: a cut whose time has come applied (Settlement._effective)."""
        if self.effective_at != 0 and now >= self.effective_at:
            return ModelBudget(min(self.remaining, self.scheduled), 0, 0)
        return ModelBudget(self.remaining, self.scheduled, self.effective_at)


@dataclass
class Model:
    """What the chain should hold for the sequence's accounts."""

    addresses: list[str]
    balances: dict[str, int] = field(default_factory=dict)
    escrow: dict[str, int] = field(default_factory=dict)
    pending: dict[str, tuple[int, int]] = field(default_factory=dict)  # amount, unlocksAt
    budgets: dict[tuple[str, str], ModelBudget] = field(default_factory=dict)
    payments: dict[str, int] = field(default_factory=dict)
    supply: int = 0
    redeemed: Counter[tuple[str, str]] = field(default_factory=Counter)
    shortfalls: list[tuple[bytes, str, str, int, int]] = field(default_factory=list)
    settled: list[bytes] = field(default_factory=list)  # receipts roots

    def allowlisted(self, address: str) -> bool:
        return address in self.addresses and self.addresses.index(address) in ALLOWLISTED

    def budget(self, payer: str, spender: str) -> ModelBudget:
        return self.budgets.setdefault((payer, spender), ModelBudget())

    def expect_pull(self, sender: str, value: int) -> Refusal:
        """The refusal ComputeToken raises when Settlement pulls `value` from `sender`, or None."""
        if not self.allowlisted(sender):
            return "ComputeTokenNotAllowlisted", {"account": sender}
        if self.balances[sender] < value:
            return "ERC20InsufficientBalance", {"sender": sender, "balance": self.balances[sender], "needed": value}
        return None

    def redeem(self, payer: str, spender: str, owed: int, now: int) -> int:
        """Settlement._redeem for one item: pay what escrow and (for another key) the budget cover."""
        paid = min(owed, self.escrow[payer])
        if paid and spender != payer:
            budget = self.budget(payer, spender).at(now)
            paid = min(paid, budget.remaining)
            if paid:
                budget.remaining -= paid
                if budget.effective_at:
                    budget.scheduled = max(0, budget.scheduled - paid)
                self.budgets[(payer, spender)] = budget
        if paid:
            self.escrow[payer] -= paid
            amount_pending, unlocks_at = self.pending[payer]
            if amount_pending > self.escrow[payer]:
                self.pending[payer] = (self.escrow[payer], unlocks_at)
            self.supply -= paid
        return paid


def block_time(ledger: Ledger, tx: TxResult) -> int:
    return int(ledger.w3.eth.get_block(tx.block_number)["timestamp"])


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
            self.model.escrow[key.address] = 0
            self.model.pending[key.address] = (0, 0)
            self.model.payments[key.address] = 0
        for i in ALLOWLISTED:
            ledger.set_allowlisted(self.operator, self.keys[i].address, True)
        for i in ENTERPRISES:
            address = self.keys[i].address
            ledger.mint_payment(self.operator, address, PAYMENT_FUNDS)
            ledger.mint(self.operator, address, OPENING_BALANCE)
            ledger.issue(self.operator, address, OPENING_ESCROW, "prop-open", into_escrow=True)
            self.model.payments[address] = PAYMENT_FUNDS
            self.model.balances[address] = OPENING_BALANCE
            self.model.escrow[address] = OPENING_ESCROW
            self.model.supply += OPENING_BALANCE + OPENING_ESCROW
        for payer, spender, value in OPENING_BUDGETS:
            ledger.set_budget(self.keys[payer], self.keys[spender].address, value)
            self.model.budgets[(self.keys[payer].address, self.keys[spender].address)] = ModelBudget(value, 0, 0)
        self.batches = 0

    def address(self, index: int) -> str:
        return self.keys[index].address

    def attempt(self, refusal: Refusal, action: Any, *, exact: bool = True) -> Any:
        """Run `action`; it must fail with exactly `refusal`, or succeed when that is None."""
        event(f"refused: {refusal[0]}" if refusal else "succeeded")
        if refusal is None:
            return action()
        try:
            action()
        except ContractRevert as exc:
            assert (exc.error, exc.args_by_name if exact else {}) == refusal
            return None
        raise AssertionError(f"expected {refusal}, but the transaction succeeded")

    # -- operations --------------------------------------------------------------------------
    def apply(self, op: tuple[Any, ...]) -> None:
        getattr(self, "op_" + op[0])(*op[1:])
        self.check_state()

    def op_buy(self, who: int, value: int, into_escrow: bool) -> None:
        buyer, m = self.address(who), self.model
        refusal: Refusal = ("TokenSaleZeroAmount", {}) if value == 0 else None
        self.attempt(refusal, lambda: self.ledger.buy(self.keys[who], value, into_escrow=into_escrow))
        if refusal is None:
            (m.escrow if into_escrow else m.balances)[buyer] += value
            m.supply += value
            m.payments[buyer] -= sale_cost(value)

    def op_issue(self, to: int, value: int, into_escrow: bool) -> None:
        address, m = self.address(to), self.model
        refusal: Refusal = None
        if value == 0:
            refusal = ("TokenSaleZeroAmount", {})
        elif not m.allowlisted(address):
            error = "SettlementNotAllowlisted" if into_escrow else "ComputeTokenNotAllowlisted"
            refusal = (error, {"account": address})
        self.attempt(refusal, lambda: self.ledger.issue(self.operator, address, value, "prop",
                                                        into_escrow=into_escrow))
        if refusal is None:
            (m.escrow if into_escrow else m.balances)[address] += value
            m.supply += value

    def op_transfer(self, frm: int, to: int | str, value: int) -> None:
        sender, m = self.address(frm), self.model
        recipient = self.ledger.settlement.address if to == "settlement" else self.address(int(to))
        refusal: Refusal
        if to == "settlement":  # tokens enter escrow only through its deposit paths
            refusal = ("ComputeTokenDirectEscrowTransfer", {"from": sender, "value": value})
        elif not m.allowlisted(recipient):
            refusal = ("ComputeTokenNotAllowlisted", {"account": recipient})
        else:
            refusal = m.expect_pull(sender, value)
        self.attempt(refusal, lambda: self.ledger.transfer(self.keys[frm], recipient, value))
        if refusal is None:
            m.balances[sender] -= value
            m.balances[recipient] += value

    def op_deposit(self, who: int, value: int) -> None:
        holder, m = self.address(who), self.model
        refusal = ("SettlementZeroAmount", {}) if value == 0 else m.expect_pull(holder, value)
        self.attempt(refusal, lambda: self.ledger.deposit(self.keys[who], value))
        if refusal is None:
            m.balances[holder] -= value
            m.escrow[holder] += value

    def op_deposit_for(self, frm: int, to: int, value: int) -> None:
        sender, beneficiary, m = self.address(frm), self.address(to), self.model
        refusal: Refusal
        if not m.allowlisted(beneficiary):
            refusal = ("SettlementNotAllowlisted", {"account": beneficiary})
        elif value == 0:
            refusal = ("SettlementZeroAmount", {})
        else:
            refusal = m.expect_pull(sender, value)
        self.attempt(refusal, lambda: self.ledger.deposit_for(self.keys[frm], beneficiary, value))
        if refusal is None:
            m.balances[sender] -= value
            m.escrow[beneficiary] += value

    def op_request_withdrawal(self, who: int, value: int) -> None:
        holder, m = self.address(who), self.model
        refusal: Refusal = None
        if value > m.escrow[holder]:
            refusal = ("SettlementWithdrawalAboveEscrow",
                       {"account": holder, "amount": value, "escrow": m.escrow[holder]})
        tx = self.attempt(refusal, lambda: self.ledger.request_withdrawal(self.keys[who], value))
        if refusal is None:
            m.pending[holder] = (value, block_time(self.ledger, tx) + DAY if value else 0)

    def op_withdraw(self, who: int) -> None:
        holder, m = self.address(who), self.model
        value, unlocks_at = m.pending[holder]
        now = int(self.ledger.w3.eth.get_block("latest")["timestamp"])
        refusal: Refusal = None
        exact = True
        if value == 0:
            refusal = ("SettlementNoWithdrawalPending", {"account": holder})
        elif now + 1 < unlocks_at:  # the next block's time: at least latest + 1
            refusal, exact = ("SettlementWithdrawalLocked", {}), False  # `now` is Anvil's clock
            event("refused: SettlementWithdrawalLocked")
        elif now + 3 < unlocks_at:
            return  # too close to the unlock to predict which side the next block lands on
        tx = self.attempt(refusal, lambda: self.ledger.withdraw(self.keys[who]), exact=exact)
        if refusal is None:
            event("withdrawn")
            assert block_time(self.ledger, tx) >= unlocks_at
            m.escrow[holder] -= value
            m.balances[holder] += value
            m.pending[holder] = (0, 0)

    def op_budget(self, payer: int, spender: int, value: int) -> None:
        owner, key, m = self.address(payer), self.address(spender), self.model
        refusal: Refusal = None
        if value > MAX_BUDGET:
            refusal = ("SettlementBudgetTooLarge", {"amount": value, "max": MAX_BUDGET})
        elif owner == key:
            refusal = ("SettlementInvalidSpender", {"spender": key})
        tx = self.attempt(refusal, lambda: self.ledger.set_budget(self.keys[payer], key, value))
        if refusal is None:
            now = block_time(self.ledger, tx)
            budget = m.budget(owner, key).at(now)
            if value >= budget.remaining:
                m.budgets[(owner, key)] = ModelBudget(value, 0, 0)
                event("budget raise")
            else:
                m.budgets[(owner, key)] = ModelBudget(budget.remaining, value, now + DAY)
                event("budget cut")

    def op_warp(self, seconds: int) -> None:
        advance_time(self.ledger, seconds)
        event(f"clock +{seconds} s")

    def op_settle(self, raw_items: list[tuple[int, int, int]]) -> None:
        m = self.model
        self.batches += 1
        root = keccak(text=f"prop-root-{self.batches}-{self.address(0)}")
        items = [SettlementItem(self.address(p), self.address(s), a) for p, s, a in raw_items]
        result = self.ledger.settle_batch(self.settler, root, len(items), items)
        now = block_time(self.ledger, result.tx)
        batch_id = batch_id_of(root)
        assert result.batch_id == batch_id

        expected_redeemed, expected_shortfalls, total = [], [], 0
        for item in items:
            paid = m.redeem(item.payer, item.spender, item.amount, now)
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
        m.settled.append(root)

    def op_replay(self) -> None:
        if not self.model.settled:
            return
        root = self.model.settled[-1]
        payer = self.address(0)
        refusal = ("SettlementBatchAlreadySettled", {"batchId": batch_id_of(root), "receiptsRoot": root})
        again = [SettlementItem(payer, payer, 1)]
        self.attempt(refusal, lambda: self.ledger.settle_batch(self.settler, root, 1, again))

    # -- checks ------------------------------------------------------------------------------
    def check_state(self) -> None:
        ledger, m = self.ledger, self.model
        for address in m.addresses:
            assert m.balances[address] >= 0 and m.escrow[address] >= 0
            assert ledger.balance_of(address) == m.balances[address]
            assert ledger.escrow_of(address) == m.escrow[address]
            pending = ledger.pending_withdrawal_of(address)
            assert (pending.amount, pending.unlocks_at) == m.pending[address]
            assert pending.amount <= m.escrow[address]
        assert ledger.total_supply() == m.supply
        held = ledger.balance_of(ledger.settlement.address)
        assert sum(m.escrow.values()) == held == ledger.total_escrowed()
        latest = int(ledger.w3.eth.get_block("latest")["timestamp"])
        for (payer, spender), budget in m.budgets.items():
            chain = ledger.budget_of(payer, spender)
            assert chain.remaining >= 0 and chain.scheduled >= 0
            # The view runs at the latest block's time or the next second, depending on the node.
            candidates = [budget.at(t) for t in (latest, latest + 1)]
            assert Budget(*(chain.remaining, chain.scheduled, chain.effective_at)) in [
                Budget(c.remaining, c.scheduled, c.effective_at) for c in candidates  # type: ignore[arg-type]
            ]

    def check_final(self, first_block: int) -> None:
        ledger, m = self.ledger, self.model
        for owner in m.addresses:
            assert ledger.payment_balance(owner) == m.payments[owner]

        # Supply adds up, over the whole history of the token and over this sequence alone.
        everything = {"from_block": ledger.deployment.deploy_block, "to_block": "latest"}
        transfers = list(ledger.token.events.Transfer().get_logs(**everything))
        minted = sum(e["args"]["value"] for e in transfers if e["args"]["from"] == ZERO_ADDRESS)
        burned = sum(e["args"]["value"] for e in transfers if e["args"]["to"] == ZERO_ADDRESS)
        assert ledger.total_supply() == minted - burned == m.supply

        ours = [e for e in transfers if e["blockNumber"] >= first_block]
        minted_here = sum(e["args"]["value"] for e in ours if e["args"]["from"] == ZERO_ADDRESS)
        burns_here = [e for e in ours if e["args"]["to"] == ZERO_ADDRESS]
        assert m.supply - self.supply_before == minted_here - sum(e["args"]["value"] for e in burns_here)

        # Every burn is a settlement: from Settlement, in a BatchSettled transaction, one per batch,
        # equal to that batch's Redeemed amounts.
        window = {"from_block": first_block, "to_block": "latest"}
        events = ledger.settlement.events
        settled = {e["transactionHash"]: e["args"]["total"] for e in events.BatchSettled().get_logs(**window)}
        assert len(settled) == len(m.settled)
        redeemed_logs = list(events.Redeemed().get_logs(**window))
        redeemed_by_tx = Counter[bytes]()
        redeemed = Counter[tuple[str, str]]()
        for e in redeemed_logs:
            redeemed_by_tx[e["transactionHash"]] += e["args"]["amount"]
            redeemed[(e["args"]["payer"], e["args"]["spender"])] += e["args"]["amount"]
        burned_by_tx = Counter[bytes]()
        for e in burns_here:
            assert e["args"]["from"] == ledger.settlement.address
            assert e["transactionHash"] in settled
            assert burned_by_tx[e["transactionHash"]] == 0  # one burn per batch
            burned_by_tx[e["transactionHash"]] += e["args"]["value"]
        assert +burned_by_tx == +redeemed_by_tx == +Counter(settled)
        assert +redeemed == +m.redeemed

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
# at most 14 operations reads well as generated (the database replays it on the next run).
@settings(
    max_examples=25,
    deadline=None,
    phases=[Phase.explicit, Phase.reuse, Phase.generate],
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(operations=st.lists(operation, min_size=4, max_size=14))
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
