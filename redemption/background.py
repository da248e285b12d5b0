"""What the service does besides answering calls: the chain follower thread (mirror and indexer), and the
housekeeping loops (rates and node registry refresh, expired holds, settled reservations, old nonces).

Each loop outlives a database or chain hiccup: a failed round is logged and tried again next period.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any

from ledger.followers.heads import Heads, websocket_url
from ledger.followers.indexer import ChainIndexer
from ledger.followers.mirror import ChainMirror
from ledger.followers.shared import Job, SharedFollower
from redemption.state import ServiceState

log = logging.getLogger(__name__)


async def every(seconds: float, stop: threading.Event, job: Callable[[], Awaitable[Any]], name: str) -> None:
    while not stop.is_set():
        try:
            await job()
        except Exception:  # housekeeping must outlive a database or chain hiccup
            log.exception("%s failed; retrying in %.0f s", name, seconds)
        await asyncio.sleep(seconds)


async def refresh_catalog(state: ServiceState) -> None:
    state.rates = await state.store.rates()
    for n in await state.store.nodes():
        state.registry.heartbeat(n["node"], n["url"], n["models"], n["tier"], n["region"], n["capacity"],
                                 n["running"], n["waiting"], age=n["age"], retired=n["retired"])
    lag = state.mirror_lag()
    state.metrics.mirror_lag.set(-1 if lag is None else lag)
    state.metrics.open_holds.set(await state.store.count_open_holds())


async def follow_node_registry(state: ServiceState) -> None:
    """Catch up with NodeRegistry's logs; a retired or moved node is dropped from routing at once."""
    chain = state.registry.chain
    if chain is None:
        return
    follower = state.follower
    head = None if follower is None or state.mirror_lag() is None else follower.head
    if head is not None and chain.next_block > head:
        return  # the follower's current figures say no block came since the last read
    state.registry.apply_chain(await asyncio.to_thread(chain.sync))


def start_follower(state: ServiceState) -> threading.Thread | None:
    """The chain mirror and indexer, followed once per new block by one service process of the database."""
    settings = state.settings
    db_url = settings.database_url or ""
    jobs: list[Job] = []
    names: list[str] = []
    if settings.run_mirror:
        state.mirror = ChainMirror(state.ledger.w3, state.ledger, db_url, confirmations=settings.confirmations)
        jobs.append(state.mirror)
        names.append("mirror")
    if settings.run_indexer:
        state.indexer = ChainIndexer(state.ledger, db_url)
        jobs.append(state.indexer)
        names.append("indexer")
    if not jobs:
        return None
    rpc_url = settings.effective_rpc_url
    heads = Heads(rpc_url, settings.chain_ws_url or websocket_url(rpc_url))
    state.follower = SharedFollower(db_url, heads, jobs, names)
    return state.follower.spawn(state.stop)


async def wait_for_mirror(state: ServiceState, timeout: float) -> None:
    """Give the mirror a moment to finish its first sync; calls meanwhile read the chain directly."""
    deadline = time.monotonic() + timeout
    mirror = state.mirror
    assert mirror is not None
    while mirror.last_status is None and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    if mirror.last_status is None:
        log.warning("chain mirror not synced after %.0f s; reading the chain directly until it is", timeout)


def start_housekeeping(state: ServiceState) -> list[asyncio.Task[None]]:
    settings = state.settings
    return [
        asyncio.create_task(every(1.0, state.stop, lambda: refresh_catalog(state), "catalog refresh")),
        asyncio.create_task(every(settings.registry_poll_seconds, state.stop, lambda: follow_node_registry(state),
                                  "node registry")),
        asyncio.create_task(every(5.0, state.stop, state.store.release_expired_holds, "hold expiry")),
        asyncio.create_task(every(1.0, state.stop, state.store.release_settled, "settled release")),
        asyncio.create_task(every(
            60.0, state.stop,
            lambda: state.store.prune_nonces(int(time.time()) - settings.max_deadline_seconds - 3600),
            "nonce pruning")),
        # A window is read by admissions while current and trued by the holds taken in it until they close.
        asyncio.create_task(every(
            60.0, state.stop,
            lambda: state.store.prune_rate_windows(int(time.time()) - settings.rate_window_seconds
                                                   - settings.window.hold_lifetime - settings.window.receipt_allowance),
            "rate window pruning")),
    ]
