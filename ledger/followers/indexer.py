"""The chain indexer: every event of the Sluice contracts, decoded into `chain_events` (migration 0004).

This module owns `chain_events`, `indexer_blocks` and `indexer_cursor`, and how they follow the chain:

- Backfill and follow: `eth_getLogs` over the token, sale, rate card and settlement addresses from
  the deployment block, in adaptive block ranges (`ledger.chain.rpc.LogSpan`: shrunk to ~10,000 logs per
  answer, halved when the node refuses a range, grown while answers are small and fast). The next
  range is fetched in a background thread while the current one is decoded and written.
- Each range is one window. Its rows go in with one binary COPY, together with the hash and time
  of every block they came from and the new cursor, in one transaction, under an advisory lock and
  only if the cursor is still where the window started: a crash never leaves a window half written
  and two indexers (the service's thread and `sluice audit index`) never interleave.
- Block times: one `eth_getBlockByNumber` per block that has events, batched, fetched once.
- Reorgs: each window's logs must carry the hashes of the block headers read after them, and the
  hash of the block the pass is anchored on must not have moved. Before extending, the cursor's
  hash is compared with the chain's; on a mismatch the indexer walks its recorded block hashes
  down to the highest one the chain still has (the fork point), deletes every row above it and
  indexes again from there. A chain that no longer has any recorded block is indexed from scratch.

Decoding is done here, not through web3's event machinery (an order of magnitude slower): indexed
arguments are read from topics, static data words are sliced, only the rare dynamic events
(`ModelListed`, `TiersSet`) go through the ABI codec.
"""

from __future__ import annotations

import logging
import struct
import threading
import time
from collections.abc import Callable, Generator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any, cast

import orjson
import psycopg
from eth_abi.abi import decode as abi_decode
from eth_typing import ABIEvent
from eth_utils.abi import event_abi_to_log_topic
from eth_utils.address import to_checksum_address
from psycopg.adapt import Dumper
from psycopg.pq import Format
from psycopg.rows import TupleRow
from psycopg.types.string import BytesBinaryDumper

from ledger.chain.client import ROLE_CONTRACT, Ledger, role_id
from ledger.chain.rpc import JsonRpc, LogSpan, block_hash, result, too_large
from ledger.db import connect
from ledger.domain import tier_label
from ledger.errors import LedgerError
from ledger.followers.follower import ChainMoved, Cursor, CursorMoved, CursorTable, FollowStatus, StopSignal, follow
from ledger.followers.follower import FollowStatus as IndexerStatus

log = logging.getLogger(__name__)

_CURSOR = CursorTable("indexer_cursor", "sluice:chain-indexer")
_ZERO = b"\x00" * 20
# Contracts whose every event is indexed (the payment token is not a Sluice contract).
INDEXED_CONTRACTS = ("token", "sale", "rate_card", "settlement")
KINDS = (
    "purchase", "issue", "mint", "burn", "transfer", "approval", "redemption", "shortfall", "batch",
    "rate_change", "role_change", "allowlist", "pause", "config", "deposit", "withdrawal", "budget",
)  # fmt: skip
ROLE_NAMES = {role_id(name): name for name in (*ROLE_CONTRACT, "DEFAULT_ADMIN_ROLE")}
_FIXED_KIND = {
    "Approval": "approval",
    "AllowlistUpdated": "allowlist",
    "Paused": "pause",
    "Unpaused": "pause",
    "RoleGranted": "role_change",
    "RoleRevoked": "role_change",
    "RoleAdminChanged": "role_change",
    "Purchased": "purchase",
    "Issued": "issue",
    "RateSet": "rate_change",
    "ModelListed": "rate_change",
    "ModelDelisted": "rate_change",
    "BatchSettled": "batch",
    "Redeemed": "redemption",
    "Shortfall": "shortfall",
    "Deposited": "deposit",
    "WithdrawalRequested": "withdrawal",
    "Withdrawn": "withdrawal",
    "BudgetSet": "budget",
}
# The compute-token amount each event moves or records (Shortfall: the unpaid part), for sums.
_AMOUNT_ARG = {
    "Transfer": "value",
    "Approval": "value",
    "Purchased": "amount",
    "Issued": "amount",
    "Redeemed": "amount",
    "BatchSettled": "total",
    "Deposited": "amount",
    "WithdrawalRequested": "amount",
    "Withdrawn": "amount",
}
_COPY_SQL = (
    "COPY chain_events (block, log_index, block_hash, block_time, tx_hash, tx_index, contract, address, event,"
    " kind, accounts, batch_id, amount, args) FROM STDIN WITH (FORMAT BINARY)"
)
_COPY_TYPES = [
    "int8", "int4", "bytea", "timestamptz", "bytea", "int4", "text", "bytea", "text", "text", "bytea[]", "bytea",
    "numeric", "jsonb",
]  # fmt: skip

