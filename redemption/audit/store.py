"""What the audit API reads: every SQL statement it runs, and the rows turned into its response bodies.

Event pages are plain queries over the indexer's `chain_events`; batch and receipt bodies are rendered
to JSON by PostgreSQL itself (a 1,000-receipt batch is ~2 MB of hex), with the service supplying only
the EIP-55 spelling of the addresses involved.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import orjson
from psycopg_pool import AsyncConnectionPool

from ledger.followers.indexer import checksum
from redemption.audit.filters import EventFilter, decode_cursor, encode_cursor
from redemption.audit.models import (
    AuditBatch,
    AuditEvent,
    AuditReceipt,
    DebtOrigin,
    EventPage,
    IndexPosition,
    NodeKey,
    NodeList,
    OnChainSettlement,
    Reconciliation,
    ReconciliationRow,
)

EVENTS_SQL = """
SELECT e.block, e.log_index, e.tx_hash, e.tx_index, e.block_hash, e.block_time, e.contract, e.address, e.event,
       e.kind, e.accounts, e.args, e.amount, e.batch_id
FROM chain_events e
WHERE (%(accounts)s::bytea[] IS NULL OR e.accounts && %(accounts)s::bytea[])
  AND (%(kinds)s::text[] IS NULL OR e.kind = ANY(%(kinds)s::text[]))
  AND (%(events)s::text[] IS NULL OR e.event = ANY(%(events)s::text[]))
  AND (%(batch)s::bytea IS NULL OR e.batch_id = %(batch)s::bytea)
  AND (%(from_block)s::bigint IS NULL OR e.block >= %(from_block)s::bigint)
  AND (%(to_block)s::bigint IS NULL OR e.block <= %(to_block)s::bigint)
  -- Block times never decrease: a time range is the block range of indexer_blocks it covers.
  AND (%(since)s::timestamptz IS NULL OR e.block >= coalesce(
        (SELECT min(b.block) FROM indexer_blocks b WHERE b.block_time >= %(since)s::timestamptz), 9e18))
  AND (%(until)s::timestamptz IS NULL OR e.block <= coalesce(
        (SELECT max(b.block) FROM indexer_blocks b WHERE b.block_time <= %(until)s::timestamptz), -1))
  AND (%(after_block)s::bigint IS NULL OR (e.block, e.log_index) {after} (%(after_block)s, %(after_index)s))
ORDER BY e.block {order}, e.log_index {order}
LIMIT %(limit)s
"""
# Two statements rather than a CASE in ORDER BY, so either order walks the primary key.
EVENTS_SQL_BY_ORDER = {
    "asc": EVENTS_SQL.format(after=">", order="ASC"),
    "desc": EVENTS_SQL.format(after="<", order="DESC"),
}


def hex_or_none(raw: bytes | memoryview | None) -> str | None:
    return None if raw is None else "0x" + bytes(raw).hex()


def _event(row: Sequence[Any]) -> AuditEvent:
    return AuditEvent(
        block=int(row[0]), log_index=int(row[1]), tx_hash="0x" + bytes(row[2]).hex(), tx_index=int(row[3]),
        block_hash="0x" + bytes(row[4]).hex(), timestamp=row[5], contract=row[6],
        address=checksum(bytes(row[7])), event=row[8], kind=row[9],
        accounts=[checksum(bytes(a)) for a in row[10]], args=row[11],
    )


async def index_position(pool: AsyncConnectionPool[Any]) -> IndexPosition:
    async with pool.connection() as conn:
        cur = await conn.execute("SELECT block, head FROM indexer_cursor WHERE id = 1")
        row = await cur.fetchone()
    if row is None:
        return IndexPosition(indexed_block=None, head=None, lag=None)
    return IndexPosition(indexed_block=int(row[0]), head=int(row[1]), lag=max(0, int(row[1]) - int(row[0])))


async def list_events(pool: AsyncConnectionPool[Any], flt: EventFilter, *, limit: int, order: str,
                      cursor: str | None) -> tuple[list[Sequence[Any]], str | None]:
    """One page of raw rows in (block, log index) order, and the cursor of the next page (None on the last)."""
    after = decode_cursor(cursor, order) if cursor else None
    params = {
        "accounts": flt.accounts, "kinds": flt.kinds, "events": flt.events, "batch": flt.batch_id,
        "from_block": flt.from_block, "to_block": flt.to_block, "since": flt.since, "until": flt.until,
        "after_block": None if after is None else after[0], "after_index": None if after is None else after[1],
        "limit": limit + 1,
    }  # fmt: skip
    async with pool.connection() as conn:
        # Not prepared: each page is planned with its own values, so unused filters fold away.
        cur = await conn.execute(EVENTS_SQL_BY_ORDER[order], params, prepare=False)
        rows = await cur.fetchall()
    more = len(rows) > limit
    rows = rows[:limit]
    next_cursor = encode_cursor(int(rows[-1][0]), int(rows[-1][1]), order) if more and rows else None
    return list(rows), next_cursor


async def event_page(pool: AsyncConnectionPool[Any], flt: EventFilter, *, limit: int, order: str,
                     cursor: str | None) -> EventPage:
    rows, next_cursor = await list_events(pool, flt, limit=limit, order=order, cursor=cursor)
    position = await index_position(pool)
    return EventPage(data=[_event(r) for r in rows], has_more=next_cursor is not None, next_cursor=next_cursor,
                     **position.model_dump())


# Receipts are rendered to JSON by PostgreSQL itself (a 1,000-receipt batch is ~2 MB of hex): the service
# only supplies the EIP-55 spelling of the few addresses involved, which SQL cannot compute.
RECEIPT_ADDRESSES_SQL = """
SELECT DISTINCT a.raw FROM usage_records u, LATERAL (VALUES (u.payer), (u.spender), (u.node)) AS a (raw)
WHERE (%(batch)s::bytea IS NULL OR u.batch_id = %(batch)s::bytea)
  AND (%(job)s::bytea IS NULL OR u.job_id = %(job)s::bytea)
