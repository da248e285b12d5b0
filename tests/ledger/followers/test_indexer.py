"""The chain indexer against a real Anvil and a real PostgreSQL: after a backfill, a crash, a resume
or a reorg, `chain_events` holds exactly the logs the chain has, decoded as web3 decodes them.
Each test gets a database of its own (the `ledger` fixture rewinds the chain)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit
from uuid import uuid4

import psycopg
import pytest
from eth_account import Account
from eth_utils.abi import event_abi_to_log_topic
from eth_utils.address import to_checksum_address
from eth_utils.crypto import keccak
from hexbytes import HexBytes

from ledger.chain.client import Ledger, SettlementItem
from ledger.chain.rpc import RpcError
from ledger.db import migrate
from ledger.domain import Tier
from ledger.followers.indexer import INDEXED_CONTRACTS, ChainIndexer, IndexerStatus, indexer_status
from ledger.units import ONE_TOKEN, BaseUnits

if TYPE_CHECKING:
    from tests.support.ledger import Actors

MAX_UINT = 2**256 - 1
ZERO = "0x" + "00" * 20


# -- databases ---------------------------------------------------------------------------------
def with_database(url: str, name: str) -> str:
    return urlunsplit(urlsplit(url)._replace(path=f"/{name}"))


def admin(url: str, sql: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(sql.encode())


@pytest.fixture(scope="module")
def template_db(postgres_url: str) -> Iterator[str]:
    name = f"indexer_template_{uuid4().hex[:10]}"
    admin(postgres_url, f"CREATE DATABASE {name}")
    migrate(with_database(postgres_url, name))
    yield name
    admin(postgres_url, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture
def index_db(postgres_url: str, template_db: str) -> Iterator[str]:
    name = f"indexer_{uuid4().hex[:12]}"
    admin(postgres_url, f"CREATE DATABASE {name} TEMPLATE {template_db}")
    yield with_database(postgres_url, name)
    admin(postgres_url, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture
def make_indexer(ledger: Ledger, index_db: str) -> Iterator[Callable[..., ChainIndexer]]:
    made: list[ChainIndexer] = []

    def make(**options: Any) -> ChainIndexer:
        indexer = ChainIndexer(ledger, index_db, **options)
        made.append(indexer)
        return indexer

    yield make
    for indexer in made:
        indexer.close()


# -- what web3 says the chain holds, and what the index holds ---------------------------------
def plain(value: Any) -> Any:
    """web3's decoded value in the index's JSON form."""
    if isinstance(value, bool | str):  # strings are checksummed addresses or names
        return value
    if isinstance(value, int):
        return str(value)
    if isinstance(value, bytes):
        return "0x" + value.hex()
    if isinstance(value, Mapping):
        return {k: plain(value[k]) for k in value}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    raise TypeError(type(value))


def chain_events(ledger: Ledger, to_block: int | None = None) -> dict[tuple[int, int], dict[str, Any]]:
    """Every log of the indexed contracts up to `to_block`, decoded by web3's own event machinery."""
    w3 = ledger.w3
    end = w3.eth.block_number if to_block is None else to_block
    out: dict[tuple[int, int], dict[str, Any]] = {}
    times: dict[int, int] = {}
    for key in INDEXED_CONTRACTS:
        contract = ledger.contract(key)
        logs = w3.eth.get_logs({"address": contract.address, "fromBlock": ledger.deployment.deploy_block,
                                "toBlock": end})
        names = {event_abi_to_log_topic(e): e["name"] for e in contract.abi if e["type"] == "event"}
        for entry in logs:
            decoded = getattr(contract.events, names[bytes(entry["topics"][0])])().process_log(entry)
            number = int(entry["blockNumber"])
            if number not in times:
                times[number] = int(w3.eth.get_block(number)["timestamp"])
            out[(number, int(entry["logIndex"]))] = {
                "contract": key,
                "event": decoded["event"],
                "args": plain(decoded["args"]),  # (its "items" argument hides AttributeDict.items)
                "tx_hash": bytes(entry["transactionHash"]),
                "block_hash": bytes(entry["blockHash"]),
                "time": datetime.fromtimestamp(times[number], UTC),
            }
    return out


def index_rows(url: str) -> dict[tuple[int, int], dict[str, Any]]:
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT block, log_index, contract, event, kind, args, tx_hash, block_hash, block_time, accounts,"
            " batch_id, amount FROM chain_events ORDER BY block, log_index"
        ).fetchall()
    return {
        (int(r[0]), int(r[1])): {
            "contract": r[2], "event": r[3], "kind": r[4], "args": r[5], "tx_hash": bytes(r[6]),
            "block_hash": bytes(r[7]), "time": r[8], "accounts": [to_checksum_address(bytes(a)) for a in r[9]],
            "batch_id": None if r[10] is None else bytes(r[10]), "amount": None if r[11] is None else int(r[11]),
        }
        for r in rows
    }


