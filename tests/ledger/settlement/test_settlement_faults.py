"""Fault tests of batch settlement on real processes: `sluice worker` (Celery, prefork), Redis,
PostgreSQL and Anvil, with usage metered through reserve_hold + meter_hold.

Each test ends with `assert_settled_exactly_once`: against the chain, every metered record is in
exactly one settled batch whose on-chain receipts root commits to it, sum(Redeemed) per
(payer, spender) plus what is still owed equals the metered cost, and totalSupply = minted - burned.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from hexbytes import HexBytes
from web3.logs import DISCARD

from ledger.keys import embedded_account
from ledger.settlement.celery_app import CUT_TASK, SUBMIT_TASK
from ledger.settlement.store import Database, release_settled
from ledger.units import ONE_TOKEN
from tests.support.polling import wait_until
from tests.support.settlement import (
    World,
    block_producer,
    migrated_template,
    settlement_world,
)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def template(postgres_url: str) -> Iterator[str]:
    with migrated_template(postgres_url) as name:
        yield name


@pytest.fixture
def world(tmp_path: Path, postgres_url: str, template: str) -> Iterator[World]:
    with settlement_world(tmp_path, postgres_url, template) as made:
        yield made


def settler_transactions(world: World) -> int:
    return int(world.w3.eth.get_transaction_count(embedded_account(1).address))


def sent_attempts(world: World, batch_id: bytes) -> int:
    return int(world.scalar("SELECT count(*) FROM settlement_attempts WHERE batch_id = %s AND action IN"
                            " ('sent', 'replaced')", batch_id))


def test_worker_killed_while_a_batch_is_submitted_then_restarted(world: World) -> None:
    world.fund_pairs(4, self_paying=1)
    world.meter_many(40)
    # Anvil mines only on transactions: the settlement is mined, but its confirmation block never comes.
    worker = world.start_worker("--beat", "--concurrency", "1", confirmations=1, settlement_wait=60)
    world.wait_for(lambda: world.batches("submitted"), 20, "a batch submitted")
    (batch_id,) = world.batches("submitted")
    worker.kill9()
    assert world.ledger.is_settled(batch_id), "burned on chain"
    assert world.batches("confirmed") == [], "not confirmed in the database"

    world.meter_many(20)  # usage keeps arriving while no worker runs
    world.start_worker("--beat", "--concurrency", "1", confirmations=1)
    world.wait_all_settled(60, every=world.mine)  # blocks come now: confirmations can be reached
    assert sent_attempts(world, batch_id) == 1, "the restarted worker found the settlement, it did not resend it"
    assert settler_transactions(world) == len(world.batches())
    world.assert_settled_exactly_once()


def test_chain_endpoint_stopped_for_10s_in_the_middle_of_a_batch(world: World) -> None:
    pairs = world.fund_pairs(4, self_paying=1)
    world.meter_many(30)
    with block_producer(world.chain.url, 0.3):
        world.start_worker("--beat", "--concurrency", "1", confirmations=1, settlement_max_open=3)
        # The first batch's transaction is sent (it may be confirmed a block later, before this looks).
        world.wait_for(world.sent_batches, 60, "a batch sent")
        world.chain.stop()  # a clean stop: Anvil writes its state, as a node restart would keep its blocks
        down_until = time.monotonic() + 10
        # Calls keep being metered against the mirror while the chain is away.
        wait_until(lambda: time.monotonic() >= down_until, 15, "10 s of chain outage",
                   every=lambda: world.meter(pairs[len(world.metered) % len(pairs)]))
        assert world.scalar("SELECT count(*) FROM settlement_attempts WHERE action = 'failed'"
                            " AND error LIKE 'ChainUnavailable%%'") > 0
        # The limit counts unconfirmed batches: the first may have been confirmed just before the stop, and
        # nothing is confirmed while the chain is away.
        confirmed = set(world.batches("confirmed"))
        unconfirmed = [b for b in world.batches() if b not in confirmed]
        assert 1 <= len(unconfirmed) <= 3, "no new batches while three are unconfirmed"
        world.chain.start()
        world.wait_all_settled(60)
    world.assert_settled_exactly_once()
    assert settler_transactions(world) == len(world.batches())


def test_the_same_task_delivered_twice(world: World) -> None:
    world.fund_pairs(3, self_paying=1)
    world.meter_many(30)
    # No beat: only the tasks this test sends run, on two workers with three processes between them.
    world.start_worker("--concurrency", "2")
    world.start_worker("--concurrency", "1")
    with world.celery() as app:
        for _ in range(2):
            app.send_task(CUT_TASK)
        wait_until(lambda: world.scalar("SELECT count(*) FROM settlement_outbox") == 0 and bool(world.batches()),
                   20, "the outbox cut")
        # Every cut already enqueued one submit per batch; a redelivering broker sends each twice more.
        for batch_id in world.batches():
            for _ in range(2):
                app.send_task(SUBMIT_TASK, args=[batch_id.hex()])
        world.wait_all_settled(30)
        # Late redeliveries of tasks that already ran change nothing.
        for batch_id in world.batches():
            app.send_task(SUBMIT_TASK, args=[batch_id.hex()])
            app.send_task(CUT_TASK)
        world.meter_many(9)
        app.send_task(CUT_TASK)
        wait_until(lambda: world.unsettled() == 0, 30, "the later calls settled")
        world.wait_all_settled(30)
    for batch_id in world.batches():
        assert sent_attempts(world, batch_id) == 1, "a batch was sent twice"
    assert settler_transactions(world) == len(world.batches())
    world.assert_settled_exactly_once()


@pytest.fixture
def own_postgres_world(tmp_path: Path) -> Iterator[World]:
    with settlement_world(tmp_path, None, None, own_postgres=True) as made:
        yield made


def test_postgres_restarted_while_batches_are_in_flight(own_postgres_world: World) -> None:
    world = own_postgres_world
    assert world.postgres is not None
    pairs = world.fund_pairs(4, self_paying=1)
    world.meter_many(40)
    with block_producer(world.chain.url, 0.3):
        world.start_worker("--beat", "--concurrency", "2", confirmations=3, batch_max=15)
        # The transactions sent and not yet confirmed, read in the same query that sees them.
        in_flight = world.wait_for(
            lambda: world.query("SELECT tx_hash FROM settlement_batches WHERE status = 'submitted'"), 20,
            "a batch submitted")
        world.postgres.stop()
        # While the database is away the transactions get their confirmations; nobody can record them.
        mined = [world.w3.eth.wait_for_transaction_receipt(HexBytes(h), 20) for (h,) in in_flight]
        last = max(int(r["blockNumber"]) for r in mined)
        wait_until(lambda: world.w3.eth.block_number >= last + 4, 20, "confirmations while the database is down")
        world.postgres.start()
        for i in range(20):
            world.meter(pairs[i % len(pairs)])
        world.wait_all_settled(60)
    world.assert_settled_exactly_once()
    assert settler_transactions(world) == len(world.batches())


def test_two_workers_cutting_batches_at_the_same_time(world: World) -> None:
    pairs = world.fund_pairs(6, self_paying=2)
    workers = [world.start_worker("--beat", "--concurrency", "2", batch_interval=0.2, batch_max=20, batch_max_items=3)
               for _ in range(2)]

    def meter(offset: int) -> None:
        for i in range(150):
            world.meter(pairs[(i + offset) % len(pairs)])

    threads = [threading.Thread(target=meter, args=(k,)) for k in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    world.wait_all_settled(60)
    batches = world.batches()
    assert len(batches) >= 10
    for worker in workers:
        assert "cut batch 0x" in worker.log.read_text(), "both workers cut batches"
    assert world.scalar("SELECT sum(receipt_count) FROM settlement_batches WHERE kind = 'usage'") == 300
    assert world.scalar("SELECT max(item_count) FROM settlement_batches") <= 3
    assert settler_transactions(world) == len(batches)
    world.assert_settled_exactly_once()


def sluice(world: World, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", "from ledger.cli.app import main; main()", *args],
                          env=world.env(), capture_output=True, text=True, timeout=120)


def test_payer_that_moved_its_tokens_away_ends_in_debt_then_tops_up_and_is_cleared(world: World) -> None:
    short, fine = world.fund_pairs(2, tokens=1)
    for _ in range(10):
        world.meter(short)
        world.meter(fine)
    owed = sum(m.cost for m in world.metered if m.payer == short.payer.address)
    # Before settlement the payer takes its escrow out, keeping a third of what it owes: only possible
    # when settlement runs later than the unlock period (the operator's failure a Shortfall records).
    keep = owed // 3
    world.ledger.request_withdrawal(short.payer, world.ledger.escrow_of(short.payer.address) - keep)
    world.rpc("evm_increaseTime", [world.ledger.unlock_period()])
    world.rpc("evm_mine")
    world.ledger.withdraw(short.payer)

    world.start_worker("--beat", "--concurrency", "1")
    world.wait_all_settled(30)
    (shortfall,) = world.ledger.settlement.events.Shortfall().get_logs(from_block=world.deployment.deploy_block)
    assert (shortfall["args"]["payer"], shortfall["args"]["spender"]) == (short.payer.address, short.spender.address)
    assert (shortfall["args"]["owed"], shortfall["args"]["paid"]) == (owed, keep)
    assert world.query("SELECT owed, paid FROM debts WHERE cleared_at IS NULL") == [(owed, keep)]
    world.sync_mirror()
    assert world.hold(short, 10**15)[1] == "suspended"  # 403 suspended at the API
    assert world.hold(fine, 10**15)[1] == "ok"  # everyone else settled in full and keeps working
    conn = Database(world.db_url).conn()
    wait_until(lambda: int(world.scalar("SELECT reserved FROM reserved_payer WHERE payer = %s",
                                        bytes.fromhex(short.payer.address[2:]))) == 0,
               10, "the short payer's reservation released", every=lambda: release_settled(conn))

    listed = sluice(world, "admin", "debts", "--json")
    assert listed.returncode == 0, listed.stderr
    report = json.loads(listed.stdout)
    assert [(d["payer"], d["outstanding"]) for d in report["debts"]] == [(short.payer.address, owed - keep)]
    assert [s["account"] for s in report["suspended"]] == [short.payer.address]

    refused = sluice(world, "admin", "debts", "clear", short.payer.address)
    assert refused.returncode == 1 and "top up" in refused.stdout + refused.stderr
    world.ledger.issue(world.operator, short.payer.address, ONE_TOKEN, "top-up", into_escrow=True)
    world.minted += ONE_TOKEN
    cleared = sluice(world, "admin", "debts", "clear", short.payer.address)
    assert cleared.returncode == 0, cleared.stdout + cleared.stderr
    assert "suspension lifted" in cleared.stdout
    tx_hash = cleared.stdout.split("tx ")[1].split()[0]
    redeemed = world.ledger.settlement.events.Redeemed().process_receipt(
        world.w3.eth.get_transaction_receipt(HexBytes(tx_hash)), errors=DISCARD)
    assert [(e["args"]["payer"], e["args"]["amount"]) for e in redeemed] == [(short.payer.address, owed - keep)]
    assert world.query("SELECT count(*) FROM debts WHERE cleared_at IS NULL") == [(0,)]
    assert world.query("SELECT count(*) FROM suspended_accounts") == [(0,)]

    world.sync_mirror()
    world.meter(short)  # the payer is served again, and its new usage settles normally
    world.wait_all_settled(30)
    world.assert_settled_exactly_once(shortfalls_allowed=True)