"""
RECEIPTS_JSON_SQL = """
SELECT coalesce(json_agg(json_build_object(
    'kind', 'usage',
    'job_id', '0x' || encode(u.job_id, 'hex'),
    'batch_id', '0x' || encode(u.batch_id, 'hex'),
    'payer', payer.text,
    'spender', spender.text,
    'cost', u.cost::text,
    'merkle_proof', (SELECT json_agg('0x' || encode(p.hash, 'hex') ORDER BY p.n)
                     FROM unnest(u.merkle_proof) WITH ORDINALITY AS p (hash, n)),
    'model', u.model,
    'prompt_tokens', u.prompt_tokens,
    'completion_tokens', u.completion_tokens,
    'max_cost', u.max_cost::text,
    'request', json_build_object(
        'payer', payer.text,
        'body_hash', '0x' || encode(u.body_hash, 'hex'),
        'max_cost', u.max_cost::text,
        'nonce', u.nonce::text,
        'deadline', u.deadline,
        'signature', '0x' || encode(u.request_signature, 'hex'),
        'digest', '0x' || encode(u.request_digest, 'hex')),
    'node', node.text,
    'node_signature', '0x' || encode(u.receipt_signature, 'hex'),
    'unreceipted', u.unreceipted,
    'status', u.status,
    'started_at', u.started_at,
    'finished_at', u.finished_at,
    'debt', NULL
) ORDER BY u.job_id), '[]')::text
FROM usage_records u
JOIN unnest(%(raw)s::bytea[], %(text)s::text[]) AS payer (raw, text) ON payer.raw = u.payer
JOIN unnest(%(raw)s::bytea[], %(text)s::text[]) AS spender (raw, text) ON spender.raw = u.spender
JOIN unnest(%(raw)s::bytea[], %(text)s::text[]) AS node (raw, text) ON node.raw = u.node
WHERE (%(batch)s::bytea IS NULL OR u.batch_id = %(batch)s::bytea)
  AND (%(job)s::bytea IS NULL OR u.job_id = %(job)s::bytea)
