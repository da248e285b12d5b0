"""One chain follower per database, against a real Anvil and PostgreSQL: the lock holder follows once
per new block and notifies, the others take its figures; a hung follower's figures age, a stopped
one is replaced. And the head source: a newHeads subscription on Anvil's port, or a poll."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

import psycopg
import pytest
from eth_account import Account

from ledger.chain.client import Ledger
from ledger.followers.follower import FollowStatus
from ledger.followers.heads import Heads, websocket_url
from ledger.followers.mirror import ChainMirror
from ledger.followers.shared import LOCK_KEY, SharedFollower
from ledger.units import ONE_TOKEN
from tests.ledger.followers.test_mirror import assert_mirror_exact, make_mirror, mirror_db, mirrored_escrow, template_db
from tests.support.polling import wait_until

if TYPE_CHECKING:
    from tests.support.ledger import Actors

__all__ = ["make_mirror", "mirror_db", "template_db"]  # fixtures shared with test_mirror


def rpc_url(ledger: Ledger) -> str:
    url = getattr(ledger.w3.provider, "endpoint_uri", None)
    assert isinstance(url, str)
    return url


class Running:
    def __init__(self, follower: SharedFollower) -> None:
        self.follower = follower
        self.stop = threading.Event()
        self.thread = follower.spawn(self.stop)

    def end(self) -> None:
        self.stop.set()
        self.thread.join(15)
        assert not self.thread.is_alive()


@pytest.fixture
def start(ledger: Ledger, mirror_db: str, make_mirror: Callable[..., ChainMirror]) -> Iterator[Callable[[], Running]]:
    running: list[Running] = []

    def start_one() -> Running:
        url = rpc_url(ledger)
        mirror = make_mirror()
        follower = SharedFollower(mirror_db, Heads(url, websocket_url(url)), [mirror], ["mirror"],
                                  heartbeat_seconds=0.5, full_sync_seconds=5.0)
        running.append(Running(follower))
        return running[-1]

    yield start_one
    for r in running:
        if r.thread.is_alive():
            r.end()


def mirror_of(r: Running) -> ChainMirror:
    job = r.follower.jobs["mirror"]
    assert isinstance(job, ChainMirror)
    return job


def deposit(ledger: Ledger, funded: Actors, tokens: int) -> str:
    target = Account.create()
    ledger.set_allowlisted(funded.operator, target.address, True)
    ledger.issue(funded.operator, target.address, tokens * ONE_TOKEN, "deposit", into_escrow=True)
    return str(target.address)


def followers(*rs: Running) -> list[bool]:
    return [r.follower.is_follower for r in rs]


def test_one_process_follows_and_the_others_take_its_figures(
    ledger: Ledger, funded: Actors, start: Callable[[], Running], mirror_db: str
) -> None:
    first = start()
    wait_until(lambda: first.follower.is_follower, 10, "the first follower taking the lock")
    second = start()
    wait_until(lambda: mirror_of(second).last_status is not None, 10, "the standby hearing the follower")
    assert followers(first, second) == [True, False]
    assert first.follower.heads.subscribed  # Anvil serves newHeads on its HTTP port

    account = deposit(ledger, funded, 3)
    head = ledger.w3.eth.block_number
    wait_until(lambda: (s := mirror_of(second).last_status) is not None and s.block >= head, 10,
               "the standby hearing of the new block")
    assert mirrored_escrow(mirror_db, account) == 3 * ONE_TOKEN
    status = mirror_of(second).last_status
    assert status == FollowStatus(head, head, 0, bytes(ledger.w3.eth.get_block(head)["hash"]))
    # The standby never synced on its own: its mirror opened no connection.
    assert mirror_of(second)._conn is None
    assert_mirror_exact(ledger, mirror_db)


def test_a_hung_follower_ages_and_a_stopped_one_is_replaced(
    ledger: Ledger, funded: Actors, start: Callable[[], Running], mirror_db: str
) -> None:
    first = start()
    wait_until(lambda: first.follower.is_follower, 10, "the first follower taking the lock")
    second = start()
    wait_until(lambda: mirror_of(second).last_status is not None, 10, "the standby hearing the follower")

    release = threading.Event()
    sync = mirror_of(first).sync_once

    def hung() -> FollowStatus:
        release.wait(30)
        return sync()

    mirror_of(first).sync_once = hung  # type: ignore[method-assign]
    account = deposit(ledger, funded, 2)  # a new block: the follower hangs in its sync, the lock still held
    time.sleep(2.0)
    assert followers(first, second) == [True, False]
    assert time.monotonic() - mirror_of(second).last_synced > 1.5  # no figures for 2 s: readers see them age
    assert mirrored_escrow(mirror_db, account) is None

    first.stop.set()
    release.set()
    first.thread.join(15)
    taken = time.monotonic()
    wait_until(lambda: second.follower.is_follower, 10, "the standby taking over")
    assert time.monotonic() - taken < 1.5  # one lock try per heartbeat (0.5 s)
    wait_until(lambda: mirrored_escrow(mirror_db, account) == 2 * ONE_TOKEN, 10, "the new follower catching up")
    later = deposit(ledger, funded, 5)
    wait_until(lambda: mirrored_escrow(mirror_db, later) == 5 * ONE_TOKEN, 10, "a deposit after the take-over")
    assert_mirror_exact(ledger, mirror_db)


def test_a_follower_whose_lock_is_taken_elsewhere_stands_by(
    ledger: Ledger, start: Callable[[], Running], mirror_db: str
) -> None:
    with psycopg.connect(mirror_db, autocommit=True) as holder:
        holder.execute("SELECT pg_advisory_lock(%s)", (LOCK_KEY,))
        r = start()
        time.sleep(1.5)
        assert followers(r) == [False]
        assert mirror_of(r).last_status is None
    wait_until(lambda: r.follower.is_follower, 10, "taking the lock once its holder's session ended")
    wait_until(lambda: mirror_of(r).last_status is not None, 10, "the first sync")


@pytest.mark.parametrize("subscribe", [True, False], ids=["newHeads", "poll"])
def test_heads_wake_once_per_new_block(ledger: Ledger, funded: Actors, subscribe: bool) -> None:
    url = rpc_url(ledger)
    heads = Heads(url, websocket_url(url) if subscribe else None, poll_seconds=0.25)
    try:
        heads.start()
        assert heads.subscribed is subscribe
        first = heads.wait(0.1)
        now = ledger.w3.eth.block_number
        if not subscribe:
            assert first == now  # the poll's first answer is the head itself
        assert heads.head == now
        assert heads.wait(0.6) is None  # no block, no wake-up
        deposit(ledger, funded, 1)  # two transactions: two blocks on instant mining
        head = ledger.w3.eth.block_number
        seen = heads.wait(5.0)
        assert seen is not None and now < seen <= head
        if seen < head:
            seen = heads.wait(5.0)
        assert seen == head == heads.head
        assert heads.wait(0.3) is None
    finally:
        heads.close()
