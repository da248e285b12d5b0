"""Group commit for the hot SQL calls: concurrent calls share one statement per round trip.

Under load, every `reserve_hold` (or `meter_hold`) that arrives while a round trip
is in flight waits for the next one, which carries them all: `SELECT f(...) FROM
unnest(...)` evaluates the function once per row, in row order, inside one
transaction. A lone call goes out at once, so nothing waits when the service is
idle, and as a plain call with scalar parameters: the array form costs PostgreSQL
and the client about 0.4 ms more for one row (25 array literals to build, send,
parse and unnest), which is most of what a lone call waits. Rows are sorted by
(payer, spender) so that every statement takes its row locks in the same order
and two statements can never deadlock.

A busy process also waits a moment for company (`GatherWindow`, PostgreSQL's
commit_delay/commit_siblings for these statements): with more than `siblings`
calls open in the process, a statement that would go out waits `window` seconds
first, so that the rows arriving meanwhile share its round trip and commit. Split
over several service processes, each one's share of the load arrives too thinly
to coalesce on its own (three processes at 64 connections sent 0.7 statements
per call against one process's 0.25); the window brings that back to about 0.5,
and one process to 0.15, at a cost of `window` on the latency of calls that wait
tens of milliseconds anyway. A process with few calls open never waits.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from typing import Any

import psycopg
from psycopg_pool import AsyncConnectionPool

log = logging.getLogger(__name__)

Row = tuple[Any, ...]
CALL_EACH = "SELECT ord, {function}({args}) FROM unnest({arrays}) WITH ORDINALITY AS t({columns}, ord)"
CALL_ONE = "SELECT 1, {function}({args})"


class GatherWindow:
    """How long a hot statement waits for company: `window` seconds while more than `siblings` calls are open
    in this process (counted by `opened` and `closed`), else 0."""

    def __init__(self, window: float, siblings: int) -> None:
        self.window = window
        self.siblings = siblings
        self.open = 0

    def opened(self) -> None:
        self.open += 1

    def closed(self) -> None:
        self.open -= 1

    def __call__(self) -> float:
        return self.window if self.open > self.siblings else 0.0


class StatementBatcher:
    """Runs `function` over many argument rows per round trip; at most `in_flight` statements at a time."""

    def __init__(self, pool: AsyncConnectionPool[Any], function: str, casts: Sequence[str], *,
                 sort_key: tuple[int, ...], first_arg: int = 0, max_batch: int = 256, in_flight: int = 2,
                 statement: str = CALL_EACH, statement_one: str = CALL_ONE,
                 gather: Callable[[], float] | None = None) -> None:
        """`casts` types the function's arguments; rows may lead with `first_arg` sort-only values.

        `statement` may replace the default `SELECT ord, function(...)`: it gets `{function}`, `{args}`,
        `{arrays}` and `{columns}` filled in and returns (ord, result) rows; a row it returns nothing
        for gets None. `statement_one` is its form for a single row: `{function}`, `{args}` (the scalar
        parameters, cast) and `{c0}`, `{c1}`... (each one alone) filled in, returning (1, result).

        `gather()`, when given, is how long a statement waits for company before it goes out (0: at once)."""
        self.pool = pool
        self.max_batch = max_batch
        self.sort_key = sort_key
        self.first_arg = first_arg
        self.in_flight = in_flight
        self.gather = gather
        self._pending: list[tuple[Row, asyncio.Future[Any]]] = []
        self._draining = 0
        columns = ", ".join(f"c{i}" for i in range(len(casts)))
        # Arrays travel in binary (%b): no per-element quoting and escaping of an array literal (5 % of the
        # service's CPU at c=64 went there). uint256 values travel as text: psycopg would pick int8[] for a
        # list of small ints.
        arrays = ", ".join("%b::text[]::numeric[]" if cast == "numeric" else f"%b::{cast}[]" for cast in casts)
        self._numeric = [i for i, cast in enumerate(casts) if cast == "numeric"]
        args = ", ".join(f"c{i}" for i in range(len(casts)))
        self.sql = statement.format(function=function, args=args, arrays=arrays, columns=columns).encode()
        scalars = [f"%(c{i})s::{cast}" for i, cast in enumerate(casts)]
        self.sql_one = statement_one.format(function=function, args=", ".join(scalars),
                                            **{f"c{i}": scalar for i, scalar in enumerate(scalars)}).encode()

    async def call(self, *args: Any) -> Any:
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending.append((args, future))
        if self._draining < self.in_flight:
            self._draining += 1
            asyncio.get_running_loop().create_task(self._drain())
        return await future

    async def _drain(self) -> None:
        # No await between the emptiness check and the decrement, so a call is never left without a drainer.
        try:
            delay = 0.0 if self.gather is None else self.gather()
            if delay > 0:
                await asyncio.sleep(delay)
            while self._pending:
                batch, self._pending = self._pending[: self.max_batch], self._pending[self.max_batch :]
                await self._run(batch)
        finally:
            self._draining -= 1

    async def _run(self, batch: list[tuple[Row, asyncio.Future[Any]]]) -> None:
        batch.sort(key=lambda item: tuple(item[0][i] for i in self.sort_key))
        columns = [list(col) for col in zip(*(args for args, _ in batch), strict=True)][self.first_arg :]
        for i in self._numeric:
            columns[i] = [None if v is None else str(v) for v in columns[i]]
        sql: bytes = self.sql
        params: Any = columns
        if len(batch) == 1:
            sql, params = self.sql_one, {f"c{i}": column[0] for i, column in enumerate(columns)}
        for attempt in range(3):
            try:
                async with self.pool.connection() as conn:
                    cur = await conn.execute(sql, params)
                    rows = await cur.fetchall()
                break
            except psycopg.errors.DeadlockDetected:  # cannot happen with sorted rows; kept as a safety net
                log.warning("deadlock in a batched statement; retrying (%d)", attempt + 1)
            except Exception as exc:
                for _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                return
        else:
            failure = RuntimeError("batched statement deadlocked three times")
            for _, future in batch:
                future.set_exception(failure)
            return
        results = {int(ordinal): value for ordinal, value in rows}
        for i, (_, future) in enumerate(batch, start=1):
            if not future.done():
                future.set_result(results.get(i))