"""


async def _receipts_json(conn: Any, *, batch: bytes | None = None, job: bytes | None = None) -> str:
    """The usage receipts of a batch (or one job) as a JSON array of AuditReceipt, in job id order."""
    params = {"batch": batch, "job": job}
    cur = await conn.execute(RECEIPT_ADDRESSES_SQL, params, prepare=False)
    raws = [bytes(r[0]) for r in await cur.fetchall()]
    cur = await conn.execute(RECEIPTS_JSON_SQL, {**params, "raw": raws, "text": [checksum(r) for r in raws]},
                             prepare=False)
    row = await cur.fetchone()
    return "[]" if row is None else str(row[0])


def _debt_receipt(r: Sequence[Any], clearing: bytes) -> AuditReceipt:
    origin, owed, paid = bytes(r[0]), int(r[3]), int(r[4])
    return AuditReceipt(
        kind="debt", job_id="0x" + origin.hex(), batch_id="0x" + clearing.hex(), payer=checksum(bytes(r[1])),
        spender=checksum(bytes(r[2])), cost=str(owed - paid),
        merkle_proof=None if r[5] is None else ["0x" + bytes(p).hex() for p in r[5]],
        debt=DebtOrigin(batch_id="0x" + origin.hex(), owed=str(owed), paid=str(paid)),
    )  # fmt: skip


def _settlement(rows: Sequence[Sequence[Any]]) -> OnChainSettlement | None:
    for event, block, log_index, tx_hash, moment, args in rows:
        if event == "BatchSettled":
            return OnChainSettlement(tx_hash="0x" + bytes(tx_hash).hex(), block=int(block), log_index=int(log_index),
                                     timestamp=moment, receipts_root=args["receiptsRoot"], items=int(args["items"]),
                                     total=args["total"])
    return None


SETTLED_SQL = (
    "SELECT event, block, log_index, tx_hash, block_time, args FROM chain_events"
    " WHERE batch_id = %s AND event = 'BatchSettled' ORDER BY block, log_index"
)
# The batch's Redeemed and Shortfall logs as JSON arrays of OnChainAmount (one per item: up to hundreds).
AMOUNTS_JSON_SQL = """
SELECT coalesce(json_agg(json_build_object(
           'event', e.event, 'payer', e.args->>'payer', 'spender', e.args->>'spender', 'amount', e.args->>'amount',
           'owed', e.args->>'owed', 'paid', e.args->>'paid', 'tx_hash', '0x' || encode(e.tx_hash, 'hex'),
           'block', e.block, 'log_index', e.log_index) ORDER BY e.block, e.log_index)
       FILTER (WHERE e.event = 'Redeemed'), '[]')::text,
       coalesce(json_agg(json_build_object(
           'event', e.event, 'payer', e.args->>'payer', 'spender', e.args->>'spender', 'amount', e.args->>'amount',
           'owed', e.args->>'owed', 'paid', e.args->>'paid', 'tx_hash', '0x' || encode(e.tx_hash, 'hex'),
           'block', e.block, 'log_index', e.log_index) ORDER BY e.block, e.log_index)
       FILTER (WHERE e.event = 'Shortfall'), '[]')::text
FROM chain_events e WHERE e.batch_id = %s AND e.event IN ('Redeemed', 'Shortfall')
"""


async def batch_detail(pool: AsyncConnectionPool[Any], batch_id: bytes) -> bytes | None:
    """The batch as AuditBatch JSON; None when neither the database nor the index knows it."""
    async with pool.connection() as conn:
        cur = await conn.execute(
            "SELECT kind, status, receipts_root, receipt_count, item_count, total, paid"
            " FROM settlement_batches WHERE batch_id = %s",
            (batch_id,),
        )
        batch = await cur.fetchone()
        cur = await conn.execute(SETTLED_SQL, (batch_id,))
        settled = await cur.fetchall()
        cur = await conn.execute(AMOUNTS_JSON_SQL, (batch_id,))
        amounts = await cur.fetchone()
        receipts: str | list[AuditReceipt] = []
        if batch is not None and batch[0] == "debt":
            cur = await conn.execute(
                "SELECT batch_id, payer, spender, owed, paid, clearing_proof FROM debts"
                " WHERE clearing_batch = %s ORDER BY id",
                (batch_id,),
            )
            receipts = [_debt_receipt(r, batch_id) for r in await cur.fetchall()]
        elif batch is not None:
            receipts = await _receipts_json(conn, batch=batch_id)
    if batch is None and not settled:
        return None
    body = AuditBatch(
        batch_id="0x" + batch_id.hex(), kind=None if batch is None else batch[0],
        status=None if batch is None else batch[1], receipts_root=None if batch is None else hex_or_none(batch[2]),
        receipt_count=None if batch is None else int(batch[3]), item_count=None if batch is None else int(batch[4]),
        total=None if batch is None else str(int(batch[5])),
        paid=None if batch is None or batch[6] is None else str(int(batch[6])),
        settlement=_settlement(settled), redeemed=[], shortfalls=[],
        receipts=[] if isinstance(receipts, str) else receipts,
    ).model_dump(mode="json")  # fmt: skip
    if amounts is not None:
        body["redeemed"], body["shortfalls"] = orjson.Fragment(amounts[0]), orjson.Fragment(amounts[1])
    if isinstance(receipts, str):
        body["receipts"] = orjson.Fragment(receipts)
    return orjson.dumps(body)


async def receipt_detail(pool: AsyncConnectionPool[Any], job_id: bytes) -> bytes | None:
    """One usage receipt and its batch's BatchSettled log, as AuditReceiptDetail JSON; None when unknown."""
    async with pool.connection() as conn:
        receipts = await _receipts_json(conn, job=job_id)
        if receipts == "[]":
            return None
        cur = await conn.execute(
            "SELECT e.event, e.block, e.log_index, e.tx_hash, e.block_time, e.args"
            " FROM usage_records u JOIN chain_events e ON e.batch_id = u.batch_id AND e.event = 'BatchSettled'"
            " WHERE u.job_id = %s",
            (job_id,),
        )
        chain = list(await cur.fetchall())
    settlement = _settlement(chain)
    return orjson.dumps({"receipt": orjson.Fragment(receipts[1:-1]),
                         "settlement": None if settlement is None else settlement.model_dump(mode="json")})