Row = tuple[Any, ...]
# Binary COPY of `accounts`: the rows carry the bytea[] already in PostgreSQL's binary array format, which
# is much cheaper to build here than psycopg's generic list dumping. (ndim 1, no nulls, element oid 17.)
_BYTEA_ARRAY_OID = psycopg.postgres.types["bytea"].array_oid
_EMPTY_ACCOUNTS = struct.pack("!iiI", 0, 0, 17)
_ADDRESS_SIZE = struct.pack("!i", 20)


def _pack_accounts(accounts: list[bytes]) -> bytes:
    if not accounts:
        return _EMPTY_ACCOUNTS
    return struct.pack("!iiIii", 1, 0, 17, len(accounts), 1) + b"".join(_ADDRESS_SIZE + a for a in accounts)


class _PackedAccountsDumper(Dumper):
    format = Format.BINARY
    oid = _BYTEA_ARRAY_OID

    def dump(self, obj: Any) -> bytes:
        return cast(bytes, obj)


# Binary COPY of `args`: jsonb's binary format is a version byte and the JSON text (orjson's, as built).
_JSONB_VERSION = b"\x01"


class _PackedJsonbDumper(Dumper):
    format = Format.BINARY
    oid = psycopg.postgres.types["jsonb"].oid

    def dump(self, obj: Any) -> bytes:
        return cast(bytes, obj)


# ABI word codes of the static event arguments (one 32-byte word each).
_ADDRESS, _UINT, _BOOL, _BYTES32 = range(4)
_WORD_CODES = {"address": _ADDRESS, "bool": _BOOL, "bytes32": _BYTES32, "uint8": _UINT, "uint256": _UINT}


@lru_cache(maxsize=65_536)
def _address_word(word: str) -> tuple[str, bytes]:
    """(checksummed, raw 20 bytes) of a 64-hex-digit ABI word holding an address."""
    raw = bytes.fromhex(word[24:])
    return checksum(raw), raw


def _word(name: str, code: int, word: str, args: dict[str, Any], accounts: list[bytes], ints: dict[str, int]) -> None:
    """Decode one 64-hex-digit word into `args` (and `accounts` / `ints` for addresses / integers)."""
    if code == _ADDRESS:
        args[name], raw = _address_word(word)
        if raw != _ZERO and raw not in accounts:
            accounts.append(raw)
    elif code == _UINT:
        value = int(word, 16)
        ints[name] = value
        args[name] = str(value)
    elif code == _BOOL:
        args[name] = int(word, 16) == 1
    else:
        args[name] = "0x" + word.lower()


class IndexerError(LedgerError):
    """The indexer cannot follow this chain with this database."""


class IndexerChainMismatch(IndexerError):
    """The database indexes another chain id than the RPC endpoint serves."""


@dataclass(frozen=True)
class IndexProgress:
    """Reported after each committed window of a pass."""

    first_block: int
    block: int
    target: int
    events: int
    seconds: float


@dataclass(frozen=True)
class _Plan:
    expected: Cursor | None
    from_block: int
    target: int
    head: int
    anchor_hash: bytes


