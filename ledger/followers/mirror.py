"""The chain mirror: the copy of on-chain escrow, pending withdrawals, budgets (with their scheduled
cuts), the unlock period, the allowlist, pause and rates that the redemption service checks every
signed call against.

This module owns the `mirror_*` tables of migrations 0002 and 0006 and how they follow the chain:

- Logs of the token, Settlement and RateCard contracts are fetched with one `eth_getLogs` per
  block range (adaptive: halved when the node refuses a range, doubled again when fast).
- Events only say *what* changed. For every account (Deposited, WithdrawalRequested, Withdrawn,
  Redeemed), (payer, spender) budget (BudgetSet, Redeemed) and model an event touched, the absolute
  value (`escrowOf`, `pendingWithdrawalOf`, `budgetOf`, ...) is re-read with `eth_call` at the last
  block of the window, in JSON-RPC batches, so re-scanning any block is harmless and no delta is ever
  applied. The one figure no view tells, the amount a payer last set a budget to (`granted`: zero
  means no budget, 403), is taken from the BudgetSet event itself.
- Each window's rows and the cursor (block, hash, head) are written in one transaction, under a
  transaction-scoped advisory lock and only if the cursor is still the one the window started
  from, so a crash never leaves the mirror half-applied and two mirrors never interleave.
- Reorgs: before extending, the stored cursor hash is compared with the chain's. On a mismatch
  the mirror steps back `reorg_depth` blocks and re-reads every row last written after that
  point; a chain that no longer reaches the cursor (a restarted dev chain) is re-mirrored from
  the deployment block.

`ledger.chain.views.read_direct` reads the same figures straight from the chain for when the mirror lags.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, cast

import psycopg
from eth_typing import ABIEvent
from eth_utils.abi import (
    event_abi_to_log_topic,
)
from psycopg.rows import TupleRow
from web3 import Web3

from ledger.chain.client import Ledger
from ledger.chain.rpc import RpcError
from ledger.chain.rpc import batch as _rpc_batch
from ledger.chain.rpc import block_hash as _block_hash
from ledger.chain.rpc import call as _rpc
from ledger.chain.rpc import result as _result
from ledger.chain.rpc import too_large as _too_large
from ledger.chain.views import ContractView, error_selector
from ledger.db import connect
from ledger.errors import LedgerError
from ledger.followers.follower import ChainMoved, Cursor, CursorMoved, CursorTable, FollowStatus, StopSignal, follow
from ledger.followers.follower import FollowStatus as MirrorStatus

log = logging.getLogger(__name__)

_CURSOR = CursorTable("mirror_cursor", "sluice:chain-mirror")
# This many full-size getLogs ranges in a row, each answered faster than _FAST_RANGE_SECONDS, double
# the range (up to max_range); a streak rather than one answer, so a range just halved is not retried at once.
_FAST_RANGE_SECONDS = 0.5
_GROW_AFTER = 4

Pair = tuple[bytes, bytes]


class MirrorError(LedgerError):
    """The mirror cannot follow this chain with this database."""


class MirrorChainMismatch(MirrorError):
    """The database mirrors another chain id than the RPC endpoint serves."""


@dataclass
class _Touched:
    """Everything the events of one window touched: the keys to re-read, never the values."""

    accounts: set[bytes] = field(default_factory=set)
    pairs: set[Pair] = field(default_factory=set)
    allowlist: set[bytes] = field(default_factory=set)
    models: set[bytes] = field(default_factory=set)
    token: bool = False
    settlement: bool = False
    # Amount of the last BudgetSet per pair in the window.
    granted: dict[Pair, int] = field(default_factory=dict)
    # Pairs re-read after a reorg: their last BudgetSet may be orphaned, so `granted` falls back to remaining.
    regrant: set[Pair] = field(default_factory=set)
    # Last RateSet rates and ModelListed tier per model: rateOf refuses a delisted model, so these
    # are the only record of what it cost when it was withdrawn.
    rates: dict[bytes, tuple[int, int]] = field(default_factory=dict)
    tiers: dict[bytes, int] = field(default_factory=dict)
    events: int = 0

    def size(self) -> int:
        return len(self.accounts) + len(self.pairs) + len(self.allowlist) + len(self.models)


@dataclass(frozen=True)
class _Plan:
    """One pass of `sync_once`: scan (from_block, target], anchored at target's hash."""

    expected: Cursor | None
    from_block: int
    target: int
    head: int
    anchor_hash: bytes
    reset: bool = False
    stale_after: int | None = None


