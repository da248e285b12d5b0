"""The group commit of the hot SQL calls (`redemption.batching.StatementBatcher`) on a real PostgreSQL.

Concurrent calls share one statement whose arguments travel as arrays (binary format); a lone call goes as
a plain call with scalar parameters. Both forms must hand the function exactly the values the caller gave,
whatever they are: NULLs, uint256 extremes, text that needs escaping in an array literal, timestamps.
A busy process's statements wait for company (`GatherWindow`); an idle one's never do.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
from psycopg_pool import AsyncConnectionPool

from redemption.batching import GatherWindow, StatementBatcher

CASTS = ("bytea", "bytea", "numeric", "boolean", "integer", "text", "timestamptz", "bigint")
# Echoes its arguments as one canonical text, so a test can compare what arrived with what was sent.
PROBE = """
CREATE OR REPLACE FUNCTION batch_probe(
    p_key bytea, p_blob bytea, p_amount numeric, p_flag boolean, p_small integer, p_text text,
    p_at timestamptz, p_big bigint
) RETURNS text LANGUAGE sql AS $$
    SELECT concat_ws('|', encode(p_key, 'hex'), coalesce(encode(p_blob, 'hex'), 'NULL'),
                     coalesce(p_amount::text, 'NULL'), coalesce(p_flag::text, 'NULL'),
                     coalesce(p_small::text, 'NULL'), coalesce(p_text, 'NULL'),
                     coalesce(extract(epoch FROM p_at)::bigint::text, 'NULL'), coalesce(p_big::text, 'NULL'))
$$;
"""
TEXTS = ("plain", 'quo"te', "back\\slash", "com,ma", "{braces}", "NULL", "", " spaced ", "ünï", "new\nline")
EPOCH = datetime(2026, 1, 1, tzinfo=UTC)


def _row(i: int) -> tuple[Any, ...]:
    amounts = (0, 1, 2**256 - 1, 10**30 + i, None)
    return (i.to_bytes(4, "big"), None if i % 7 == 3 else bytes(range(i % 256)), amounts[i % len(amounts)],
            (True, False, None)[i % 3], None if i % 11 == 5 else i - 50, TEXTS[i % len(TEXTS)],
            None if i % 13 == 4 else EPOCH + timedelta(seconds=i), (2**63 - 1, -(2**63), i)[i % 3])


def _expected(row: tuple[Any, ...]) -> str:
    def text(value: Any) -> str:
        if value is None:
            return "NULL"
        if isinstance(value, bool):
            return "true" if value else "false"
        if isinstance(value, bytes):
            return value.hex()
        if isinstance(value, datetime):
            return str(int(value.timestamp()))
        return str(value)

    return "|".join(text(value) for value in row)


async def _calls(url: str, rows: list[tuple[Any, ...]], *, concurrently: bool, spaced: float = 0.0,
                 gather: GatherWindow | None = None) -> tuple[list[Any], list[int]]:
    """Results of batch_probe over `rows`, and the rows each statement carried; concurrent calls start
    `spaced` seconds apart."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(PROBE)
    async with AsyncConnectionPool(url, min_size=1, max_size=4, open=False, kwargs={"autocommit": True}) as pool:
        await pool.open(wait=True)
        batcher = StatementBatcher(pool, "batch_probe", CASTS, sort_key=(0,), gather=gather)
        statements: list[int] = []
        run = batcher._run

        async def counted(batch: list[Any]) -> None:
            statements.append(len(batch))
            await run(batch)

        batcher._run = counted  # type: ignore[method-assign]
        if concurrently and not spaced:
            results = await asyncio.gather(*(batcher.call(*row) for row in rows))
        elif concurrently:
            calls = []
            for row in rows:
                calls.append(asyncio.ensure_future(batcher.call(*row)))
                await asyncio.sleep(spaced)
            results = await asyncio.gather(*calls)
        else:
            results = [await batcher.call(*row) for row in rows]
        return list(results), statements


def test_concurrent_calls_share_statements_and_each_gets_exactly_its_own_arguments(postgres_url: str) -> None:
    rows = [_row(i) for i in range(300)]
    results, statements = asyncio.run(_calls(postgres_url, rows, concurrently=True))
    assert results == [_expected(row) for row in rows]
    # All 300 were queued before either drainer ran: the first takes a full batch of 256, the second the rest.
    assert statements == [256, 44]


def test_a_lone_call_goes_as_a_plain_call_with_the_same_values(postgres_url: str) -> None:
    rows = [_row(i) for i in range(30)]
    results, statements = asyncio.run(_calls(postgres_url, rows, concurrently=False))
    assert results == [_expected(row) for row in rows]
    assert statements == [1] * 30


def test_a_busy_process_gathers_calls_arriving_within_its_window_into_one_statement(postgres_url: str) -> None:
    busy = GatherWindow(0.3, siblings=2)
    for _ in range(3):
        busy.opened()
    rows = [_row(i) for i in range(10)]
    # One call every 5 ms: without the window, each would find fewer than two statements in flight and go
    # out at once; with it, the first two drainers sleep 0.3 s and the first one wakes to all ten rows.
    results, statements = asyncio.run(_calls(postgres_url, rows, concurrently=True, spaced=0.005, gather=busy))
    assert results == [_expected(row) for row in rows]
    assert statements == [10]


def test_a_process_with_few_calls_open_sends_each_call_at_once(postgres_url: str) -> None:
    idle = GatherWindow(0.3, siblings=2)
    idle.opened()
    idle.opened()
    rows = [_row(i) for i in range(5)]
    results, statements = asyncio.run(_calls(postgres_url, rows, concurrently=False, gather=idle))
    assert results == [_expected(row) for row in rows]
    assert statements == [1] * 5


def test_the_gather_window_opens_only_above_its_siblings() -> None:
    window = GatherWindow(0.001, siblings=2)
    seen = [window()]
    for _ in range(3):
        window.opened()
        seen.append(window())
    window.closed()
    seen.append(window())
    assert seen == [0.0, 0.0, 0.0, 0.001, 0.0]