RECONCILIATION_SQL = """
WITH metered AS (
    SELECT payer, spender, count(*) AS receipts, sum(cost) AS metered,
           coalesce(sum(cost) FILTER (WHERE status IN ('metered', 'batched')), 0) AS unsettled,
           coalesce(sum(cost) FILTER (WHERE status IN ('settled', 'released')), 0) AS settled
    FROM usage_records GROUP BY payer, spender
), onchain AS (
    SELECT decode(substr(e.args->>'payer', 3), 'hex') AS payer, decode(substr(e.args->>'spender', 3), 'hex') AS spender,
           coalesce(sum(e.amount) FILTER (WHERE e.event = 'Redeemed'), 0) AS redeemed,
           coalesce(sum(e.amount) FILTER (WHERE e.event = 'Redeemed' AND b.kind = 'debt'), 0) AS debt_cleared,
           count(*) FILTER (WHERE e.event = 'Shortfall') AS shortfalls,
           coalesce(sum(e.amount) FILTER (WHERE e.event = 'Shortfall'), 0) AS shortfall_unpaid
    FROM chain_events e LEFT JOIN settlement_batches b ON b.batch_id = e.batch_id
    WHERE e.event IN ('Redeemed', 'Shortfall')
    GROUP BY 1, 2
)
SELECT coalesce(m.payer, o.payer), coalesce(m.spender, o.spender), coalesce(m.receipts, 0), coalesce(m.metered, 0),
       coalesce(m.unsettled, 0), coalesce(m.settled, 0), coalesce(o.redeemed, 0), coalesce(o.debt_cleared, 0),
       coalesce(o.shortfalls, 0), coalesce(o.shortfall_unpaid, 0)
FROM metered m FULL OUTER JOIN onchain o ON o.payer = m.payer AND o.spender = m.spender
WHERE %(account)s::bytea IS NULL OR coalesce(m.payer, o.payer) = %(account)s::bytea
   OR coalesce(m.spender, o.spender) = %(account)s::bytea
ORDER BY 1, 2
"""


def _reconciliation_row(payer: str, spender: str, figures: Sequence[int]) -> ReconciliationRow:
    receipts, metered, unsettled, settled, redeemed, debt_cleared, shortfalls, unpaid = figures
    usage = redeemed - debt_cleared
    return ReconciliationRow(
        payer=payer, spender=spender, receipts=receipts, metered=str(metered), unsettled=str(unsettled),
        settled=str(settled), redeemed=str(redeemed), redeemed_usage=str(usage), debt_cleared=str(debt_cleared),
        shortfalls=shortfalls, shortfall_unpaid=str(unpaid), outstanding_debt=str(unpaid - debt_cleared),
        difference=str(settled - usage - unpaid),
    )  # fmt: skip


async def reconciliation(pool: AsyncConnectionPool[Any], account: bytes | None) -> Reconciliation:
    async with pool.connection() as conn:
        cur = await conn.execute(RECONCILIATION_SQL, {"account": account})
        rows = await cur.fetchall()
    out: list[ReconciliationRow] = []
    totals = [0] * 8
    for r in rows:
        figures = [int(v) for v in r[2:]]
        totals = [a + b for a, b in zip(totals, figures, strict=True)]
        out.append(_reconciliation_row(checksum(bytes(r[0])), checksum(bytes(r[1])), figures))
    position = await index_position(pool)
    return Reconciliation(rows=out, totals=_reconciliation_row("*", "*", totals),
                          balanced=all(r.difference == "0" for r in out), **position.model_dump())


async def node_keys(pool: AsyncConnectionPool[Any]) -> NodeList:
    async with pool.connection() as conn:
        cur = await conn.execute("SELECT node, tier, region, models, registered_at, retired FROM nodes ORDER BY node")
        rows = await cur.fetchall()
    return NodeList(nodes=[
        NodeKey(node=checksum(bytes(r[0])), tier=r[1], region=r[2], models=list(r[3]), registered_at=r[4],
                retired=bool(r[5]))
        for r in rows
    ])  # fmt: skip
