"""The service's PostgreSQL statements, all in one place and all visible (the audit API's reads are in
`redemption.audit.store`).

Holds and metering are single round trips to the SQL functions `reserve_hold` and
`meter_hold` (ledger/migrations/0002_redemption.sql), which keep the nonce, the
reservations, the usage record and the settlement outbox consistent.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from eth_utils.address import to_checksum_address
from psycopg_pool import AsyncConnectionPool

from ledger.domain import ChainFigures, tier_label
from ledger.settlement.metrics import (
    NODES_SQL,
    WORKERS_SQL,
    SettlementSnapshot,
    nodes_from_rows,
    read_snapshot_async,
    workers_from_rows,
)
from ledger.window import Window
from redemption.auth import VerifiedCall
from redemption.batching import StatementBatcher
from redemption.models import DailyUsage, KeyBudget, KeyPolicy, ModelUsage, PendingCut, RecentCall, SpenderUsage

# Durability of a hold. The node is chosen before the hold is taken, and `reserve_hold` records it (with the
# ticket's bounds) in the hold's own transaction, which commits synchronously: the ticket is signed only after
# that commit returned, that is after its WAL record reached the disk. So no ticket ever exists for a job whose
# hold a database crash could still lose (a node that ran such a job could never be paid: no hold, no receipt
# meters it; the payer's funds would not be reserved for it). A retry on another node rebinds the hold
# (`bind_dispatch`, also synchronous) before that node's ticket is signed. Metering commits synchronously too:
# the answer, with its cost, leaves only once its usage record is on disk.


def addr(address: str) -> bytes:
    return bytes.fromhex(address[2:])


@dataclass(frozen=True, slots=True)
class ModelRate:
    name: str
    model_id: bytes
    input_rate: int
    output_rate: int
    tier: str


@dataclass(frozen=True, slots=True)
class OpenHold:
    """A hold not yet metered, as a receipt posted for it is checked against (addresses 0x lower-case)."""

    payer: str
    spender: str
    model: str
    request_digest: bytes
    max_cost: int
    node: str | None  # the node the job was dispatched to (0x lower-case); None before dispatch
    max_tokens: int | None
    prompt_bound: int | None


# Per spender of one payer: calls, model tokens, and compute-token cost in base units, all of it
# and the part whose burn is confirmed on chain ('settled', then 'released' once the mirror saw it).
USAGE_BY_SPENDER = (
    "SELECT spender, count(*), coalesce(sum(prompt_tokens), 0), coalesce(sum(completion_tokens), 0),"
    " coalesce(sum(cost), 0), coalesce(sum(cost) FILTER (WHERE status IN ('settled', 'released')), 0),"
    " max(finished_at)"
    " FROM usage_records WHERE payer = %s GROUP BY spender ORDER BY sum(cost) DESC, spender"
)

USAGE_BY_MODEL = (
    "SELECT spender, model, count(*), coalesce(sum(prompt_tokens), 0), coalesce(sum(completion_tokens), 0),"
    " coalesce(sum(cost), 0) FROM usage_records WHERE payer = %s GROUP BY spender, model"
    " ORDER BY sum(cost) DESC, spender, model"
)
USAGE_BY_DAY = (
    "SELECT to_char(finished_at AT TIME ZONE 'UTC', 'YYYY-MM-DD') AS day, spender, model, count(*),"
    " coalesce(sum(cost), 0) FROM usage_records WHERE payer = %s GROUP BY day, spender, model"
    " ORDER BY day, spender, model"
)

# One payer's metered calls, newest first; %(spender)s NULL: every spender of the payer.
RECENT_CALLS = (
    "SELECT job_id, spender, model, prompt_tokens, completion_tokens, cost, extract(epoch FROM finished_at)::bigint,"
    " status, batch_id FROM usage_records WHERE payer = %(payer)s"
    " AND (%(spender)s::bytea IS NULL OR spender = %(spender)s::bytea)"
    " ORDER BY finished_at DESC, job_id LIMIT %(limit)s"
)


# Key policies (docs/interfaces.md). A change names which fields it sets (`set_*`): an absent field stays as it is.
UPSERT_POLICY = (
    "INSERT INTO key_policies AS k (payer, spender, label, requests_per_minute, tokens_per_minute, expires_at,"
    " updated_at) VALUES (%(payer)s, %(spender)s, %(label)s, %(rpm)s, %(tpm)s, %(expires_at)s, %(now)s)"
    " ON CONFLICT (payer, spender) DO UPDATE SET"
    " label = CASE WHEN %(set_label)s THEN EXCLUDED.label ELSE k.label END,"
    " requests_per_minute = CASE WHEN %(set_rpm)s THEN EXCLUDED.requests_per_minute ELSE k.requests_per_minute END,"
    " tokens_per_minute = CASE WHEN %(set_tpm)s THEN EXCLUDED.tokens_per_minute ELSE k.tokens_per_minute END,"
    " expires_at = CASE WHEN %(set_expires_at)s THEN EXCLUDED.expires_at ELSE k.expires_at END,"
    " updated_at = EXCLUDED.updated_at"
)
# Every key of a payer: those with a policy and those it gave a budget (the mirror), with the budget's figures.
KEY_POLICIES = (
    "SELECT coalesce(k.spender, b.spender) AS spender, k.label, k.requests_per_minute, k.tokens_per_minute,"
    " k.expires_at, k.updated_at, effective_budget(b.remaining, b.scheduled, b.effective_at),"
    " coalesce(r.reserved, 0), b.scheduled, b.effective_at, b.payer IS NOT NULL"
    " FROM (SELECT * FROM key_policies WHERE payer = %(payer)s) k"
    " FULL JOIN (SELECT * FROM mirror_budgets WHERE payer = %(payer)s AND (granted > 0 OR remaining > 0)) b"
    " ON b.spender = k.spender"
    " LEFT JOIN reserved_pair r ON r.payer = %(payer)s AND r.spender = coalesce(k.spender, b.spender)"
    " WHERE %(spender)s::bytea IS NULL OR coalesce(k.spender, b.spender) = %(spender)s::bytea"
    " ORDER BY k.label NULLS LAST, 1"
)


def _policy(row: tuple[Any, ...]) -> KeyPolicy:
    budget = None
    if row[10]:
        effective, reserved = int(row[6]), int(row[7])
        cut = None if not row[9] else PendingCut(amount=str(int(row[8])), effective_at=int(row[9]))
        budget = KeyBudget(effective=str(effective), reserved=str(reserved),
                           available=str(max(effective - reserved, 0)), pending_cut=cut)
    return KeyPolicy(spender=to_checksum_address(bytes(row[0])), label=row[1], requests_per_minute=row[2],
                     tokens_per_minute=row[3], expires_at=row[4], updated_at=row[5], budget=budget)


class Store:
    def __init__(self, pool: AsyncConnectionPool[Any], gather: Callable[[], float] | None = None) -> None:
        """`gather` is the hold and metering statements' wait for company (batching.GatherWindow)."""
        self.pool = pool
        # Rows sorted by (payer, spender) in both, so their row locks are always taken in one order.
        self._reserve = StatementBatcher(
            pool, "reserve_hold",
            ("bytea", "bytea", "numeric", "bigint", "bytea", "bytea", "numeric", "text", "integer", "integer",
             "numeric", "bytea", "bytea", "bytea", "numeric", "numeric", "numeric", "boolean", "boolean", "integer",
             "bigint", "integer", "bytea", "integer", "integer"),
            sort_key=(4, 5), gather=gather,
        )
        self._meter = StatementBatcher(
            pool, "meter_hold",
            ("bytea", "bytea", "integer", "integer", "numeric", "bytea", "timestamptz", "text"),
            sort_key=(0, 1), first_arg=2, gather=gather,
        )
        # The dispatch bindings of concurrent calls share one UPDATE per round trip (sorted by job id).
        self._bind = StatementBatcher(
            pool, "bind_dispatch", ("bytea", "bytea", "integer", "integer"), sort_key=(0,),
            statement="UPDATE holds SET node = t.c1, max_tokens = t.c2, prompt_bound = t.c3 FROM unnest({arrays})"
                      " WITH ORDINALITY AS t({columns}, ord) WHERE holds.job_id = t.c0 RETURNING t.ord, true",
            statement_one="UPDATE holds SET node = {c1}, max_tokens = {c2}, prompt_bound = {c3} WHERE job_id = {c0}"
                          " RETURNING 1, true",
        )

    async def reserve_hold(self, job_id: bytes, call: VerifiedCall, amount: int, model: str, window: Window,
                           figures: ChainFigures | None, tokens: int, rate_window_seconds: int,
                           dispatch: tuple[str, int, int] | None = None) -> str:
        """Consume the nonce and take the hold H = `amount` in one atomic call; 'ok' or the refusal.

        `dispatch` (node, ticket max_tokens, prompt bound) binds the hold to the node its job goes to, in the
        same transaction (see the durability note above); without it the hold is bound by `bind_dispatch`.

        The hold lives the call's lifetime plus the receipt allowance: the call is cut at its lifetime.
        `tokens` (the prompt bound + the clamped max_tokens) counts against the key's tokens per window of
        `rate_window_seconds`, with one request, when its payer set limits on it.
        """
        result = await self._reserve.call(
            job_id, addr(call.spender), call.nonce, call.deadline, addr(call.payer), addr(call.spender),
            amount, model, window.hold_lifetime, window.hold_lifetime + window.receipt_allowance, call.max_cost,
            call.body_hash, call.signature, call.digest,
            None if figures is None else figures.escrow, None if figures is None else figures.pending,
            None if figures is None else figures.budget,
            None if figures is None else figures.allowlisted, None if figures is None else figures.paused,
            window.settlement_bound, tokens, rate_window_seconds,
            None if dispatch is None else addr(dispatch[0]), None if dispatch is None else dispatch[1],
            None if dispatch is None else dispatch[2],
        )
        return str(result)

    async def meter_hold(self, job_id: bytes, payer: str, spender: str, node: str, prompt_tokens: int,
                         completion_tokens: int, cost: int | None, receipt_signature: bytes,
                         first_token_at: datetime | None, unreceipted: str | None = None) -> bool:
        """Record the usage (cost not None) or just release the hold (cost None). False if already closed.

        `unreceipted` names why a call is charged fail-closed, from what was relayed (no receipt signature).
        """
        result = await self._meter.call(
            addr(payer), addr(spender), job_id, addr(node), prompt_tokens, completion_tokens, cost,
            receipt_signature, first_token_at, unreceipted,
        )
        return bool(result)

    async def release_hold(self, job_id: bytes, payer: str, spender: str) -> bool:
        return await self.meter_hold(job_id, payer, spender, "0x" + "00" * 20, 0, 0, None, b"", None)

    async def bind_dispatch(self, job_id: bytes, node: str, max_tokens: int, prompt_bound: int) -> bool:
        """Record on the hold which node its job is sent to, with that ticket's bounds: only this node's
        receipt, within them, meters it. Commits synchronously, before that node's ticket is signed. False when
        the job has no hold (its commit was lost in a database crash): it must not be dispatched."""
        return bool(await self._bind.call(job_id, addr(node), max_tokens, prompt_bound))

    async def record_relayed(self, job_id: bytes, prompt_tokens: int, completion_tokens: int, cost: int) -> None:
        """Keep what the service relayed of a call still waiting for its receipt: the hold is charged this
        (fail-closed) when it expires with no acceptable receipt."""
        async with self.pool.connection() as conn:
            await conn.execute(
                "UPDATE holds SET relayed_prompt = %s, relayed_completion = %s, relayed_cost = %s WHERE job_id = %s",
                (prompt_tokens, completion_tokens, cost, job_id),
            )

    async def refuse_receipt(self, job_id: bytes, reason: str) -> None:
        """Note on the hold why its node's receipt was refused: its fail-closed charge at expiry names it."""
        async with self.pool.connection() as conn:
            await conn.execute("UPDATE holds SET receipt_refusal = %s WHERE job_id = %s",
                               ("receipt_refused:" + reason, job_id))

    async def metered_cost(self, job_id: bytes) -> int:
        """What a job's usage record charged (0 when it has none: released)."""
        async with self.pool.connection() as conn:
            cur = await conn.execute("SELECT cost FROM usage_records WHERE job_id = %s", (job_id,))
            row = await cur.fetchone()
        return 0 if row is None else int(row[0])

    async def release_expired_holds(self) -> int:
        """Release expired holds whose call ended (or whose replica died: twice the lifetime past expiry)."""
        async with self.pool.connection() as conn:
            cur = await conn.execute(
                "SELECT count(*) FROM (SELECT expire_hold(job_id) FROM holds WHERE expires_at < now()"
                " AND (NOT relaying OR expires_at < now() - make_interval(secs => 2 * lifetime_seconds))) released"
            )
            row = await cur.fetchone()
        return int(row[0]) if row else 0

    async def count_open_holds(self) -> int:
        """Holds taken and not metered or released yet (`sluice_open_holds`, kept current by the catalog refresh)."""
        async with self.pool.connection() as conn:
            cur = await conn.execute("SELECT count(*) FROM holds")
            row = await cur.fetchone()
        return int(row[0]) if row else 0

    async def call_ended(self, job_id: bytes) -> None:
        """The service stopped relaying a call it did not meter: its hold may expire from now on."""
        async with self.pool.connection() as conn:
            await conn.execute("UPDATE holds SET relaying = false WHERE job_id = %s", (job_id,))

    async def oldest_unsettled_age(self) -> float | None:
        """Seconds since the oldest usage not yet burned was metered; None when all of it is settled."""
        async with self.pool.connection() as conn:
            cur = await conn.execute(
                "SELECT extract(epoch FROM now() - min(finished_at)) FROM usage_records"
                " WHERE status IN ('metered', 'batched')"
            )
            row = await cur.fetchone()
        return None if row is None or row[0] is None else float(row[0])

    async def release_settled(self) -> int:
        """Drop the reservations of usage whose burn the mirror has seen (ledger.settlement defines it)."""
        async with self.pool.connection() as conn:
            cur = await conn.execute("SELECT release_settled()")
            row = await cur.fetchone()
        return int(row[0]) if row and row[0] is not None else 0

    async def put_policy(self, payer: str, spender: str, changes: dict[str, Any], now: int) -> KeyPolicy:
        """Create or change the (payer, spender) key policy; only the fields in `changes` are set."""
        params = {"payer": addr(payer), "spender": addr(spender), "now": now,
                  "label": changes.get("label"), "rpm": changes.get("requests_per_minute"),
                  "tpm": changes.get("tokens_per_minute"), "expires_at": changes.get("expires_at"),
                  "set_label": "label" in changes, "set_rpm": "requests_per_minute" in changes,
                  "set_tpm": "tokens_per_minute" in changes, "set_expires_at": "expires_at" in changes}
        async with self.pool.connection() as conn:
            await conn.execute(UPSERT_POLICY, params)
        policies = await self.policies(payer, spender)
        return policies[0]

    async def delete_policy(self, payer: str, spender: str) -> bool:
        """Drop the key's policy (its budget stays on chain); False when it had none."""
        async with self.pool.connection() as conn:
            cur = await conn.execute("DELETE FROM key_policies WHERE payer = %s AND spender = %s",
                                     (addr(payer), addr(spender)))
            return bool(cur.rowcount == 1)

    async def policies(self, payer: str, spender: str | None = None) -> list[KeyPolicy]:
        """The payer's keys (or one of them): policy fields and budget figures."""
        async with self.pool.connection() as conn:
            cur = await conn.execute(KEY_POLICIES, {"payer": addr(payer),
                                                    "spender": None if spender is None else addr(spender)})
            rows = await cur.fetchall()
        return [_policy(r) for r in rows]

    async def is_allowlisted(self, account: str) -> bool:
        async with self.pool.connection() as conn:
            cur = await conn.execute("SELECT allowed FROM mirror_allowlist WHERE account = %s", (addr(account),))
            row = await cur.fetchone()
        return bool(row is not None and row[0])

    async def prune_rate_windows(self, before_unix: int) -> int:
        """Drop the rate windows that started before `before_unix` (no admission reads them again)."""
        async with self.pool.connection() as conn:
            cur = await conn.execute("DELETE FROM key_rate_windows WHERE window_start < %s", (before_unix,))
            deleted: int = cur.rowcount
            return deleted

    async def prune_nonces(self, before_unix: int) -> int:
        async with self.pool.connection() as conn:
            cur = await conn.execute("DELETE FROM call_nonces WHERE deadline < %s", (before_unix,))
            deleted: int = cur.rowcount
            return deleted

    async def rates(self) -> dict[str, ModelRate]:
        async with self.pool.connection() as conn:
            cur = await conn.execute(
                "SELECT name, model, input_rate, output_rate, tier FROM mirror_rates WHERE listed ORDER BY name"
            )
            rows = await cur.fetchall()
        return {r[0]: ModelRate(r[0], bytes(r[1]), int(r[2]), int(r[3]), tier_label(r[4])) for r in rows}

    async def available(self, payer: str, spender: str) -> tuple[int, int | None]:
        """(escrow available, budget available or None when spender == payer), from the mirror.

        Escrow available = escrow - pending withdrawal - reserved; budget available = effective
        budget (a pending cut counts at once) - reserved for the pair.
        """
        async with self.pool.connection() as conn:
            cur = await conn.execute(
                "SELECT coalesce((SELECT escrow - pending FROM mirror_escrow WHERE account = %(p)s), 0)"
                " - coalesce((SELECT reserved FROM reserved_payer WHERE payer = %(p)s), 0),"
                " coalesce((SELECT effective_budget(remaining, scheduled, effective_at) FROM mirror_budgets"
                " WHERE payer = %(p)s AND spender = %(s)s), 0)"
                " - coalesce((SELECT reserved FROM reserved_pair WHERE payer = %(p)s AND spender = %(s)s), 0)",
                {"p": addr(payer), "s": addr(spender)},
            )
            row = await cur.fetchone()
        assert row is not None
        return int(row[0]), (None if payer.lower() == spender.lower() else int(row[1]))

    async def upsert_node(self, node: str, url: str, models: list[str], tier: str, region: str, capacity: int,
                          running: int, waiting: int) -> None:
        async with self.pool.connection() as conn:
            await conn.execute(
                "INSERT INTO nodes (node, url, models, tier, region, capacity, running, waiting, last_heartbeat)"
                " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, now())"
                " ON CONFLICT (node) DO UPDATE SET url = EXCLUDED.url, models = EXCLUDED.models,"
                " tier = EXCLUDED.tier, region = EXCLUDED.region, capacity = EXCLUDED.capacity,"
                " running = EXCLUDED.running, waiting = EXCLUDED.waiting, last_heartbeat = now()",
                (addr(node), url, models, tier, region, capacity, running, waiting),
            )

    async def operations(self) -> tuple[SettlementSnapshot, list[dict[str, Any]], list[dict[str, Any]]]:
        """The settlement snapshot `sluice status` prints, the nodes and the settlement workers (one connection)."""
        async with self.pool.connection() as conn:
            snap = await read_snapshot_async(conn)
            nodes = nodes_from_rows(await (await conn.execute(NODES_SQL)).fetchall())
            workers = workers_from_rows(await (await conn.execute(WORKERS_SQL)).fetchall())
        return snap, nodes, workers

    async def nodes(self) -> list[dict[str, Any]]:
        async with self.pool.connection() as conn:
            cur = await conn.execute(
                "SELECT node, url, models, tier, region, capacity, running, waiting,"
                " extract(epoch FROM now() - last_heartbeat), retired FROM nodes"
            )
            rows = await cur.fetchall()
        return [
            {"node": to_checksum_address(bytes(r[0])), "url": r[1], "models": list(r[2]), "tier": r[3], "region": r[4],
             "capacity": r[5], "running": r[6], "waiting": r[7], "age": float(r[8] or Decimal(0)), "retired": r[9]}
            for r in rows
        ]

    async def usage_by_model(self, payer: str) -> tuple[list[ModelUsage], list[DailyUsage]]:
        """The payer's spend per (spender, model), and per (UTC day, spender, model)."""
        async with self.pool.connection() as conn:
            models = await (await conn.execute(USAGE_BY_MODEL, (addr(payer),))).fetchall()
            days = await (await conn.execute(USAGE_BY_DAY, (addr(payer),))).fetchall()
        return (
            [ModelUsage(spender=to_checksum_address(bytes(r[0])), model=r[1], calls=r[2], prompt_tokens=int(r[3]),
                        completion_tokens=int(r[4]), metered=str(int(r[5]))) for r in models],
            [DailyUsage(day=r[0], spender=to_checksum_address(bytes(r[1])), model=r[2], calls=r[3],
                        metered=str(int(r[4]))) for r in days],
        )

    async def open_hold(self, job_id: bytes) -> OpenHold | None:
        async with self.pool.connection() as conn:
            cur = await conn.execute(
                "SELECT payer, spender, model, request_digest, max_cost, node, max_tokens, prompt_bound FROM holds"
                " WHERE job_id = %s", (job_id,)
            )
            row = await cur.fetchone()
        if row is None:
            return None
        return OpenHold("0x" + bytes(row[0]).hex(), "0x" + bytes(row[1]).hex(), row[2], bytes(row[3]), int(row[4]),
                        None if row[5] is None else "0x" + bytes(row[5]).hex(), row[6], row[7])

    async def consume_nonce(self, signer: str, nonce: int, deadline: int) -> bool:
        """Record a (signer, nonce) of a call that takes no hold; False when it was already used."""
        async with self.pool.connection() as conn:
            cur = await conn.execute(
                "INSERT INTO call_nonces (signer, nonce, deadline) VALUES (%s, %s, %s) ON CONFLICT DO NOTHING",
                (addr(signer), Decimal(nonce), deadline),
            )
            return bool(cur.rowcount == 1)

    async def recent_calls(self, payer: str, spender: str | None, limit: int) -> list[RecentCall]:
        """The payer's (or one of its spenders') metered calls, newest first."""
        async with self.pool.connection() as conn:
            cur = await conn.execute(RECENT_CALLS, {"payer": addr(payer), "spender": addr(spender) if spender else None,
                                                    "limit": limit})
            rows = await cur.fetchall()
        return [
            RecentCall(job_id="0x" + bytes(r[0]).hex(), spender=to_checksum_address(bytes(r[1])), model=r[2],
                       prompt_tokens=r[3], completion_tokens=r[4], cost=str(int(r[5])), finished_at=int(r[6]),
                       status=r[7], settled=r[7] in ("settled", "released"),
                       batch_id=None if r[8] is None else "0x" + bytes(r[8]).hex())
            for r in rows
        ]

    async def usage_by_spender(self, payer: str) -> list[SpenderUsage]:
        async with self.pool.connection() as conn:
            cur = await conn.execute(USAGE_BY_SPENDER, (addr(payer),))
            rows = await cur.fetchall()
        return [
            SpenderUsage(spender=to_checksum_address(bytes(r[0])), calls=r[1], prompt_tokens=int(r[2]),
                         completion_tokens=int(r[3]), metered=str(int(r[4])), settled=str(int(r[5])),
                         unsettled=str(int(r[4]) - int(r[5])), last_call=r[6])
            for r in rows
        ]
