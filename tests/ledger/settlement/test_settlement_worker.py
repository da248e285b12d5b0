"""Settlement with real `sluice worker` processes, Redis, PostgreSQL and Anvil: the happy path with
reservations released only behind the mirror, metrics and status; and the state machine's
recovery paths driven in-process against the same real services (a settlement that was sent but
never recorded, a transaction dropped from the pool, concurrent cuts)."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from pathlib import Path
from uuid import uuid4

import pytest
from web3 import Web3

from ledger.chain.client import SettlementItem
from ledger.config import Settings
from ledger.errors import BatchAlreadySettled, SettlementPending
from ledger.keys import embedded_account
from ledger.settlement.metrics import SettlementCollector, settlement_status, status_lines
from ledger.settlement.settings import SettlementSettings
from ledger.settlement.settler import Settler
from ledger.settlement.store import Database, cut_batch, load_batch, release_settled
from ledger.units import BaseUnits
from tests.support.polling import wait_until
from tests.support.settlement import World, migrated_template, raw, settlement_world


@pytest.fixture(scope="module")
def template(postgres_url: str) -> Iterator[str]:
    with migrated_template(postgres_url) as name:
        yield name


@pytest.fixture
def world(tmp_path: Path, postgres_url: str, template: str) -> Iterator[World]:
    with settlement_world(tmp_path, postgres_url, template) as made:
        yield made


def settler_for(world: World, settlement_wait: float = 3.0, settlement_stuck: float = 5.0) -> Settler:
    settings = SettlementSettings(home=world.home, rpc_url=world.chain.url, database_url=world.db_url,
                                  settlement_wait=settlement_wait, settlement_stuck=settlement_stuck)
    return Settler(world.ledger, embedded_account(1), Database(world.db_url), settings)


def reserved(world: World) -> tuple[int, int]:
    payer = int(world.scalar("SELECT coalesce(sum(reserved), 0) FROM reserved_payer"))
    pair = int(world.scalar("SELECT coalesce(sum(reserved), 0) FROM reserved_pair"))
    return payer, pair


def test_worker_with_beat_settles_every_metered_call(world: World) -> None:
    world.fund_pairs(4, self_paying=1)
    world.meter_many(40)
    total = sum(m.cost for m in world.metered)
    other = sum(m.cost for m in world.metered if m.payer != m.spender)
    assert reserved(world) == (total, other)

    world.start_worker("--beat", "--concurrency", "1")
    world.wait_all_settled(30)
    world.assert_settled_exactly_once()

    # The burn is on chain, but the mirror has not seen it: the reservations must stay.
    conn = Database(world.db_url).conn()
    assert release_settled(conn) == 0
    assert reserved(world) == (total, other)
    world.sync_mirror()
    wait_until(lambda: reserved(world) == (0, 0), 10, "reservations released behind the mirror",
               every=lambda: release_settled(conn))
    assert world.scalar("SELECT count(*) FROM usage_records WHERE status <> 'released'") == 0
    assert release_settled(conn) == 0  # idempotent

    status = settlement_status(SettlementSettings(home=world.home, database_url=world.db_url))
    assert status is not None
    assert status["settled_records"] == 40 and status["backlog_records"] == 0 and status["failures"] == 0
    assert status["recent_gas_per_record"] > 0 and status["lag_p99_seconds"] is not None
    assert any("settled: 40 records" in line for line in status_lines(status))
    names = {m.name for m in SettlementCollector(world.db_url).collect()}
    assert {"sluice_settlement_backlog_records", "sluice_settlement_lag_seconds", "sluice_settlement_gas_per_item",
            "sluice_settlement_failures", "sluice_settlement_batch_size_records"} <= names


def test_a_batch_is_full_when_its_pairs_fill_it_whatever_its_record_count(world: World) -> None:
    # Gas is paid per (payer, spender) item: 31 records over 3 pairs fill a 3-item batch at once,
    # long before the interval cut, and travel in it as 3 items.
    pairs = world.fund_pairs(3, self_paying=1)
    for i in range(30):
        world.meter(pairs[i % 2])
    world.meter(pairs[2])
    world.start_worker("--beat", "--concurrency", "1", batch_interval=600, batch_max_items=3)
    world.wait_all_settled(30)
    assert world.query("SELECT item_count, receipt_count FROM settlement_batches") == [(3, 31)]
    world.assert_settled_exactly_once()


def test_a_settlement_sent_but_never_recorded_is_found_not_sent_again(world: World) -> None:
    """A worker crashed after broadcasting and before writing the hash down: the next attempt finds the
    BatchSettled log and confirms from that transaction, sending nothing."""
    world.fund_pairs(3)
    world.meter_many(12)
    settler = settler_for(world)
    conn = settler.db.conn()
    cut = cut_batch(conn, 500, 400)
    assert cut is not None
    batch = load_batch(conn, cut.batch_id)
    assert batch is not None
    items = [SettlementItem(Web3.to_checksum_address(i.payer), Web3.to_checksum_address(i.spender),
                            BaseUnits(i.amount)) for i in batch.items]
    orphan = world.ledger.settle_batch(embedded_account(1), batch.root, batch.receipt_count, items)
    nonce_before = world.w3.eth.get_transaction_count(embedded_account(1).address)

    assert settler.settle(cut.batch_id) == "confirmed"
    assert world.w3.eth.get_transaction_count(embedded_account(1).address) == nonce_before
    row = world.query("SELECT status, attempts, tx_hash FROM settlement_batches WHERE batch_id = %s", cut.batch_id)[0]
    assert row[0] == "confirmed" and row[1] == 0 and "0x" + bytes(row[2]).hex() == orphan.tx.tx_hash
    actions = [r[0] for r in world.query("SELECT action FROM settlement_attempts WHERE batch_id = %s", cut.batch_id)]
    assert actions == ["found"]
    assert settler.settle(cut.batch_id) == "confirmed"  # a redelivered task: nothing more happens
    with pytest.raises(BatchAlreadySettled):
        world.ledger.settle_batch(embedded_account(1), batch.root, batch.receipt_count, items)
    world.assert_settled_exactly_once()


def test_a_stuck_transaction_is_sent_again_at_its_nonce(world: World) -> None:
    world.fund_pairs(2)
    world.meter_many(6)
    settler = settler_for(world, settlement_wait=0.3, settlement_stuck=0.01)
    conn = settler.db.conn()
    cut = cut_batch(conn, 500, 400)
    assert cut is not None
    block_time = Settings().block_time
    world.rpc("evm_setAutomine", [False])  # nothing is mined: the transaction stays pending
    if block_time:  # SLUICE_BLOCK_TIME: interval mining stops too
        world.rpc("evm_setIntervalMining", [0])
    with pytest.raises(SettlementPending):
        settler.settle(cut.batch_id)
    first = load_batch(conn, cut.batch_id)
    assert first is not None and first.status == "submitted" and first.tx_hash is not None
    with pytest.raises(SettlementPending):
        settler.settle(cut.batch_id)  # stuck, still in the pool: the same transaction again, still pending
    again = load_batch(conn, cut.batch_id)
    assert again is not None and (again.tx_hash, again.nonce, again.attempts) == (first.tx_hash, first.nonce, 1)
    assert world.rpc("anvil_dropTransaction", [first.tx_hash])["result"] == first.tx_hash
    with pytest.raises(SettlementPending):
        settler.settle(cut.batch_id)  # not in the pool, nonce unused: the same nonce again
    world.rpc("evm_mine")
    if block_time:
        world.rpc("evm_setIntervalMining", [int(block_time) if block_time.is_integer() else block_time])
    else:
        world.rpc("evm_setAutomine", [True])
    assert settler.settle(cut.batch_id) == "confirmed"
    attempts = world.query("SELECT action, nonce FROM settlement_attempts WHERE batch_id = %s ORDER BY id",
                           cut.batch_id)
    assert [a for a, _n in attempts] == ["sent", "replaced"]
    assert attempts[0][1] == attempts[1][1] == first.nonce
    world.assert_settled_exactly_once()


def test_concurrent_cuts_never_share_a_record(world: World) -> None:
    world.fund_pairs(6, self_paying=2)
    world.meter_many(300)
    db = Database(world.db_url)
    cuts: list[int] = []

    def cutter() -> None:
        conn = db.conn()
        while (batch := cut_batch(conn, 37, 4)) is not None:
            cuts.append(batch.receipts)

    threads = [threading.Thread(target=cutter) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(cuts) == 300
    assert world.scalar("SELECT count(*) FROM settlement_outbox") == 0
    assert world.scalar("SELECT sum(receipt_count) FROM settlement_batches") == 300
    assert world.scalar("SELECT count(DISTINCT batch_id) FROM usage_records") == len(cuts)
    assert world.scalar("SELECT max(item_count) FROM settlement_batches") <= 4
    settler = settler_for(world)
    for batch_id in world.batches("cut"):
        assert settler.settle(batch_id) == "confirmed"
    world.assert_settled_exactly_once()


def test_suspended_payer_is_refused_new_holds(world: World) -> None:
    """The refusal the API turns into 403 `suspended` comes from reserve_hold itself."""
    (pair,) = world.fund_pairs(1)
    world.query("INSERT INTO suspended_accounts (account, reason) VALUES (%s, 'settlement shortfall: test')"
                " RETURNING account", raw(pair.payer.address))
    assert world.hold(pair, 10**15)[1] == "suspended"


LOCAL_AMQP = "amqp://guest:guest@127.0.0.1:5672//"


def amqp_url() -> str | None:
    """SLUICE_TEST_AMQP_URL, else this machine's RabbitMQ when it answers, else None."""
    url = os.environ.get("SLUICE_TEST_AMQP_URL")
    if url:
        return url
    from ledger.stack.probes import broker_answers

    return LOCAL_AMQP if broker_answers(LOCAL_AMQP) else None


@pytest.mark.skipif(amqp_url() is None,
                    reason="no RabbitMQ: set SLUICE_TEST_AMQP_URL or run one on 127.0.0.1:5672")
def test_worker_on_rabbitmq(world: World) -> None:
    from kombu.connection import Connection

    url = amqp_url()
    assert url is not None
    queue = f"sluice.test.{uuid4().hex[:8]}"
    world.broker = url
    world.fund_pairs(2)
    world.meter_many(20)
    try:
        world.start_worker("--beat", "--concurrency", "1", settlement_queue=queue)
        world.wait_all_settled(30)
    finally:
        for worker in world.workers:
            worker.stop()
        with Connection(url) as conn:  # type: ignore[no-untyped-call]
            conn.default_channel.queue_delete(queue)
    world.assert_settled_exactly_once()