def assert_index_exact(ledger: Ledger, url: str, status: IndexerStatus) -> dict[tuple[int, int], dict[str, Any]]:
    """The index equals web3's decoding of the chain up to the cursor: same logs, args, hashes and times."""
    expected = chain_events(ledger, status.block)
    rows = index_rows(url)
    assert rows.keys() == expected.keys()
    for key, want in expected.items():
        got = rows[key]
        assert (got["contract"], got["event"], got["tx_hash"], got["block_hash"], got["time"]) == (
            want["contract"], want["event"], want["tx_hash"], want["block_hash"], want["time"]), key
        assert {k: got["args"][k] for k in want["args"]} == want["args"], key
    assert ledger.w3.eth.get_block(status.block)["hash"] == HexBytes(status.block_hash)
    return rows


def by_event(rows: dict[tuple[int, int], dict[str, Any]], event: str) -> list[dict[str, Any]]:
    return [r for r in rows.values() if r["event"] == event]


def mine(ledger: Ledger, blocks: int) -> None:
    ledger.w3.provider.make_request("anvil_mine", [hex(blocks)])  # type: ignore[arg-type]


def snapshot(ledger: Ledger) -> str:
    return str(ledger.w3.provider.make_request("evm_snapshot", [])["result"])  # type: ignore[arg-type]


def revert(ledger: Ledger, snap: str) -> None:
    assert ledger.w3.provider.make_request("evm_revert", [snap])["result"] is True  # type: ignore[arg-type]


