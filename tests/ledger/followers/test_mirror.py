"""The chain mirror against a real Anvil and a real PostgreSQL: after any mix of operations, a
backfill, a reorg or a failed commit, every mirror table equals what the chain says at the
mirrored block. Each test gets a database of its own (the `ledger` fixture rewinds the chain)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from itertools import pairwise
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit
from uuid import uuid4

import psycopg
import pytest
from eth_account import Account
from eth_account.signers.local import LocalAccount
from eth_utils.crypto import keccak
from web3.exceptions import ContractLogicError

from ledger.chain.client import Ledger, SettlementItem
from ledger.chain.rpc import RpcError
from ledger.chain.sender import TxResult, wait_for_receipt
from ledger.chain.views import read_direct
from ledger.db import migrate
from ledger.domain import Tier, model_id
from ledger.followers.mirror import ChainMirror, MirrorChainMismatch, mirror_status
from ledger.units import ONE_TOKEN, BaseUnits
from tests.support.polling import wait_until

if TYPE_CHECKING:
    from tests.support.ledger import Actors

MAX_UINT = 2**256 - 1


# -- databases ---------------------------------------------------------------------------------
def with_database(url: str, name: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{name}"))


def admin(url: str, sql: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(sql.encode())


@pytest.fixture(scope="module")
def template_db(postgres_url: str) -> Iterator[str]:
    """A database migrated once per module; each test copies it (CREATE DATABASE ... TEMPLATE)."""
    name = f"mirror_template_{uuid4().hex[:10]}"
    admin(postgres_url, f"CREATE DATABASE {name}")
    migrate(with_database(postgres_url, name))
    yield name
    admin(postgres_url, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture
def mirror_db(postgres_url: str, template_db: str) -> Iterator[str]:
    name = f"mirror_{uuid4().hex[:12]}"
    admin(postgres_url, f"CREATE DATABASE {name} TEMPLATE {template_db}")
    yield with_database(postgres_url, name)
    admin(postgres_url, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture
def make_mirror(ledger: Ledger, mirror_db: str) -> Iterator[Callable[..., ChainMirror]]:
    made: list[ChainMirror] = []

    def make(**options: Any) -> ChainMirror:
        mirror = ChainMirror(ledger.w3, ledger, mirror_db, **options)
        made.append(mirror)
        return mirror

    yield make
    for mirror in made:
        mirror.close()


# -- what the mirror holds, and what the chain says ---------------------------------------------
@dataclass
class MirrorRows:
    block: int
    block_hash: bytes
    escrow: dict[bytes, tuple[int, int, int]]  # account -> (escrow, pending withdrawal, unlocksAt)
    budgets: dict[tuple[bytes, bytes], tuple[int, int, int, int]]  # -> (remaining, scheduled, effectiveAt, granted)
    unlock_period: int | None
    allowlist: dict[bytes, bool]
    paused: bool | None
    rates: dict[bytes, tuple[str, int, int, int, bool]]


def mirror_rows(url: str) -> MirrorRows:
    with psycopg.connect(url) as conn:
        cursor = conn.execute("SELECT block, block_hash FROM mirror_cursor").fetchone()
        assert cursor is not None, "the mirror has no cursor"
        token = conn.execute("SELECT paused FROM mirror_token").fetchone()
        settlement = conn.execute("SELECT unlock_period FROM mirror_settlement").fetchone()
        return MirrorRows(
            block=int(cursor[0]),
            block_hash=bytes(cursor[1]),
            escrow={
                bytes(a): (int(e), int(p), int(u))
                for a, e, p, u in conn.execute("SELECT account, escrow, pending, unlocks_at FROM mirror_escrow")
            },
            budgets={
                (bytes(p), bytes(s)): (int(r), int(c), int(e), int(g))
                for p, s, r, c, e, g in conn.execute(
                    "SELECT payer, spender, remaining, scheduled, effective_at, granted FROM mirror_budgets")
            },
            unlock_period=None if settlement is None else int(settlement[0]),
            allowlist={bytes(a): bool(v) for a, v in conn.execute("SELECT account, allowed FROM mirror_allowlist")},
            paused=None if token is None else bool(token[0]),
            rates={
                bytes(m): (str(n), int(i), int(o), int(t), bool(listed))
                for m, n, i, o, t, listed in conn.execute(
                    "SELECT model, name, input_rate, output_rate, tier, listed FROM mirror_rates"
                )
            },
        )


def raw(address: str) -> bytes:
    return bytes.fromhex(address.removeprefix("0x"))


def checksum(address: bytes) -> str:
    from eth_utils.address import to_checksum_address

    return to_checksum_address(address)


def assert_mirror_exact(ledger: Ledger, url: str) -> MirrorRows:
    """Every mirror row equals the chain at the cursor block, and nothing the chain knows is missing.

    The universe of keys comes from web3's own event decoding (not the mirror's), from the deployment on.
    """
    rows = mirror_rows(url)
    at = rows.block
    token, rate_card, settlement = ledger.token, ledger.rate_card, ledger.settlement
    assert ledger.w3.eth.get_block(at)["hash"] == rows.block_hash
    assert at == ledger.w3.eth.block_number

    span = {"from_block": ledger.deployment.deploy_block, "to_block": at}
    accounts = {raw(e["args"]["account"]) for name in ("Deposited", "WithdrawalRequested", "Withdrawn")
                for e in getattr(settlement.events, name)().get_logs(**span)}
    budget_sets = settlement.events.BudgetSet().get_logs(**span)
    granted = {(raw(e["args"]["payer"]), raw(e["args"]["spender"])): int(e["args"]["amount"]) for e in budget_sets}
    listed = {raw(e["args"]["account"]) for e in token.events.AllowlistUpdated().get_logs(**span)}
    models = set(rate_card.functions.models().call(block_identifier=at))
    assert accounts <= rows.escrow.keys()
    assert granted.keys() <= rows.budgets.keys()
    assert listed <= rows.allowlist.keys()
    assert {bytes(m) for m in models} == rows.rates.keys()

    views = settlement.functions
    for account, (escrow, pending, unlocks_at) in rows.escrow.items():
        assert views.escrowOf(checksum(account)).call(block_identifier=at) == escrow
        assert tuple(views.pendingWithdrawalOf(checksum(account)).call(block_identifier=at)) == (pending, unlocks_at)
    for (payer, spender), (remaining, scheduled, effective_at, amount) in rows.budgets.items():
        chain = views.budgetOf(checksum(payer), checksum(spender)).call(block_identifier=at)
        if effective_at and chain[2] == 0:
            # A cut whose time came with no event since: the chain reports it applied, the mirror still
            # holds it pending, and admission counts min(remaining, scheduled) either way.
            assert min(remaining, scheduled) == chain[0]
        else:
            assert (remaining, scheduled, effective_at) == tuple(chain)
        # `granted` is the last BudgetSet's amount; a pair only an orphaned block set falls back to remaining.
        assert amount == granted.get((payer, spender), remaining)
    assert rows.unlock_period == views.unlockPeriod().call(block_identifier=at)
    for account, allowed in rows.allowlist.items():
        assert token.functions.isAllowlisted(checksum(account)).call(block_identifier=at) is allowed
    assert rows.paused is token.functions.paused().call(block_identifier=at)
    for model, (name, input_rate, output_rate, tier, is_listed) in rows.rates.items():
        assert rate_card.functions.nameOf(model).call(block_identifier=at) == name
        try:
            rate = rate_card.functions.rateOf(model).call(block_identifier=at)
        except ContractLogicError:
            assert not is_listed
        else:
            assert (input_rate, output_rate, tier, is_listed) == (rate[0], rate[1], rate[2], True)
    return rows


# -- chain helpers ------------------------------------------------------------------------------
def delist(ledger: Ledger, signer: LocalAccount, model: str) -> TxResult:
    return ledger._transact(signer, ledger.rate_card.functions.delist(model_id(model)))


def settle(ledger: Ledger, actors: Actors, label: str, items: list[SettlementItem]) -> Any:
    return ledger.settle_batch(actors.settler, keccak(text=f"root:{label}"), len(items), items)


def rpc(ledger: Ledger, method: str, params: list[Any]) -> Any:
    return ledger.w3.provider.make_request(method, params)["result"]  # type: ignore[arg-type]


def send_fast(ledger: Ledger, signer: LocalAccount, fn: Any) -> str:
    """Send without gas estimation, fee look-ups or waiting: bulk history for the backfill tests (see `mined`)."""
    tx = {
        "to": fn.address,
        "data": fn._encode_transaction_data(),
        "gas": 200_000,
        "maxFeePerGas": 0,
        "maxPriorityFeePerGas": 0,
    }
    tx_hash, _nonce = ledger.sender(signer).send(tx)  # type: ignore[arg-type]
    return tx_hash


def mined(ledger: Ledger, tx_hashes: list[str]) -> None:
    """Wait until every transaction is mined and succeeded: Anvil answers a send before it mines it."""
    for tx_hash in tx_hashes:
        assert wait_for_receipt(ledger.w3, tx_hash, 30)["status"] == 1


def holders(ledger: Ledger, actors: Actors, count: int) -> list[LocalAccount]:
    """`count` fresh allowlisted accounts with 100 tokens each in escrow."""
    accounts = [Account.create() for _ in range(count)]
    for account in accounts:
        ledger.set_allowlisted(actors.operator, account.address, True)
        ledger.issue(actors.operator, account.address, 100 * ONE_TOKEN, "test", into_escrow=True)
    return accounts


# -- tests --------------------------------------------------------------------------------------
def test_one_sync_mirrors_every_kind_of_operation(
    ledger: Ledger, funded: Actors, make_mirror: Callable[..., ChainMirror], mirror_db: str
) -> None:
    op, ent, dev, other = funded.operator, funded.enterprise, funded.developer, funded.other
    extra = Account.create()
    ledger.set_allowlisted(op, dev.address, True)
    ledger.set_allowlisted(op, other.address, True)
    ledger.deposit(ent, 300 * ONE_TOKEN)
    ledger.deposit_for(ent, other.address, 50 * ONE_TOKEN)
    ledger.set_budget(ent, dev.address, 100 * ONE_TOKEN)
    ledger.set_budget(ent, extra.address, 40 * ONE_TOKEN)
    ledger.set_budget(ent, extra.address, 15 * ONE_TOKEN)  # a cut: pending for the unlock period
    ledger.set_budget(other, dev.address, 20 * ONE_TOKEN)
    result = settle(
        ledger,
        funded,
        "all-ops",
        [
            SettlementItem(ent.address, dev.address, BaseUnits(150 * ONE_TOKEN)),  # budget covers only 100
            SettlementItem(other.address, other.address, BaseUnits(10 * ONE_TOKEN)),
            SettlementItem(other.address, dev.address, BaseUnits(5 * ONE_TOKEN)),
        ],
    )
    assert [x.paid for x in result.shortfalls] == [100 * ONE_TOKEN]
    ledger.request_withdrawal(other, 30 * ONE_TOKEN)
    ledger.set_allowlisted(op, extra.address, True)
    ledger.set_allowlisted(op, extra.address, False)
    ledger.pause(op)
    ledger.unpause(op)
    ledger.set_rate(op, "test/model-a", 5, 7, Tier.EDGE)
    ledger.set_rate(op, "test/model-a", 6, 8, Tier.CLOUD)
    ledger.set_rate(op, "test/model-b", 1, 2, Tier.REGIONAL)
    delist(ledger, op, "test/model-b")
    ledger.pause(op)

    status = make_mirror().sync_once()

    assert status.block == status.head == ledger.w3.eth.block_number and status.lag == 0
    rows = assert_mirror_exact(ledger, mirror_db)
    unlock = ledger.unlock_period()
    assert rows.unlock_period == unlock > 0
    assert rows.escrow[raw(ent.address)] == (200 * ONE_TOKEN, 0, 0)
    _, _, unlocks_at = rows.escrow[raw(other.address)]
    assert rows.escrow[raw(other.address)] == (35 * ONE_TOKEN, 30 * ONE_TOKEN, unlocks_at) and unlocks_at > 0
    assert rows.budgets[(raw(ent.address), raw(dev.address))] == (0, 0, 0, 100 * ONE_TOKEN)
    remaining, scheduled, effective_at, granted = rows.budgets[(raw(ent.address), raw(extra.address))]
    assert (remaining, scheduled, granted) == (40 * ONE_TOKEN, 15 * ONE_TOKEN, 15 * ONE_TOKEN)
    assert effective_at > 0
    assert rows.budgets[(raw(other.address), raw(dev.address))] == (15 * ONE_TOKEN, 0, 0, 20 * ONE_TOKEN)
    assert rows.allowlist[raw(extra.address)] is False and rows.allowlist[raw(dev.address)] is True
    assert rows.paused is True
    assert rows.rates[model_id("test/model-a")] == ("test/model-a", 6, 8, int(Tier.CLOUD), True)
    # rateOf refuses a delisted model; the mirror keeps its last published rates, marked unlisted.
    assert rows.rates[model_id("test/model-b")] == ("test/model-b", 1, 2, int(Tier.REGIONAL), False)


def effective(url: str, payer: str, spender: str) -> int:
    """What admission counts of a budget: the SQL function the hold check uses, on the mirrored row."""
    with psycopg.connect(url) as conn:
        row = conn.execute(
            "SELECT effective_budget(remaining, scheduled, effective_at), granted FROM mirror_budgets"
            " WHERE payer = %s AND spender = %s", (raw(payer), raw(spender))).fetchone()
    assert row is not None
    return int(row[0])


def test_a_budget_cut_counts_at_once_and_a_raise_cancels_it(
    ledger: Ledger, funded: Actors, make_mirror: Callable[..., ChainMirror], mirror_db: str
) -> None:
    ent, dev = funded.enterprise, funded.developer
    ledger.deposit(ent, 500 * ONE_TOKEN)
    ledger.set_budget(ent, dev.address, 100 * ONE_TOKEN)
    mirror = make_mirror()
    mirror.sync_once()
    assert effective(mirror_db, ent.address, dev.address) == 100 * ONE_TOKEN

    ledger.set_budget(ent, dev.address, 30 * ONE_TOKEN)  # a cut, effective on chain an unlock period later
    mirror.sync_once()
    rows = assert_mirror_exact(ledger, mirror_db)
    remaining, scheduled, effective_at, granted = rows.budgets[(raw(ent.address), raw(dev.address))]
    now = int(ledger.w3.eth.get_block("latest")["timestamp"])
    cut_at = now + ledger.unlock_period()
    assert (remaining, scheduled, effective_at, granted) == (100 * ONE_TOKEN, 30 * ONE_TOKEN, cut_at, 30 * ONE_TOKEN)
    assert effective(mirror_db, ent.address, dev.address) == 30 * ONE_TOKEN  # counted at once

    ledger.set_budget(ent, dev.address, 10 * ONE_TOKEN)  # a second cut replaces the first and restarts the clock
    mirror.sync_once()
    assert effective(mirror_db, ent.address, dev.address) == 10 * ONE_TOKEN
    assert mirror_rows(mirror_db).budgets[(raw(ent.address), raw(dev.address))][:2] == (100 * ONE_TOKEN,
                                                                                        10 * ONE_TOKEN)

    ledger.set_budget(ent, dev.address, 120 * ONE_TOKEN)  # a raise applies at once and cancels the cut
    mirror.sync_once()
    assert mirror_rows(mirror_db).budgets[(raw(ent.address), raw(dev.address))] == (120 * ONE_TOKEN, 0, 0,
                                                                                    120 * ONE_TOKEN)
    assert effective(mirror_db, ent.address, dev.address) == 120 * ONE_TOKEN


def test_a_cut_to_zero_and_spending_under_a_pending_cut(
    ledger: Ledger, funded: Actors, make_mirror: Callable[..., ChainMirror], mirror_db: str
) -> None:
    ent, dev, other = funded.enterprise, funded.developer, funded.other
    ledger.deposit(ent, 500 * ONE_TOKEN)
    ledger.set_budget(ent, dev.address, 100 * ONE_TOKEN)
    ledger.set_budget(ent, other.address, 50 * ONE_TOKEN)
    mirror = make_mirror()
    mirror.sync_once()
    ledger.set_budget(ent, dev.address, 0)  # cut to zero: no_budget for new calls at once
    ledger.set_budget(ent, other.address, 20 * ONE_TOKEN)
    # Usage admitted before the cuts still settles against the current budget until the cut applies.
    settle(ledger, funded, "under-cut", [SettlementItem(ent.address, dev.address, BaseUnits(60 * ONE_TOKEN)),
                                         SettlementItem(ent.address, other.address, BaseUnits(25 * ONE_TOKEN))])

    mirror.sync_once()

    rows = assert_mirror_exact(ledger, mirror_db)
    assert rows.budgets[(raw(ent.address), raw(dev.address))][:2] == (40 * ONE_TOKEN, 0)
    assert rows.budgets[(raw(ent.address), raw(dev.address))][3] == 0  # granted 0: 403 no_budget
    assert effective(mirror_db, ent.address, dev.address) == 0
    # The scheduled amount shrinks by the spend: 20 - 25 -> 0.
    assert rows.budgets[(raw(ent.address), raw(other.address))][:2] == (25 * ONE_TOKEN, 0)
    assert rows.escrow[raw(ent.address)] == (415 * ONE_TOKEN, 0, 0)

    rpc(ledger, "evm_increaseTime", [ledger.unlock_period() + 1])
    rpc(ledger, "evm_mine", [])
    mirror.sync_once()  # no event: the mirror keeps the cut pending, worth min(remaining, scheduled) as before
    assert effective(mirror_db, ent.address, dev.address) == 0
    assert_mirror_exact(ledger, mirror_db)
    ledger.set_budget(ent, dev.address, 5 * ONE_TOKEN)  # after the cut applied on chain, 5 is a raise from 0
    mirror.sync_once()
    assert mirror_rows(mirror_db).budgets[(raw(ent.address), raw(dev.address))] == (5 * ONE_TOKEN, 0, 0,
                                                                                    5 * ONE_TOKEN)


def test_withdrawals_are_followed_and_shrink_with_burns(
    ledger: Ledger, funded: Actors, make_mirror: Callable[..., ChainMirror], mirror_db: str
) -> None:
    ent = funded.enterprise
    ledger.deposit(ent, 100 * ONE_TOKEN)
    mirror = make_mirror()
    mirror.sync_once()
    ledger.request_withdrawal(ent, 100 * ONE_TOKEN)
    mirror.sync_once()
    unlocks_at = mirror_rows(mirror_db).escrow[raw(ent.address)][2]
    assert mirror_rows(mirror_db).escrow[raw(ent.address)] == (100 * ONE_TOKEN, 100 * ONE_TOKEN, unlocks_at)
    settle(ledger, funded, "while-leaving", [SettlementItem(ent.address, ent.address, BaseUnits(30 * ONE_TOKEN))])
    mirror.sync_once()
    assert mirror_rows(mirror_db).escrow[raw(ent.address)] == (70 * ONE_TOKEN, 70 * ONE_TOKEN, unlocks_at)
    rpc(ledger, "evm_increaseTime", [ledger.unlock_period() + 1])
    rpc(ledger, "evm_mine", [])
    ledger.withdraw(ent)
    mirror.sync_once()
    assert assert_mirror_exact(ledger, mirror_db).escrow[raw(ent.address)] == (0, 0, 0)
    assert ledger.balance_of(ent.address) == 970 * ONE_TOKEN


def test_read_direct_equals_the_mirror(
    ledger: Ledger, funded: Actors, make_mirror: Callable[..., ChainMirror], mirror_db: str
) -> None:
    ent, dev = funded.enterprise, funded.developer
    ledger.deposit(ent, 600 * ONE_TOKEN)
    ledger.request_withdrawal(ent, 11 * ONE_TOKEN)
    ledger.set_budget(ent, dev.address, 42 * ONE_TOKEN)
    ledger.set_budget(ent, dev.address, 40 * ONE_TOKEN)
    make_mirror().sync_once()
    rows = mirror_rows(mirror_db)

    direct = read_direct(ledger, ent.address, dev.address)

    assert direct.block == rows.block
    assert (direct.escrow, direct.pending) == rows.escrow[raw(ent.address)][:2] == (600 * ONE_TOKEN, 11 * ONE_TOKEN)
    assert direct.budget == effective(mirror_db, ent.address, dev.address) == 40 * ONE_TOKEN
    assert direct.allowlisted is rows.allowlist[raw(ent.address)] is True
    assert direct.paused is rows.paused is False
    assert read_direct(ledger, raw(dev.address), raw(ent.address)).allowlisted is False
    assert read_direct(ledger, ent.address, ent.address).budget is None


def test_backfill_over_many_blocks_and_windows_is_exact(
    ledger: Ledger, actors: Actors, make_mirror: Callable[..., ChainMirror], mirror_db: str
) -> None:
    accounts = holders(ledger, actors, 12)  # 24 transactions
    settlement = ledger.settlement.functions
    sent = []
    for i in range(276):
        sender, receiver = accounts[i % 12], accounts[(i * 5 + 1) % 12]
        if i % 7 == 0:
            sent.append(send_fast(ledger, sender, settlement.setBudget(receiver.address, i * ONE_TOKEN)))
        elif i % 7 == 1:
            sent.append(send_fast(ledger, sender, settlement.requestWithdrawal((i % 5 + 1) * ONE_TOKEN)))
        else:
            fn = ledger.token.functions.transfer(receiver.address, 0)  # touches nothing the mirror keeps
            sent.append(send_fast(ledger, sender, fn))
    mined(ledger, sent)
    assert ledger.w3.eth.block_number >= 250  # Anvil may mine a few that arrive together in one block
    mirror = make_mirror(max_range=16, max_touched=20)
    ranges: list[tuple[int, int]] = []
    get_logs = mirror._get_logs

    def counting(start: int, end: int) -> list[dict[str, Any]]:
        ranges.append((start, end))
        return get_logs(start, end)

    mirror._get_logs = counting  # type: ignore[method-assign]

    status = mirror.sync_once()

    assert status.lag == 0
    assert len(ranges) >= 300 // 16
    assert ranges[0][0] == ledger.deployment.deploy_block and ranges[-1][1] == status.block
    assert all(b[0] == a[1] + 1 for a, b in pairwise(ranges)), "ranges leave no gap"
    rows = assert_mirror_exact(ledger, mirror_db)
    assert {raw(a.address) for a in accounts} <= rows.escrow.keys()


def test_backfill_halves_a_range_the_node_refuses(
    ledger: Ledger, actors: Actors, make_mirror: Callable[..., ChainMirror], mirror_db: str
) -> None:
    holders(ledger, actors, 20)
    mirror = make_mirror(max_range=64)
    get_logs = mirror._get_logs
    refused: list[int] = []

    def limited(start: int, end: int) -> list[dict[str, Any]]:
        if end - start + 1 > 10:  # like a node with a 10-block getLogs limit
            refused.append(end - start + 1)
            raise RpcError("eth_getLogs", {"code": -32005, "message": "query exceeds max block range 10"})
        return get_logs(start, end)

    mirror._get_logs = limited  # type: ignore[method-assign]

    mirror.sync_once()

    assert refused and mirror.span <= 16
    assert_mirror_exact(ledger, mirror_db)


def test_reorg_at_the_same_height_leaves_the_new_chain(
    ledger: Ledger,
    funded: Actors,
    make_mirror: Callable[..., ChainMirror],
    mirror_db: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    op, ent = funded.operator, funded.enterprise
    ledger.deposit(ent, 100 * ONE_TOKEN)
    mirror = make_mirror(reorg_depth=8)  # deep enough for this reorg, shallow enough not to reach the deployment
    mirror.sync_once()
    snapshot = rpc(ledger, "evm_snapshot", [])
    lost = Account.create()
    ledger.set_allowlisted(op, lost.address, True)
    ledger.issue(op, lost.address, 5 * ONE_TOKEN, "lost", into_escrow=True)
    ledger.set_budget(ent, lost.address, 9 * ONE_TOKEN)
    ledger.set_rate(op, "reorg/lost-model", 1, 1, Tier.EDGE)
    ledger.pause(op)
    orphaned = mirror.sync_once()
    assert mirror_rows(mirror_db).escrow[raw(lost.address)] == (5 * ONE_TOKEN, 0, 0)

    assert rpc(ledger, "evm_revert", [snapshot]) is True
    fresh = Ledger(ledger.w3, ledger.deployment, timeout=30)  # nonces went back with the chain
    kept = Account.create()
    fresh.set_allowlisted(op, kept.address, True)
    fresh.issue(op, kept.address, 3 * ONE_TOKEN, "kept", into_escrow=True)
    fresh.deposit_for(ent, kept.address, ONE_TOKEN)  # approve + depositFor: two blocks
    fresh.set_rate(op, "reorg/kept-model", 2, 2, Tier.CLOUD)
    assert ledger.w3.eth.block_number == orphaned.block
    assert ledger.w3.eth.get_block(orphaned.block)["hash"] != orphaned.block_hash

    mirror.sync_once()

    assert "re-scanning from block" in caplog.text
    rows = assert_mirror_exact(ledger, mirror_db)
    assert rows.escrow[raw(lost.address)] == (0, 0, 0)
    assert rows.budgets[(raw(ent.address), raw(lost.address))][:3] == (0, 0, 0)
    assert rows.allowlist[raw(lost.address)] is False
    assert rows.paused is False
    assert model_id("reorg/lost-model") not in rows.rates
    assert rows.escrow[raw(kept.address)] == (4 * ONE_TOKEN, 0, 0)


def test_chain_that_no_longer_reaches_the_cursor_is_re_mirrored(
    ledger: Ledger, funded: Actors, make_mirror: Callable[..., ChainMirror], mirror_db: str
) -> None:
    op = funded.operator
    snapshot = rpc(ledger, "evm_snapshot", [])
    lost = holders(ledger, funded, 3)
    mirror = make_mirror()
    mirror.sync_once()
    assert rpc(ledger, "evm_revert", [snapshot]) is True
    fresh = Ledger(ledger.w3, ledger.deployment, timeout=30)
    fresh.set_rate(op, "reorg/short-chain", 3, 4, Tier.EDGE)

    mirror.sync_once()

    rows = assert_mirror_exact(ledger, mirror_db)
    assert all(raw(a.address) not in rows.escrow for a in lost)


def test_failed_commit_leaves_the_cursor_and_the_next_sync_completes(
    ledger: Ledger,
    funded: Actors,
    make_mirror: Callable[..., ChainMirror],
    mirror_db: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    mirror = make_mirror()
    mirror.sync_once()
    before = mirror_rows(mirror_db)
    newcomer = Account.create()
    ledger.set_allowlisted(funded.operator, newcomer.address, True)
    ledger.issue(funded.operator, newcomer.address, 8 * ONE_TOKEN, "crash", into_escrow=True)
    ledger.set_rate(funded.operator, "crash/model", 1, 2, Tier.EDGE)
    write_rates = ChainMirror._write_rates
    crashes: list[int] = []

    def crash_once(self: ChainMirror, *args: Any) -> None:
        if not crashes:  # escrow rows are written by now, inside the same transaction
            crashes.append(1)
            raise ConnectionError("database went away mid-commit")
        write_rates(self, *args)

    monkeypatch.setattr(ChainMirror, "_write_rates", crash_once)

    with pytest.raises(ConnectionError):
        mirror.sync_once()

    assert mirror_rows(mirror_db) == before  # nothing of the window, not even the escrow
    mirror.sync_once()
    rows = assert_mirror_exact(ledger, mirror_db)
    assert rows.escrow[raw(newcomer.address)] == (8 * ONE_TOKEN, 0, 0)


def test_confirmations_hold_back_the_newest_blocks(
    ledger: Ledger, funded: Actors, make_mirror: Callable[..., ChainMirror], mirror_db: str
) -> None:
    late = Account.create()
    ledger.set_allowlisted(funded.operator, late.address, True)
    ledger.issue(funded.operator, late.address, ONE_TOKEN, "late", into_escrow=True)
    mirror = make_mirror(confirmations=2)

    status = mirror.sync_once()

    head = ledger.w3.eth.block_number
    assert (status.block, status.head, status.lag) == (head - 2, head, 2)
    rows = mirror_rows(mirror_db)
    assert raw(late.address) not in rows.escrow and raw(late.address) not in rows.allowlist
    assert mirror.status() == mirror_status_now(mirror_db)


def mirror_status_now(url: str) -> Any:
    with psycopg.connect(url) as conn:
        return mirror_status(conn)


def test_a_database_of_another_chain_is_refused(
    ledger: Ledger, make_mirror: Callable[..., ChainMirror], mirror_db: str
) -> None:
    mirror = make_mirror()
    mirror.sync_once()
    with psycopg.connect(mirror_db) as conn:
        conn.execute("UPDATE mirror_cursor SET chain_id = 1")

    with pytest.raises(MirrorChainMismatch):
        mirror.sync_once()


def test_run_follows_new_blocks_and_outlives_failures(
    ledger: Ledger,
    funded: Actors,
    make_mirror: Callable[..., ChainMirror],
    mirror_db: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    mirror = make_mirror()
    get_logs = mirror._get_logs
    failures = [ConnectionError("node restarting"), psycopg.OperationalError("server closed the connection")]

    def flaky(start: int, end: int) -> list[dict[str, Any]]:
        if failures:
            raise failures.pop()
        return get_logs(start, end)

    stop = threading.Event()
    thread = mirror.spawn(stop, interval=0.01)
    try:
        target = Account.create()
        ledger.set_allowlisted(funded.operator, target.address, True)
        ledger.issue(funded.operator, target.address, ONE_TOKEN, "one", into_escrow=True)
        wait_until(lambda: mirrored_escrow(mirror_db, target.address) == ONE_TOKEN, 15.0,
                   "the mirror following a deposit")
        mirror._get_logs = flaky  # type: ignore[method-assign]
        ledger.issue(funded.operator, target.address, ONE_TOKEN, "two", into_escrow=True)
        wait_until(lambda: mirrored_escrow(mirror_db, target.address) == 2 * ONE_TOKEN, 15.0,
                   "recovery after failures")
    finally:
        stop.set()
        thread.join(timeout=15)
    assert not thread.is_alive()
    assert not failures
    assert "chain mirror sync failed (2 in a row)" in caplog.text
    status = mirror.status()
    assert status is not None and status.lag == 0
    assert_mirror_exact(ledger, mirror_db)


def mirrored_escrow(url: str, account: str) -> int | None:
    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT escrow FROM mirror_escrow WHERE account = %s", (raw(account),)).fetchone()
    return None if row is None else int(row[0])


def test_two_mirrors_on_one_database_never_interleave(
    ledger: Ledger, funded: Actors, make_mirror: Callable[..., ChainMirror], mirror_db: str
) -> None:
    accounts = holders(ledger, funded, 4)
    stop = threading.Event()
    threads = [make_mirror().spawn(stop, interval=0.001) for _ in range(2)]
    try:
        for i in range(30):
            ledger.set_budget(accounts[i % 4], accounts[(i + 1) % 4].address, i * ONE_TOKEN // 7)
        head = ledger.w3.eth.block_number

        def caught_up() -> bool:
            with psycopg.connect(mirror_db) as conn:
                status = mirror_status(conn)
            return status is not None and status.block >= head

        wait_until(caught_up, 15.0, "two mirrors catching up")
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=15)
    assert_mirror_exact(ledger, mirror_db)