@dataclass(frozen=True)
class _EventSpec:
    contract: str
    address: bytes
    name: str
    indexed: tuple[tuple[str, int], ...]
    data: tuple[tuple[str, int], ...]
    static: bool
    data_abi: tuple[Any, ...]


@lru_cache(maxsize=65_536)
def checksum(raw: bytes) -> str:
    """The EIP-55 form of a 20-byte address (cached: indexed histories name the same accounts again and again)."""
    return to_checksum_address(raw)


def _abi_type(component: Any) -> str:
    kind = str(component["type"])
    if kind.startswith("tuple"):
        return "(" + ",".join(_abi_type(c) for c in component["components"]) + ")" + kind[5:]
    return kind


def _plain(typ: str, value: Any, component: Any = None) -> Any:
    """An ABI-decoded value as JSON: addresses checksummed, integers as decimal strings, bytes as 0x hex."""
    if typ == "address":
        return checksum(bytes.fromhex(str(value)[2:])) if isinstance(value, str) else checksum(value)
    if typ.startswith(("uint", "int")):
        return str(int(value))
    if typ.startswith("bytes"):
        return "0x" + bytes(value).hex()
    if typ.startswith("tuple"):
        parts = component["components"]
        if typ.endswith("[]"):
            return [{p["name"]: _plain(str(p["type"]), v, p) for p, v in zip(parts, item, strict=True)}
                    for item in value]
        return {p["name"]: _plain(str(p["type"]), v, p) for p, v in zip(parts, value, strict=True)}
    return value  # bool, string