# -- tests --------------------------------------------------------------------------------------
def test_backfill_indexes_every_event_of_every_contract_exactly(
    ledger: Ledger, funded: Actors, make_indexer: Callable[..., ChainIndexer], index_db: str
) -> None:
    op, ent, dev, other = funded.operator, funded.enterprise, funded.developer, funded.other
    ledger.set_allowlisted(op, other.address, True)
    ledger.buy(ent, 5 * ONE_TOKEN)
    ledger.issue(op, other.address, 3 * ONE_TOKEN, "INV-2024-001")
    ledger.transfer(ent, other.address, 10 * ONE_TOKEN)
    ledger.deposit(ent, 200 * ONE_TOKEN, permit=False)  # Approval + Deposited
    ledger.deposit(other, 2 * ONE_TOKEN, permit=False)
    ledger.set_budget(ent, dev.address, 100 * ONE_TOKEN)
    ledger.set_budget(ent, other.address, 50 * ONE_TOKEN)
    ledger.set_budget(ent, other.address, 10 * ONE_TOKEN)  # a cut, effective an unlock period later
    ledger.request_withdrawal(ent, 5 * ONE_TOKEN)
    ledger.grant_role(op, "AUDITOR_ROLE", other.address)
    ledger.set_rate(op, "test/indexed-model", 5, 7, Tier.CLOUD)
    ledger.pause(op)
    ledger.unpause(op)
    settled = ledger.settle_batch(funded.settler, keccak(text="root"), 3, [
        SettlementItem(ent.address, dev.address, BaseUnits(150 * ONE_TOKEN)),  # budget covers 100: shortfall
        SettlementItem(other.address, other.address, BaseUnits(2 * ONE_TOKEN)),
    ])
    batch_id = settled.batch_id
    assert len(settled.shortfalls) == 1
    indexer = make_indexer(initial_range=2, max_range=8, target_logs=6)
    windows: list[int] = []

    status = indexer.sync_once(lambda p: windows.append(p.block))

    assert status.block == status.head == ledger.w3.eth.block_number and status.lag == 0
    assert len(windows) > 3 and windows == sorted(windows) and windows[-1] == status.block
    rows = assert_index_exact(ledger, index_db, status)
    assert indexer.events_indexed == len(rows)
    kinds = {r["event"]: r["kind"] for r in rows.values() if r["event"] != "Transfer"}
    assert kinds == {
        "RoleGranted": "role_change", "TiersSet": "config", "TreasurySet": "config", "ModelListed": "rate_change",
        "RateSet": "rate_change", "AllowlistUpdated": "allowlist", "Purchased": "purchase", "Issued": "issue",
        "Approval": "approval", "Paused": "pause", "Unpaused": "pause", "Redeemed": "redemption",
        "Shortfall": "shortfall", "BatchSettled": "batch", "Deposited": "deposit", "BudgetSet": "budget",
        "WithdrawalRequested": "withdrawal", **({"UnlockPeriodSet": "config"} if "UnlockPeriodSet" in kinds else {}),
        **({"EscrowSet": "config"} if "EscrowSet" in kinds else {}),
    }
    transfers = {(r["args"]["from"], r["args"]["to"]): r for r in by_event(rows, "Transfer")}
    assert transfers[(ZERO, ent.address)]["kind"] == "mint"
    assert transfers[(ent.address, other.address)]["kind"] == "transfer"
    assert transfers[(ledger.settlement.address, ZERO)]["kind"] == "burn"  # one burn per batch, from escrow
    assert transfers[(ledger.settlement.address, ZERO)]["amount"] == 102 * ONE_TOKEN
    assert transfers[(ent.address, other.address)]["accounts"] == [ent.address, other.address]
    cut = by_event(rows, "BudgetSet")[-1]
    # A budget moves no tokens: its amount is an argument, not a sum of `amount`.
    assert (cut["args"]["spender"], cut["args"]["amount"], cut["amount"], cut["kind"]) == (
        other.address, str(10 * ONE_TOKEN), None, "budget")
    deposits = {r["args"]["account"]: r["amount"] for r in by_event(rows, "Deposited")}
    assert deposits == {ent.address: 200 * ONE_TOKEN, other.address: 2 * ONE_TOKEN}
    assert by_event(rows, "WithdrawalRequested")[0]["args"]["amount"] == str(5 * ONE_TOKEN)
    shortfall = by_event(rows, "Shortfall")[0]
    assert shortfall["batch_id"] == batch_id and shortfall["amount"] == 50 * ONE_TOKEN
    assert shortfall["args"] == {"batchId": "0x" + batch_id.hex(), "payer": ent.address, "spender": dev.address,
                                 "owed": str(150 * ONE_TOKEN), "paid": str(100 * ONE_TOKEN)}
    assert shortfall["accounts"] == [ent.address, dev.address]
    assert {r["amount"] for r in by_event(rows, "Redeemed")} == {100 * ONE_TOKEN, 2 * ONE_TOKEN}
    batch = by_event(rows, "BatchSettled")[0]
    assert batch["amount"] == 102 * ONE_TOKEN and batch["args"]["items"] == "3"
    auditor = next(r for r in by_event(rows, "RoleGranted") if r["args"]["account"] == other.address)
    assert auditor["args"]["roleName"] == "AUDITOR_ROLE" and auditor["accounts"] == [other.address, op.address]
    rate = next(r for r in by_event(rows, "RateSet") if r["args"].get("modelName") == "test/indexed-model")
    assert rate["args"]["inputRate"] == "5"
    listed = next(r for r in by_event(rows, "ModelListed") if r["args"]["name"] == "test/indexed-model")
    assert listed["args"]["tierName"] == "cloud"
    assert by_event(rows, "Issued")[0]["args"]["refText"] == "INV-2024-001"
    tiers = by_event(rows, "TiersSet")[0]["args"]["tiers"]
    assert tiers and set(tiers[0]) == {"minAmount", "price"} and all(isinstance(v, str) for v in tiers[0].values())