@dataclass
class _Figures:
    # account -> (escrow, pending withdrawal, unlocksAt)
    escrow: dict[bytes, tuple[int, int, int]] = field(default_factory=dict)
    # pair -> (remaining, scheduled, effectiveAt, granted or None when unchanged)
    budgets: dict[Pair, tuple[int, int, int, int | None]] = field(default_factory=dict)
    allowlist: dict[bytes, bool] = field(default_factory=dict)
    paused: bool | None = None
    unlock_period: int | None = None
    # model -> (name, input rate, output rate, tier, listed); rates None when delisted and unknown.
    rates: dict[bytes, tuple[str, int | None, int | None, int | None, bool]] = field(default_factory=dict)
    unknown_models: set[bytes] = field(default_factory=set)


def _topic_address(topic: str) -> bytes:
    return bytes.fromhex(topic[-40:])


def _topic_bytes32(topic: str) -> bytes:
    return bytes.fromhex(topic.removeprefix("0x"))


class ChainMirror:
    """Keeps the `mirror_*` tables of the database at `db_url` equal to the chain, window by window."""

    def __init__(
        self,
        w3: Web3,
        ledger: Ledger,
        db_url: str,
        *,
        confirmations: int = 0,
        max_range: int = 2000,
        reorg_depth: int = 64,
        batch_size: int = 500,
        max_touched: int = 20_000,
        heartbeat_seconds: float = 1.0,
    ) -> None:
        if max_range < 1 or batch_size < 1 or max_touched < 1 or reorg_depth < 1 or confirmations < 0:
            raise ValueError("max_range, batch_size, max_touched and reorg_depth must be >= 1, confirmations >= 0")
        self.w3 = w3
        self.ledger = ledger
        self.db_url = db_url
        self.confirmations = confirmations
        self.max_range = max_range
        self.reorg_depth = reorg_depth
        self.batch_size = batch_size
        self.max_touched = max_touched
        self.heartbeat_seconds = heartbeat_seconds
        self.deploy_block = ledger.deployment.deploy_block
        self.span = max_range  # current getLogs range; adapts to what the node accepts
        self._fast_streak = 0
        self.events_applied = 0
        self._conn: psycopg.Connection[TupleRow] | None = None
        self._status_conn: psycopg.Connection[TupleRow] | None = None
        self._status_lock = threading.Lock()
        self._chain_id: int | None = None
        self._last_heartbeat = 0.0
        # The loop's latest sync, for in-process readers that must not query the database per call.
        self.last_status: MirrorStatus | None = None
        self.last_synced = 0.0

        token, settlement, rate_card = ledger.token, ledger.settlement, ledger.rate_card
        self._addresses = [str(c.address).lower() for c in (token, settlement, rate_card)]
        self._events: dict[str, tuple[str, str]] = {}  # topic0 -> (contract address, event name)
        for contract, names in (
            (token, ("AllowlistUpdated", "Paused", "Unpaused")),
            (settlement, ("Deposited", "WithdrawalRequested", "Withdrawn", "BudgetSet", "Redeemed",
                          "UnlockPeriodSet")),
            (rate_card, ("RateSet", "ModelListed", "ModelDelisted")),
        ):
            for name in names:
                abi = next((e for e in contract.abi if e.get("type") == "event" and e.get("name") == name), None)
                if abi is None and name == "UnlockPeriodSet":
                    continue  # optional: unlockPeriod is re-read at every reset anyway
                assert abi is not None, f"{name} missing from the ABI"
                topic = "0x" + event_abi_to_log_topic(cast(ABIEvent, abi)).hex()
                self._events[topic] = (str(contract.address).lower(), name)
        self._topics = sorted(self._events)
        self._escrow_of = ContractView.of(settlement, "escrowOf")
        self._pending_of = ContractView.of(settlement, "pendingWithdrawalOf")
        self._budget_of = ContractView.of(settlement, "budgetOf")
        self._unlock_period = ContractView.of(settlement, "unlockPeriod")
        self._is_allowlisted = ContractView.of(token, "isAllowlisted")
        self._paused = ContractView.of(token, "paused")
        self._rate_of = ContractView.of(rate_card, "rateOf")
        self._name_of = ContractView.of(rate_card, "nameOf")
        self._unknown_model = error_selector(rate_card, "RateCardUnknownModel")

    # -- the loop ----------------------------------------------------------------------------
    def run(self, stop: StopSignal, interval: float = 0.2, max_backoff: float = 10.0) -> None:
        """Sync until `stop` is set. Any RPC or database failure is logged and retried with back-off."""
        follow(stop, "chain mirror sync", self.sync_once, self._drop_connections, self._synced, interval, max_backoff)
        self.close()

    def _synced(self, status: FollowStatus) -> None:
        self.last_status, self.last_synced = status, time.monotonic()

    def spawn(self, stop: threading.Event, interval: float = 0.2) -> threading.Thread:
        """Run the loop in a daemon thread; set `stop` and join the thread to end it."""
        thread = threading.Thread(target=self.run, args=(stop, interval), name="chain-mirror", daemon=True)
        thread.start()
        return thread

    def close(self) -> None:
        self._drop_connections()
        with self._status_lock:
            if self._status_conn is not None:
                self._status_conn.close()
                self._status_conn = None

    # -- one pass ----------------------------------------------------------------------------
    def sync_once(self) -> MirrorStatus:
        """Bring the mirror up to the head (less `confirmations`) as seen now; one transaction per window."""
        conn = self._db()
        plan = self._plan(conn)
        if isinstance(plan, MirrorStatus):
            return plan
        expected, start = plan.expected, plan.from_block
        reset, stale_after = plan.reset, plan.stale_after
        while True:
            touched = _Touched()
            to_block = self._scan(start, plan.target, touched) if start <= plan.target else plan.target
            expected = self._apply(conn, plan, expected, to_block, touched, reset, stale_after)
            reset, stale_after = False, None
            if to_block >= plan.target:
                return MirrorStatus(expected.block, plan.head, max(0, plan.head - expected.block), expected.block_hash)
            start = to_block + 1

    def _plan(self, conn: psycopg.Connection[TupleRow]) -> _Plan | MirrorStatus:
        """What to scan now: from the cursor, or back from it after a reorg; the status when up to date."""
        chain_id = self._chain()
        cursor = _read_cursor(conn)
        if cursor is not None and cursor.chain_id != chain_id:
            raise MirrorChainMismatch(f"the mirror database follows chain {cursor.chain_id}, the node is {chain_id}")
        calls: list[tuple[str, list[Any]]] = [("eth_getBlockByNumber", ["latest", False])]
        if cursor is not None:
            calls.append(("eth_getBlockByNumber", [hex(cursor.block), False]))
        answers = _rpc_batch(self.w3, calls, self.batch_size)
        latest = _result(answers[0], "eth_getBlockByNumber")
        head = int(latest["number"], 16)
        target = head - self.confirmations
        if target < self.deploy_block:
            raise MirrorError(f"the chain (head {head}) does not reach the deployment block {self.deploy_block}")
        if self.confirmations == 0:
            anchor = _block_hash(latest)
        else:
            anchor = _block_hash(_rpc(self.w3, "eth_getBlockByNumber", [hex(target), False]))
        if anchor is None:
            raise ChainMoved(f"block {target} vanished while planning")
        if cursor is None:
            return _Plan(None, self.deploy_block, target, head, anchor, reset=True)
        now_hash = _block_hash(_result(answers[1], "eth_getBlockByNumber"))
        if now_hash == cursor.block_hash:
            if cursor.block >= target:
                self._heartbeat(conn, cursor, head)
                return MirrorStatus(cursor.block, head, max(0, head - cursor.block), cursor.block_hash)
            return _Plan(cursor, cursor.block + 1, target, head, anchor)
        if now_hash is None:
            # The chain no longer reaches the cursor: a reset or restored dev chain, not a reorg.
            log.warning(
                "chain mirror: block %d is gone (head %d); re-mirroring from block %d",
                cursor.block,
                head,
                self.deploy_block,
            )
            return _Plan(cursor, self.deploy_block, target, head, anchor, reset=True)
        rewind = min(cursor.block - self.reorg_depth, target)
        if rewind < self.deploy_block:
            log.warning(
                "chain mirror: block %d was reorganised; re-mirroring from block %d", cursor.block, self.deploy_block
            )
            return _Plan(cursor, self.deploy_block, target, head, anchor, reset=True)
        log.warning("chain mirror: block %d was reorganised; re-scanning from block %d", cursor.block, rewind + 1)
        return _Plan(cursor, rewind + 1, target, head, anchor, stale_after=rewind)

    def _scan(self, start: int, target: int, touched: _Touched) -> int:
        """Collect logs from `start` on, range by range, until `target` or `max_touched`; returns the last block."""
        while start <= target:
            end = min(target, start + self.span - 1)
            began = time.monotonic()
            try:
                logs = self._get_logs(start, end)
            except Exception as exc:
                if end > start and _too_large(exc):
                    self.span = max(1, (end - start + 1) // 2)
                    self._fast_streak = 0
                    log.info("chain mirror: getLogs %d-%d refused (%s); now %d blocks", start, end, exc, self.span)
                    continue
                raise
            if time.monotonic() - began < _FAST_RANGE_SECONDS and end - start + 1 >= self.span:
                self._fast_streak += 1
                if self._fast_streak >= _GROW_AFTER:
                    self.span = min(self.max_range, self.span * 2)
                    self._fast_streak = 0
            else:
                self._fast_streak = 0
            for entry in logs:
                self._touch(touched, entry)
            if touched.size() >= self.max_touched:
                return end
            start = end + 1
        return target

    def _get_logs(self, start: int, end: int) -> list[dict[str, Any]]:
        params = {"fromBlock": hex(start), "toBlock": hex(end), "address": self._addresses, "topics": [self._topics]}
        return cast(list[dict[str, Any]], _rpc(self.w3, "eth_getLogs", [params]))

    def _touch(self, touched: _Touched, entry: dict[str, Any]) -> None:
        topics: list[str] = entry["topics"]
        known = self._events.get(topics[0]) if topics else None
        if known is None or known[0] != str(entry["address"]).lower() or entry.get("removed"):
            return
        name = known[1]
        touched.events += 1
        if name in ("Deposited", "WithdrawalRequested", "Withdrawn"):
            touched.accounts.add(_topic_address(topics[1]))
        elif name == "BudgetSet":
            pair = (_topic_address(topics[1]), _topic_address(topics[2]))
            touched.pairs.add(pair)
            data = bytes.fromhex(str(entry["data"]).removeprefix("0x"))
            amount, _effective_at = self.w3.codec.decode(["uint256", "uint64"], data)
            touched.granted[pair] = int(amount)
        elif name == "UnlockPeriodSet":
            touched.settlement = True
        elif name == "AllowlistUpdated":
            touched.allowlist.add(_topic_address(topics[1]))
        elif name in ("Paused", "Unpaused"):
            touched.token = True
        elif name == "Redeemed":
            payer, spender = _topic_address(topics[2]), _topic_address(topics[3])
            touched.accounts.add(payer)
            if spender != payer:  # settlement spends the budget down without a BudgetSet event
                touched.pairs.add((payer, spender))
        else:
            model = _topic_bytes32(topics[1])
            touched.models.add(model)
            data = bytes.fromhex(str(entry["data"]).removeprefix("0x"))
            if name == "RateSet":
                input_rate, output_rate = self.w3.codec.decode(["uint256", "uint256"], data)
                touched.rates[model] = (int(input_rate), int(output_rate))
            elif name == "ModelListed":
                _name, tier = self.w3.codec.decode(["string", "uint8"], data)
                touched.tiers[model] = int(tier)

    # -- one window: read at its last block, write in one transaction --------------------------
    def _apply(
        self,
        conn: psycopg.Connection[TupleRow],
        plan: _Plan,
        expected: Cursor | None,
        to_block: int,
        touched: _Touched,
        reset: bool,
        stale_after: int | None,
    ) -> Cursor:
        with conn.transaction():
            if _lock_and_read_cursor(conn) != expected:
                raise CursorMoved("another mirror advanced the cursor")
            if reset:
                for table in (
                    "mirror_escrow",
                    "mirror_budgets",
                    "mirror_settlement",
                    "mirror_allowlist",
                    "mirror_token",
                    "mirror_rates",
                ):
                    conn.execute(f"DELETE FROM {table}")
            else:
                self._add_known_keys(conn, touched, stale_after)
            forced = reset or stale_after is not None or expected is None
            touched.settlement = touched.settlement or forced
            figures = self._read_figures(touched, to_block, read_token=forced or touched.token or touched.size() > 0)
            block_hash = self._check_anchor(plan, expected if not forced else None, to_block)
            self._write_figures(conn, figures, to_block)
            cursor = Cursor(self._chain(), to_block, block_hash)
            conn.execute(
                "INSERT INTO mirror_cursor (id, chain_id, block, block_hash, head, updated_at)"
                " VALUES (1, %s, %s, %s, %s, now())"
                " ON CONFLICT (id) DO UPDATE SET chain_id = EXCLUDED.chain_id, block = EXCLUDED.block,"
                " block_hash = EXCLUDED.block_hash, head = EXCLUDED.head, updated_at = EXCLUDED.updated_at",
                (cursor.chain_id, cursor.block, cursor.block_hash, plan.head),
            )
        self.events_applied += touched.events
        self._last_heartbeat = time.monotonic()
        return cursor

    def _add_known_keys(self, conn: psycopg.Connection[TupleRow], touched: _Touched, stale_after: int | None) -> None:
        """Keys the events of this window cannot name: rows a reorg may have orphaned."""
        if stale_after is None:
            return
        # Rows written after the rewind point may hold values from blocks that are no longer canonical.
        touched.token = True
        touched.settlement = True
        for (account,) in conn.execute("SELECT account FROM mirror_escrow WHERE block > %s", (stale_after,)):
            touched.accounts.add(bytes(account))
        budgets = conn.execute("SELECT payer, spender FROM mirror_budgets WHERE block > %s", (stale_after,))
        for payer, spender in budgets:
            touched.pairs.add((bytes(payer), bytes(spender)))
            touched.regrant.add((bytes(payer), bytes(spender)))
        for (account,) in conn.execute("SELECT account FROM mirror_allowlist WHERE block > %s", (stale_after,)):
            touched.allowlist.add(bytes(account))
        for (model,) in conn.execute("SELECT model FROM mirror_rates WHERE block > %s", (stale_after,)):
            touched.models.add(bytes(model))

    def _read_figures(self, touched: _Touched, block: int, *, read_token: bool) -> _Figures:
        """Absolute values of every touched key at `block`, in batched eth_calls."""
        w3 = self.w3
        accounts = sorted(touched.accounts)
        pairs = sorted(touched.pairs)
        allowlist = sorted(touched.allowlist)
        models = sorted(touched.models)
        # The ABI codec takes 20-byte addresses as they are: no checksumming for thousands of keys.
        calls: list[tuple[str, list[Any]]] = []
        for account in accounts:
            calls.append(self._escrow_of.request(w3, [account], block))
            calls.append(self._pending_of.request(w3, [account], block))
        calls += [self._budget_of.request(w3, [p, s], block) for p, s in pairs]
        calls += [self._is_allowlisted.request(w3, [a], block) for a in allowlist]
        for model in models:
            calls.append(self._name_of.request(w3, [model], block))
            calls.append(self._rate_of.request(w3, [model], block))
        if read_token:
            calls.append(self._paused.request(w3, [], block))
        if touched.settlement:
            calls.append(self._unlock_period.request(w3, [], block))
        answers = iter(_rpc_batch(w3, calls, self.batch_size))

        figures = _Figures()
        for account in accounts:
            escrow = int(self._escrow_of.decode(w3, _result(next(answers), "escrowOf")))
            pending, unlocks_at = self._pending_of.decode(w3, _result(next(answers), "pendingWithdrawalOf"))
            figures.escrow[account] = (escrow, int(pending), int(unlocks_at))
        for pair in pairs:
            remaining, scheduled, effective_at = self._budget_of.decode(w3, _result(next(answers), "budgetOf"))
            granted = touched.granted.get(pair)
            if granted is None and pair in touched.regrant:
                granted = int(remaining)
            figures.budgets[pair] = (int(remaining), int(scheduled), int(effective_at), granted)
        for account in allowlist:
            figures.allowlist[account] = bool(self._is_allowlisted.decode(w3, _result(next(answers), "isAllowlisted")))
        for model in models:
            name = str(self._name_of.decode(w3, _result(next(answers), "nameOf")))
            rate = next(answers)
            if not name:  # never listed on this chain (a row orphaned by a reorg)
                figures.unknown_models.add(model)
                continue
            error = rate.get("error")
            if error is None:
                input_rate, output_rate, tier, listed = self._rate_of.decode(w3, rate["result"])
                figures.rates[model] = (name, int(input_rate), int(output_rate), int(tier), bool(listed))
            elif isinstance(error, dict) and str(error.get("data", "")).startswith(self._unknown_model):
                seen = touched.rates.get(model)
                figures.rates[model] = (
                    name,
                    seen[0] if seen else None,
                    seen[1] if seen else None,
                    touched.tiers.get(model),
                    False,
                )
            else:
                raise RpcError("rateOf", error)
        if read_token:
            figures.paused = bool(self._paused.decode(w3, _result(next(answers), "paused")))
        if touched.settlement:
            figures.unlock_period = int(self._unlock_period.decode(w3, _result(next(answers), "unlockPeriod")))
        return figures

    def _check_anchor(self, plan: _Plan, expected: Cursor | None, to_block: int) -> bytes:
        """The hash of `to_block`, once the anchor (and `expected`, when given) are still what the window began on.

        The anchor's hash pins every block below it, so an unchanged anchor means the logs and the
        reads all came from one chain. `expected` is None when the old cursor is known to be orphaned.
        """
        calls = [("eth_getBlockByNumber", [hex(plan.target), False]), ("eth_getBlockByNumber", [hex(to_block), False])]
        if expected is not None:
            calls.append(("eth_getBlockByNumber", [hex(expected.block), False]))
        answers = [_block_hash(_result(a, "eth_getBlockByNumber")) for a in _rpc_batch(self.w3, calls, len(calls))]
        if answers[0] != plan.anchor_hash:
            raise ChainMoved(f"block {plan.target} changed while the mirror read it")
        if len(answers) > 2 and expected is not None and answers[2] != expected.block_hash:
            raise ChainMoved(f"block {expected.block} changed while the mirror read it")
        block_hash = answers[1]
        if block_hash is None:
            raise ChainMoved(f"block {to_block} vanished while the mirror read it")
        return block_hash

    def _write_figures(self, conn: psycopg.Connection[TupleRow], figures: _Figures, block: int) -> None:
        with conn.cursor() as cur:
            if figures.escrow:
                cur.executemany(
                    "INSERT INTO mirror_escrow (account, escrow, pending, unlocks_at, block)"
                    " VALUES (%s, %s, %s, %s, %s)"
                    " ON CONFLICT (account) DO UPDATE SET escrow = EXCLUDED.escrow, pending = EXCLUDED.pending,"
                    " unlocks_at = EXCLUDED.unlocks_at, block = EXCLUDED.block",
                    [(a, Decimal(e), Decimal(p), u, block) for a, (e, p, u) in figures.escrow.items()],
                )
            if figures.budgets:
                # `granted` changes only with a BudgetSet; a pair touched by a burn alone keeps its own.
                cur.executemany(
                    "INSERT INTO mirror_budgets (payer, spender, remaining, scheduled, effective_at, granted, block)"
                    " VALUES (%(p)s, %(s)s, %(r)s, %(c)s, %(e)s, coalesce(%(g)s::numeric, %(r)s::numeric), %(b)s)"
                    " ON CONFLICT (payer, spender) DO UPDATE SET remaining = EXCLUDED.remaining,"
                    " scheduled = EXCLUDED.scheduled, effective_at = EXCLUDED.effective_at,"
                    " granted = coalesce(%(g)s::numeric, mirror_budgets.granted), block = EXCLUDED.block",
                    [{"p": p, "s": s, "r": Decimal(r), "c": Decimal(c), "e": e, "g": _numeric(g), "b": block}
                     for (p, s), (r, c, e, g) in figures.budgets.items()],
                )
            if figures.unlock_period is not None:
                cur.execute(
                    "INSERT INTO mirror_settlement (id, unlock_period, block) VALUES (1, %s, %s)"
                    " ON CONFLICT (id) DO UPDATE SET unlock_period = EXCLUDED.unlock_period, block = EXCLUDED.block",
                    (figures.unlock_period, block),
                )
            if figures.allowlist:
                cur.executemany(
                    "INSERT INTO mirror_allowlist (account, allowed, block) VALUES (%s, %s, %s)"
                    " ON CONFLICT (account) DO UPDATE SET allowed = EXCLUDED.allowed, block = EXCLUDED.block",
                    [(a, v, block) for a, v in figures.allowlist.items()],
                )
            if figures.paused is not None:
                cur.execute(
                    "INSERT INTO mirror_token (id, paused, block) VALUES (1, %s, %s)"
                    " ON CONFLICT (id) DO UPDATE SET paused = EXCLUDED.paused, block = EXCLUDED.block",
                    (figures.paused, block),
                )
        self._write_rates(conn, figures, block)

    def _write_rates(self, conn: psycopg.Connection[TupleRow], figures: _Figures, block: int) -> None:
        rows = [
            {
                "model": m,
                "name": name,
                "input_rate": _numeric(i),
                "output_rate": _numeric(o),
                "tier": t,
                "listed": listed,
                "block": block,
            }
            for m, (name, i, o, t, listed) in figures.rates.items()
        ]
        with conn.cursor() as cur:
            if rows:
                # A delisted model keeps its last known rates: rateOf no longer tells them.
                cur.executemany(
                    "INSERT INTO mirror_rates (model, name, input_rate, output_rate, tier, listed, block)"
                    " VALUES (%(model)s, %(name)s, coalesce(%(input_rate)s::numeric, 0),"
                    " coalesce(%(output_rate)s::numeric, 0), coalesce(%(tier)s::smallint, 0), %(listed)s, %(block)s)"
                    " ON CONFLICT (model) DO UPDATE SET name = EXCLUDED.name,"
                    " input_rate = coalesce(%(input_rate)s::numeric, mirror_rates.input_rate),"
                    " output_rate = coalesce(%(output_rate)s::numeric, mirror_rates.output_rate),"
                    " tier = coalesce(%(tier)s::smallint, mirror_rates.tier),"
                    " listed = EXCLUDED.listed, block = EXCLUDED.block",
                    rows,
                )
            if figures.unknown_models:
                cur.execute("DELETE FROM mirror_rates WHERE model = ANY(%s)", (list(figures.unknown_models),))

    # -- status ------------------------------------------------------------------------------
    def status(self) -> MirrorStatus | None:
        """The mirror's position as recorded in the database; None before the first sync."""
        with self._status_lock:
            if self._status_conn is None or self._status_conn.closed or self._status_conn.broken:
                self._status_conn = _open(self.db_url)
            try:
                return mirror_status(self._status_conn)
            except psycopg.OperationalError:
                self._status_conn.close()
                self._status_conn = None
                raise

    def lag(self) -> int | None:
        """Blocks between the recorded head and the mirrored block; None before the first sync."""
        status = self.status()
        return None if status is None else status.lag

    # -- plumbing ----------------------------------------------------------------------------
    def _chain(self) -> int:
        if self._chain_id is None:
            self._chain_id = int(_rpc(self.w3, "eth_chainId", []), 16)
        return self._chain_id

    def _heartbeat(self, conn: psycopg.Connection[TupleRow], cursor: Cursor, head: int) -> None:
        """Record the head now and then while idle, so a stalled mirror shows in `updated_at`."""
        if time.monotonic() - self._last_heartbeat < self.heartbeat_seconds:
            return
        conn.execute(
            "UPDATE mirror_cursor SET head = %s, updated_at = now() WHERE block = %s AND block_hash = %s",
            (head, cursor.block, cursor.block_hash),
        )
        self._last_heartbeat = time.monotonic()

    def _db(self) -> psycopg.Connection[TupleRow]:
        if self._conn is None or self._conn.closed or self._conn.broken:
            self._conn = _open(self.db_url)
        return self._conn

    def _drop_connections(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


def _numeric(value: int | None) -> Decimal | None:
    return None if value is None else Decimal(value)


def _open(url: str) -> psycopg.Connection[TupleRow]:
    # Autocommit: reads do not hold a transaction open; every write is an explicit transaction.
    conn = connect(url, connect_timeout=10)
    conn.autocommit = True
    return conn


_read_cursor = _CURSOR.read
_lock_and_read_cursor = _CURSOR.lock_and_read
mirror_status = _CURSOR.status  # read on the caller's connection, e.g. one from the service's pool