class ChainIndexer:
    """Keeps `chain_events` of the database at `db_url` equal to the events of the chain, window by window."""

    def __init__(
        self,
        ledger: Ledger,
        db_url: str,
        *,
        confirmations: int = 0,
        max_range: int = 10_000,
        initial_range: int = 8,
        target_logs: int = 10_000,
        header_batch: int = 500,
        heartbeat_seconds: float = 1.0,
        rpc: JsonRpc | None = None,
    ) -> None:
        if confirmations < 0 or header_batch < 1:
            raise ValueError("confirmations must be >= 0 and header_batch >= 1")
        self.ledger = ledger
        self.db_url = db_url
        self.confirmations = confirmations
        self.max_range = max_range
        self.initial_range = min(initial_range, max_range)
        self.target_logs = target_logs
        self.header_batch = header_batch
        self.heartbeat_seconds = heartbeat_seconds
        self.deploy_block = ledger.deployment.deploy_block
        self.rpc = rpc or JsonRpc.of(ledger.w3)
        self.span = LogSpan(initial=self.initial_range, max_span=max_range, target_logs=target_logs)
        self.events_indexed = 0
        self.reorgs = 0
        self.last_status: IndexerStatus | None = None
        self.last_synced = 0.0
        self._conn: psycopg.Connection[TupleRow] | None = None
        self._chain_id: int | None = None
        self._last_heartbeat = 0.0
        self._model_names: dict[str, str] = {}
        self._specs: dict[tuple[str, str], _EventSpec] = {}
        addresses: list[str] = []
        for key in INDEXED_CONTRACTS:
            contract = ledger.contract(key)
            address = str(contract.address).lower()
            addresses.append(address)
            for entry in contract.abi:
                if entry.get("type") != "event":
                    continue
                event = cast(ABIEvent, entry)
                inputs = list(event.get("inputs", []))
                # Indexed arguments of these contracts are all static one-word types.
                indexed = tuple((str(i["name"]), _WORD_CODES[str(i["type"])]) for i in inputs if i.get("indexed"))
                data_inputs = [i for i in inputs if not i.get("indexed")]
                static = all(str(i["type"]) in _WORD_CODES for i in data_inputs)
                data = tuple((str(i["name"]), _WORD_CODES.get(str(i["type"]), -1)) for i in data_inputs)
                topic = "0x" + event_abi_to_log_topic(event).hex()
                self._specs[(address, topic)] = _EventSpec(
                    contract=key,
                    address=bytes.fromhex(address[2:]),
                    name=str(event["name"]),
                    indexed=indexed,
                    data=data,
                    static=static,
                    data_abi=tuple(data_inputs),
                )
        self._addresses = addresses

    # -- the loop ----------------------------------------------------------------------------
    def run(self, stop: StopSignal, interval: float = 0.5, max_backoff: float = 10.0) -> None:
        """Index until `stop` is set. Any RPC or database failure is logged and retried with back-off."""
        follow(stop, "chain indexer", self.sync_once, self._drop_connection, self._synced, interval, max_backoff)
        self.close()

    def _synced(self, status: FollowStatus) -> None:
        self.last_status, self.last_synced = status, time.monotonic()

    def spawn(self, stop: threading.Event, interval: float = 0.5) -> threading.Thread:
        """Run the loop in a daemon thread; set `stop` and join the thread to end it."""
        thread = threading.Thread(target=self.run, args=(stop, interval), name="chain-indexer", daemon=True)
        thread.start()
        return thread

    def close(self) -> None:
        self._drop_connection()

    # -- one pass ----------------------------------------------------------------------------
    def sync_once(self, progress: Callable[[IndexProgress], None] | None = None) -> IndexerStatus:
        """Index up to the head (less `confirmations`) as seen now, one transaction per window."""
        conn = self._db()
        plan = self._plan(conn)
        if isinstance(plan, IndexerStatus):
            return plan
        if not self._model_names:
            self._load_model_names(conn)
        began = time.perf_counter()
        expected, events = plan.expected, 0
        windows = self._windows(plan.from_block, plan.target)
        try:
            for end, logs in windows:
                rows, blocks = self._window_rows(logs, end, plan)
                expected = self._commit(conn, expected, end, rows, blocks, plan.head)
                events += len(rows)
                self.events_indexed += len(rows)
                if progress is not None:
                    progress(IndexProgress(plan.from_block, end, plan.target, events, time.perf_counter() - began))
        finally:
            windows.close()
        assert expected is not None
        return IndexerStatus(expected.block, plan.head, max(0, plan.head - expected.block), expected.block_hash)

    def sync(self, progress: Callable[[IndexProgress], None] | None = None, attempts: int = 10) -> IndexerStatus:
        """`sync_once`, planned again when the chain reorganised or another indexer committed meanwhile."""
        for _ in range(attempts - 1):
            try:
                return self.sync_once(progress)
            except (ChainMoved, CursorMoved) as exc:
                log.info("chain indexer: %s; planning again", exc)
        return self.sync_once(progress)

    def _plan(self, conn: psycopg.Connection[TupleRow]) -> _Plan | IndexerStatus:
        """What to index now: from the cursor, after rewinding past a reorg; the status when up to date."""
        chain_id = self._chain()
        while True:
            cursor = _read_cursor(conn)
            if cursor is not None and cursor.chain_id != chain_id:
                raise IndexerChainMismatch(f"the index holds chain {cursor.chain_id}, the node serves {chain_id}")
            calls: list[tuple[str, list[Any]]] = [("eth_getBlockByNumber", ["latest", False])]
            if cursor is not None:
                calls.append(("eth_getBlockByNumber", [hex(cursor.block), False]))
            answers = self.rpc.batch(calls)
            latest = result(answers[0], "eth_getBlockByNumber")
            head = int(latest["number"], 16)
            target = head - self.confirmations
            if target < self.deploy_block:
                raise IndexerError(f"the chain (head {head}) does not reach the deployment block {self.deploy_block}")
            anchor = block_hash(latest if self.confirmations == 0
                                else self.rpc.call("eth_getBlockByNumber", [hex(target), False]))
            if anchor is None:
                raise ChainMoved(f"block {target} vanished while planning")
            if cursor is None:
                return _Plan(None, self.deploy_block, target, head, anchor)
            if block_hash(result(answers[1], "eth_getBlockByNumber")) == cursor.block_hash:
                if cursor.block >= target:
                    self._heartbeat(conn, cursor, head)
                    return IndexerStatus(cursor.block, head, max(0, head - cursor.block), cursor.block_hash)
                return _Plan(cursor, cursor.block + 1, target, head, anchor)
            self._rewind(conn, cursor, head)

    def _windows(self, start: int, target: int) -> Generator[tuple[int, list[dict[str, Any]]], None, None]:
        """(last block, logs) of each range from `start` to `target`; the next range is fetched meanwhile."""
        pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="indexer-getlogs")

        def fetch(first: int, last: int) -> tuple[list[dict[str, Any]], float]:
            began = time.perf_counter()
            params = {"fromBlock": hex(first), "toBlock": hex(last), "address": self._addresses}
            logs = cast(list[dict[str, Any]], self.rpc.call("eth_getLogs", [params]))
            return logs, time.perf_counter() - began

        def submit(first: int) -> tuple[int, int, Future[tuple[list[dict[str, Any]], float]]]:
            last = self.span.end(first, target)
            return first, last, pool.submit(fetch, first, last)

        pending: tuple[int, int, Future[tuple[list[dict[str, Any]], float]]] | None = submit(start)
        try:
            while pending is not None:
                first, last, future = pending
                try:
                    logs, seconds = future.result()
                except Exception as exc:
                    if last > first and too_large(exc):
                        self.span.refused(last - first + 1)
                        log.info("chain indexer: getLogs %d-%d refused (%s); now %d blocks", first, last, exc,
                                 self.span.span)
                        pending = submit(first)
                        continue
                    raise
                self.span.answered(last - first + 1, len(logs), seconds)
                pending = submit(last + 1) if last < target else None
                yield last, logs
        finally:
            if pending is not None:
                pending[2].cancel()
            pool.shutdown(wait=False, cancel_futures=True)

    def _window_rows(self, logs: list[dict[str, Any]], end: int, plan: _Plan) -> tuple[list[Row], list[Row]]:
        """Decoded rows of one window and the (block, hash, time) of its blocks, checked against the anchor."""
        numbers = sorted({int(entry["blockNumber"], 16) for entry in logs} | {end})
        calls = [("eth_getBlockByNumber", [hex(n), False]) for n in numbers]
        calls.append(("eth_getBlockByNumber", [hex(plan.target), False]))
        answers = self.rpc.batch(calls, self.header_batch)
        if block_hash(result(answers[-1], "eth_getBlockByNumber")) != plan.anchor_hash:
            raise ChainMoved(f"block {plan.target} changed while the indexer read up to it")
        headers: dict[int, tuple[str, bytes, datetime]] = {}
        blocks: list[Row] = []
        for number, answer in zip(numbers, answers[:-1], strict=True):
            header = result(answer, "eth_getBlockByNumber")
            if header is None:
                raise ChainMoved(f"block {number} vanished while the indexer read it")
            moment = datetime.fromtimestamp(int(header["timestamp"], 16), UTC)
            raw_hash = bytes.fromhex(header["hash"][2:])
            headers[number] = (str(header["hash"]).lower(), raw_hash, moment)
            blocks.append((number, raw_hash, moment))
        rows: list[Row] = []
        for entry in logs:
            if entry.get("removed"):
                continue
            number = int(entry["blockNumber"], 16)
            hex_hash, raw_hash, moment = headers[number]
            if str(entry["blockHash"]).lower() != hex_hash:
                raise ChainMoved(f"block {number} changed while the indexer read it")
            row = self._decode(entry, number, raw_hash, moment)
            if row is not None:
                rows.append(row)
        return rows, blocks

    def _decode(self, entry: dict[str, Any], number: int, raw_hash: bytes, moment: datetime) -> Row | None:
        """One log as a chain_events row; words are read straight from the hex the node sent."""
        topics: list[str] = entry["topics"]
        spec = self._specs.get((str(entry["address"]).lower(), topics[0] if topics else ""))
        if spec is None:
            log.warning("chain indexer: skipping a log the ABIs do not describe (block %d, log %s)", number,
                        entry.get("logIndex"))
            return None
        args: dict[str, Any] = {}
        accounts: list[bytes] = []
        ints: dict[str, int] = {}
        for (name, code), topic in zip(spec.indexed, topics[1:], strict=True):
            _word(name, code, topic[2:], args, accounts, ints)
        data: str = entry["data"]
        if spec.static:
            for i, (name, code) in enumerate(spec.data):
                _word(name, code, data[2 + 64 * i : 66 + 64 * i], args, accounts, ints)
        elif spec.data:
            values = abi_decode([_abi_type(c) for c in spec.data_abi], bytes.fromhex(data[2:]))
            for component, value in zip(spec.data_abi, values, strict=True):
                args[str(component["name"])] = _plain(str(component["type"]), value, component)
        kind = self._enrich(spec.name, args, ints, accounts)
        amount = ints.get(_AMOUNT_ARG.get(spec.name, ""))
        if spec.name == "Shortfall":
            amount = ints["owed"] - ints["paid"]
        batch = bytes.fromhex(args["batchId"][2:]) if "batchId" in args else None
        return (
            number, int(entry["logIndex"], 16), raw_hash, moment, bytes.fromhex(str(entry["transactionHash"])[2:]),
            int(entry["transactionIndex"], 16), spec.contract, spec.address, spec.name, kind, _pack_accounts(accounts),
            batch, amount, _JSONB_VERSION + orjson.dumps(args),
        )  # fmt: skip

    def _enrich(self, name: str, args: dict[str, Any], ints: dict[str, int], accounts: list[bytes]) -> str:
        """The event's kind, with readable names added next to role ids, model ids, tiers and references."""
        if name == "Transfer":
            if args["from"] == checksum(_ZERO):
                return "mint"
            return "burn" if args["to"] == checksum(_ZERO) else "transfer"
        if "role" in args and name != "RoleAdminChanged":
            args["roleName"] = ROLE_NAMES.get(bytes.fromhex(args["role"][2:]), "unknown")
        if "model" in args:
            if name == "ModelListed":
                self._model_names[args["model"]] = args["name"]
                args["tierName"] = tier_label(int(args["tier"]))
            elif args["model"] in self._model_names:
                args["modelName"] = self._model_names[args["model"]]
        if name == "Issued":
            args["refText"] = bytes.fromhex(args["ref"][2:]).rstrip(b"\x00").decode("utf-8", "replace")
        return _FIXED_KIND.get(name, "config")

    # -- one window's transaction ------------------------------------------------------------
    def _commit(self, conn: psycopg.Connection[TupleRow], expected: Cursor | None, end: int, rows: list[Row],
                blocks: list[Row], head: int) -> Cursor:
        cursor = Cursor(self._chain(), end, next(b[1] for b in blocks if b[0] == end))
        with conn.transaction():
            if _lock_and_read_cursor(conn) != expected:
                raise CursorMoved("another indexer advanced the cursor")
            with conn.cursor() as cur:
                if expected is None:  # a first pass, or a chain that kept none of the recorded blocks
                    cur.execute("DELETE FROM chain_events")
                    cur.execute("DELETE FROM indexer_blocks")
                if rows:
                    cur.adapters.register_dumper(None, _PackedAccountsDumper)
                    cur.adapters.register_dumper(None, _PackedJsonbDumper)
                    cur.adapters.register_dumper(None, BytesBinaryDumper)  # the C dumper, not dbapi20's wrapper
                    with cur.copy(_COPY_SQL) as copy:
                        copy.set_types(_COPY_TYPES)
                        for row in rows:
                            copy.write_row(row)
                cur.executemany(
                    "INSERT INTO indexer_blocks (block, block_hash, block_time) VALUES (%s, %s, %s)"
                    " ON CONFLICT (block) DO UPDATE SET block_hash = EXCLUDED.block_hash,"
                    " block_time = EXCLUDED.block_time",
                    blocks,
                )
                cur.execute(
                    "INSERT INTO indexer_cursor (id, chain_id, block, block_hash, head, updated_at)"
                    " VALUES (1, %s, %s, %s, %s, now())"
                    " ON CONFLICT (id) DO UPDATE SET chain_id = EXCLUDED.chain_id, block = EXCLUDED.block,"
                    " block_hash = EXCLUDED.block_hash, head = EXCLUDED.head, updated_at = EXCLUDED.updated_at",
                    (cursor.chain_id, cursor.block, cursor.block_hash, head),
                )
        self._last_heartbeat = time.monotonic()
        return cursor

    # -- reorgs ------------------------------------------------------------------------------
    def _rewind(self, conn: psycopg.Connection[TupleRow], cursor: Cursor, head: int) -> None:
        """Delete every row above the fork point (the highest recorded block the chain still has)."""
        fork = self._fork_point(conn, min(cursor.block, head))
        with conn.transaction():
            if _lock_and_read_cursor(conn) != cursor:
                raise CursorMoved("another indexer moved the cursor during a rewind")
            if fork is None:
                log.warning("chain indexer: the chain kept none of the indexed blocks; indexing again from block %d",
                            self.deploy_block)
                conn.execute("DELETE FROM chain_events")
                conn.execute("DELETE FROM indexer_blocks")
                conn.execute("DELETE FROM indexer_cursor")
            else:
                log.warning("chain indexer: block %d was replaced; indexing again from block %d", cursor.block,
                            fork.block + 1)
                conn.execute("DELETE FROM chain_events WHERE block > %s", (fork.block,))
                conn.execute("DELETE FROM indexer_blocks WHERE block > %s", (fork.block,))
                conn.execute("UPDATE indexer_cursor SET block = %s, block_hash = %s, updated_at = now()",
                             (fork.block, fork.block_hash))
        self.reorgs += 1

    def _fork_point(self, conn: psycopg.Connection[TupleRow], below: int) -> Cursor | None:
        while True:
            recorded = conn.execute(
                "SELECT block, block_hash FROM indexer_blocks WHERE block <= %s ORDER BY block DESC LIMIT 64",
                (below,),
            ).fetchall()
            if not recorded:
                return None
            answers = self.rpc.batch([("eth_getBlockByNumber", [hex(int(b)), False]) for b, _h in recorded])
            for (number, stored), answer in zip(recorded, answers, strict=True):
                if block_hash(result(answer, "eth_getBlockByNumber")) == bytes(stored):
                    return Cursor(self._chain(), int(number), bytes(stored))
            below = int(recorded[-1][0]) - 1

    # -- status ------------------------------------------------------------------------------
    def status(self) -> IndexerStatus | None:
        """The recorded position; None before the first window is committed."""
        return indexer_status(self._db())

    # -- plumbing ----------------------------------------------------------------------------
    def _load_model_names(self, conn: psycopg.Connection[TupleRow]) -> None:
        for model, name in conn.execute(
            "SELECT args->>'model', args->>'name' FROM chain_events WHERE event = 'ModelListed'"
        ):
            self._model_names[str(model)] = str(name)

    def _chain(self) -> int:
        if self._chain_id is None:
            self._chain_id = int(self.rpc.call("eth_chainId", []), 16)
        return self._chain_id

    def _heartbeat(self, conn: psycopg.Connection[TupleRow], cursor: Cursor, head: int) -> None:
        """Record the head now and then while idle, so a stalled indexer shows in `updated_at`."""
        if time.monotonic() - self._last_heartbeat < self.heartbeat_seconds:
            return
        conn.execute(
            "UPDATE indexer_cursor SET head = %s, updated_at = now() WHERE block = %s AND block_hash = %s",
            (head, cursor.block, cursor.block_hash),
        )
        self._last_heartbeat = time.monotonic()

    def _db(self) -> psycopg.Connection[TupleRow]:
        if self._conn is None or self._conn.closed or self._conn.broken:
            # Autocommit: reads hold no transaction open; every write is an explicit transaction.
            self._conn = connect(self.db_url, connect_timeout=10)
            self._conn.autocommit = True
        return self._conn

    def _drop_connection(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


_read_cursor = _CURSOR.read
_lock_and_read_cursor = _CURSOR.lock_and_read
indexer_status = _CURSOR.status  # read on the caller's connection