def test_a_crashed_window_leaves_nothing_and_a_new_process_resumes_from_the_checkpoint(
    ledger: Ledger, funded: Actors, make_indexer: Callable[..., ChainIndexer], index_db: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    accounts = [Account.create() for _ in range(6)]
    for account in accounts:
        ledger.set_allowlisted(funded.operator, account.address, True)
    first = make_indexer(initial_range=4, max_range=4)
    commit = ChainIndexer._commit
    calls = {"n": 0}

    def crash_on_second(self: ChainIndexer, conn: Any, expected: Any, end: int, rows: Any, blocks: Any,
                        head: int) -> Any:
        calls["n"] += 1
        if calls["n"] == 2:  # the window's rows are copied, then its block records fail: all rolled back
            blocks = [*blocks, (end + 10_000, b"short", blocks[0][2])]
        return commit(self, conn, expected, end, rows, blocks, head)

    monkeypatch.setattr(ChainIndexer, "_commit", crash_on_second)
    with pytest.raises(psycopg.errors.CheckViolation):
        first.sync_once()
    monkeypatch.undo()
    with psycopg.connect(index_db) as conn:
        saved = indexer_status(conn)
        assert saved is not None
        assert conn.execute("SELECT max(block) FROM chain_events").fetchone() == (saved.block,)
    assert_index_exact(ledger, index_db, saved)

    for account in accounts:  # more history after the crash
        ledger.mint(funded.operator, account.address, ONE_TOKEN)
    second = make_indexer(initial_range=64)  # a new process: everything it knows comes from the database
    asked: list[int] = []
    call = second.rpc.call

    def recording(method: str, params: list[Any]) -> Any:
        if method == "eth_getLogs":
            asked.append(int(params[0]["fromBlock"], 16))
        return call(method, params)

    second.rpc.call = recording  # type: ignore[method-assign]
    status = second.sync_once()

    assert asked[0] == saved.block + 1
    rows = assert_index_exact(ledger, index_db, status)
    assert len([r for r in rows.values() if r["kind"] == "mint" and r["args"]["value"] == str(ONE_TOKEN)]) == 6
    assert second.sync_once().block == status.block  # nothing new: nothing read, nothing written


@pytest.mark.parametrize("replacement_blocks", [1, 12], ids=["shorter-chain", "longer-chain"])
def test_replaced_blocks_are_deleted_and_indexed_again_from_the_fork_point(
    ledger: Ledger, funded: Actors, make_indexer: Callable[..., ChainIndexer], index_db: str,
    replacement_blocks: int,
) -> None:
    op, ent, other = funded.operator, funded.enterprise, funded.other
    ledger.set_allowlisted(op, other.address, True)
    indexer = make_indexer(initial_range=3, max_range=3)
    indexer.sync_once()
    fork = ledger.w3.eth.block_number
    snap = snapshot(ledger)
    ledger.transfer(ent, other.address, 11 * ONE_TOKEN)
    ledger.approve(ent, other.address, 5 * ONE_TOKEN)
    ledger.mint(op, other.address, 7 * ONE_TOKEN)
    ledger.transfer(ent, other.address, 13 * ONE_TOKEN)
    replaced = indexer.sync_once()
    assert replaced.block == fork + 4
    revert(ledger, snap)
    # Another history on top of the fork point: same block numbers, other hashes and events.
    ledger.transfer(ent, other.address, 17 * ONE_TOKEN)
    if replacement_blocks > 1:
        ledger.set_rate(op, "test/after-reorg", 1, 2, Tier.EDGE)
        mine(ledger, replacement_blocks - 2)
    assert (ledger.w3.eth.block_number > replaced.block) is (replacement_blocks > 4)

    status = indexer.sync_once()

    assert indexer.reorgs == 1
    rows = assert_index_exact(ledger, index_db, status)
    moved = sorted(int(r["args"]["value"]) // ONE_TOKEN for r in rows.values()
                   if r["event"] == "Transfer" and r["args"]["to"] == other.address and r["args"]["from"] != ZERO)
    assert moved == [17]
    assert not [r for r in rows.values() if r["event"] == "Approval" and r["args"]["spender"] == other.address]
    with psycopg.connect(index_db) as conn:
        recorded = conn.execute("SELECT block, block_hash FROM indexer_blocks WHERE block > %s", (fork,)).fetchall()
    for number, stored in recorded:
        assert ledger.w3.eth.get_block(int(number))["hash"] == HexBytes(bytes(stored))


def test_a_node_refusing_large_ranges_gets_smaller_ones(
    ledger: Ledger, funded: Actors, make_indexer: Callable[..., ChainIndexer], index_db: str
) -> None:
    for _ in range(5):
        ledger.mint(funded.operator, funded.enterprise.address, ONE_TOKEN)
    indexer = make_indexer(initial_range=64, max_range=64)
    call = indexer.rpc.call
    ranges: list[int] = []

    def limited(method: str, params: list[Any]) -> Any:
        if method == "eth_getLogs":
            size = int(params[0]["toBlock"], 16) - int(params[0]["fromBlock"], 16) + 1
            if size > 5:
                raise RpcError(method, {"code": -32005, "message": "query exceeds max block range 5"})
            ranges.append(size)
        return call(method, params)

    indexer.rpc.call = limited  # type: ignore[method-assign]
    status = indexer.sync_once()

    assert ranges and max(ranges) <= 5
    assert_index_exact(ledger, index_db, status)


def test_lag_behind_the_head_is_reported(
    ledger: Ledger, funded: Actors, make_indexer: Callable[..., ChainIndexer], index_db: str
) -> None:
    indexer = make_indexer(confirmations=3, heartbeat_seconds=0)
    status = indexer.sync_once()
    head = ledger.w3.eth.block_number
    assert (status.head, status.block, status.lag) == (head, head - 3, 3)
    mine(ledger, 2)
    before = time.monotonic()
    status = indexer.sync_once()
    assert (status.lag, status.block) == (3, head - 1)
    with psycopg.connect(index_db) as conn:
        saved = indexer_status(conn)
    assert saved is not None and (saved.block, saved.head, saved.lag) == (head - 1, head + 2, 3)
    assert saved.updated_at is not None and time.monotonic() - before < 5
