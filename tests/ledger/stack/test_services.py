"""The embedded services: Anvil, PostgreSQL and Redis each start, answer, persist and stop."""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import psycopg
import pytest
import redis
from eth_account import Account
from eth_account.signers.local import LocalAccount
from kombu.connection import Connection
from web3 import Web3
from web3.types import Nonce, TxParams, TxReceipt, Wei

from ledger.chain.artifacts import load_artifact
from ledger.config import Settings
from ledger.db import MIGRATIONS_DIR, applied_migrations, migrate
from ledger.keys import embedded_account
from ledger.paths import StatePaths
from ledger.stack.errors import PortInUse
from ledger.stack.probes import chain_id_at, database_answers, free_port
from ledger.stack.services import (
    Service,
    anvil_binary,
    anvil_service,
    postgres_service,
    redis_client_url,
    redis_service,
)
from ledger.stack.supervisor import Stack

CHAIN_ID = 31337
ZERO_FEES: TxParams = {"maxFeePerGas": Wei(0), "maxPriorityFeePerGas": Wei(0)}


def anvil(state_dir: Path, port: int) -> Service:
    """The embedded Anvil exactly as `sluice up` runs it, with its state in `state_dir`."""
    return anvil_service(StatePaths(state_dir), port=port, chain_id=CHAIN_ID, binary=anvil_binary(Settings()))


# --------------------------------------------------------------------------- Anvil


def test_anvil_starts_with_zero_fees_and_stops(tmp_path: Path) -> None:
    paths = StatePaths(tmp_path)
    service = anvil(tmp_path, free_port())
    assert service.url is not None
    with Stack([service]):
        w3 = Web3(Web3.HTTPProvider(service.url))
        assert w3.eth.chain_id == CHAIN_ID
        assert w3.eth.gas_price == 0
        assert w3.eth.get_block("latest")["baseFeePerGas"] == 0
        assert service.healthy()
    assert chain_id_at(service.url) is None
    assert paths.chain_state.is_file(), "a clean stop dumps the chain state"
    assert "Listening on 127.0.0.1" in paths.anvil_log.read_text()


def test_key_without_ether_transacts_at_zero_gas(fresh_anvil: str) -> None:
    w3 = Web3(Web3.HTTPProvider(fresh_anvil))
    wallet = Account.create()
    assert w3.eth.get_balance(wallet.address) == 0
    artifact = load_artifact("TestStablecoin")
    factory = w3.eth.contract(abi=artifact["abi"], bytecode=artifact["bytecode"])

    # A legacy transaction priced at 0.
    deploy_tx = factory.constructor(wallet.address).build_transaction(
        {"from": wallet.address, "nonce": 0, "gasPrice": 0, "chainId": CHAIN_ID}
    )
    deployed = w3.eth.wait_for_transaction_receipt(
        w3.eth.send_raw_transaction(wallet.sign_transaction(deploy_tx).raw_transaction), timeout=10
    )
    assert deployed["status"] == 1
    assert deployed["effectiveGasPrice"] == 0
    token = w3.eth.contract(address=deployed["contractAddress"], abi=artifact["abi"])

    # An EIP-1559 transaction with zero fees. They are explicit: Anvil's eth_maxPriorityFeePerGas never
    # suggests less than 1 gwei, so web3's default fee strategy would ask for ether this wallet lacks.
    mint_tx = token.functions.mint(wallet.address, 5).build_transaction({"from": wallet.address, **ZERO_FEES})
    mint_tx["nonce"] = Nonce(1)
    minted = w3.eth.wait_for_transaction_receipt(
        w3.eth.send_raw_transaction(wallet.sign_transaction(mint_tx).raw_transaction), timeout=10
    )
    assert minted["status"] == 1
    assert minted["type"] == 2
    assert minted["effectiveGasPrice"] == 0
    assert token.functions.balanceOf(wallet.address).call() == 5
    assert w3.eth.get_balance(wallet.address) == 0


def _chain_snapshot(w3: Web3, token_address: str, holder: str, payee: str) -> dict[str, Any]:
    token = w3.eth.contract(address=Web3.to_checksum_address(token_address), abi=load_artifact("TestStablecoin")["abi"])
    logs = w3.eth.get_logs({"fromBlock": 0, "toBlock": "latest"})
    return {
        "block_number": w3.eth.block_number,
        "head_hash": w3.eth.get_block("latest")["hash"],
        "code": w3.eth.get_code(token.address),
        "token_balance": token.functions.balanceOf(holder).call(),
        "ether_balance": w3.eth.get_balance(Web3.to_checksum_address(payee)),
        "logs": [
            (log["blockNumber"], log["logIndex"], log["address"], log["topics"], log["data"], log["transactionHash"])
            for log in logs
        ],
        "receipts": [
            (r["transactionHash"], r["blockNumber"], r["status"], r["effectiveGasPrice"])
            for r in (w3.eth.get_transaction_receipt(log["transactionHash"]) for log in logs)
        ],
    }


def send(w3: Web3, key: LocalAccount, tx: Mapping[str, Any]) -> TxReceipt:
    """Sign a complete `tx` (but its nonce) with `key`, send it and wait for its receipt."""
    signed = key.sign_transaction({**tx, "nonce": w3.eth.get_transaction_count(key.address)})
    return w3.eth.wait_for_transaction_receipt(w3.eth.send_raw_transaction(signed.raw_transaction), timeout=10)


def test_chain_state_survives_stop_and_start(tmp_path: Path) -> None:
    wallet, payee, funder = Account.create(), Account.create(), embedded_account(9)
    artifact = load_artifact("TestStablecoin")
    service = anvil(tmp_path, free_port())
    by_wallet: TxParams = {"from": wallet.address, **ZERO_FEES}
    with Stack([service]):
        w3 = Web3(Web3.HTTPProvider(service.url))
        factory = w3.eth.contract(abi=artifact["abi"], bytecode=artifact["bytecode"])
        deployed = send(w3, wallet, factory.constructor(wallet.address).build_transaction(by_wallet))
        token = w3.eth.contract(address=deployed["contractAddress"], abi=artifact["abi"])
        send(w3, wallet, token.functions.mint(wallet.address, 7).build_transaction(by_wallet))
        send(w3, funder, {"to": payee.address, "value": 10**18, "gas": 21_000, "chainId": CHAIN_ID, **ZERO_FEES})
        before = _chain_snapshot(w3, token.address, wallet.address, payee.address)
    assert before["block_number"] == 3
    assert before["token_balance"] == 7
    assert before["ether_balance"] == 10**18
    assert len(before["logs"]) == 2  # OwnershipTransferred at deployment, Transfer from the mint

    with Stack([service]):  # same port: it is free again right after a clean stop
        w3 = Web3(Web3.HTTPProvider(service.url))
        after = _chain_snapshot(w3, token.address, wallet.address, payee.address)
        assert after == before
        # The chain goes on from where it stopped, and its logs keep accumulating.
        send(w3, wallet, token.functions.mint(wallet.address, 1).build_transaction(by_wallet))
        assert w3.eth.block_number == 4
        assert len(w3.eth.get_logs({"fromBlock": 0, "toBlock": "latest"})) == 3


def test_port_in_use_names_the_port_and_the_setting(tmp_path: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        with pytest.raises(PortInUse) as caught:
            Stack([anvil(tmp_path, port)]).start()
    assert str(caught.value) == f"port {port} on 127.0.0.1 is already in use, so Anvil cannot listen there"
    assert caught.value.hint == (
        f"set SLUICE_CHAIN_PORT to a free port, or stop whatever listens on {port} "
        "(or set RPC_URL to use a running endpoint)"
    )


def test_sockets_move_to_tmp_when_the_state_dir_is_too_long() -> None:
    short = StatePaths(Path("/srv/sluice"))
    assert short.run_dir == Path("/srv/sluice/run")
    long = StatePaths(Path("/srv/" + "deep/" * 25 + "sluice"))
    assert long.run_dir.parent == Path("/tmp")
    assert long.run_dir.name.startswith(f"sluice-{os.getuid()}-")
    assert len(str(long.postgres_socket_dir / ".s.PGSQL.5432")) <= 107
    assert long.run_dir == StatePaths(Path("/srv/" + "deep/" * 25 + "sluice")).run_dir  # stable across processes


# --------------------------------------------------------------------------- PostgreSQL


def test_postgres_starts_keeps_data_and_stops(tmp_path: Path) -> None:
    paths = StatePaths(tmp_path)
    # What an initdb interrupted by Ctrl-C leaves behind: it must not pass for a cluster.
    (paths.postgres_dir / "data.initdb").mkdir(parents=True)
    (paths.postgres_dir / "data.initdb" / "PG_VERSION").write_text("16\n")
    service = postgres_service(paths)
    assert service.url is not None
    with Stack([service]), psycopg.connect(service.url, autocommit=True) as conn:
        assert conn.execute("SHOW server_version_num").fetchone()[0].startswith("16")  # type: ignore[index]
        assert conn.execute("SHOW listen_addresses").fetchone() == ("",)
        conn.execute("CREATE TABLE kept (n int)")
        conn.execute("INSERT INTO kept VALUES (42)")
    assert not database_answers(service.url)
    with Stack([service]), psycopg.connect(service.url) as conn:
        assert conn.execute("SELECT n FROM kept").fetchall() == [(42,)]


@pytest.fixture
def empty_database(postgres_url: str) -> Iterator[str]:
    """URL of a new, empty database on the session's server, dropped afterwards."""
    name = f"migrate_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(postgres_url, autocommit=True) as admin:
        admin.execute(f"CREATE DATABASE {name}")
    yield urlsplit(postgres_url)._replace(path=f"/{name}").geturl()
    with psycopg.connect(postgres_url, autocommit=True) as admin:
        admin.execute(f"DROP DATABASE {name} WITH (FORCE)")


def test_migrations_apply_once(empty_database: str) -> None:
    every = sorted(p.name.removesuffix(".sql") for p in MIGRATIONS_DIR.glob("*.sql") if ".rollback." not in p.name)
    assert every[0] == "0001_base"
    assert migrate(empty_database) == every
    assert migrate(empty_database) == []
    assert applied_migrations(empty_database) == every
    with psycopg.connect(empty_database) as conn:
        columns = conn.execute(
            "SELECT column_name, data_type, is_nullable FROM information_schema.columns "
            "WHERE table_name = 'deployments' ORDER BY ordinal_position"
        ).fetchall()
        assert columns == [
            ("chain_id", "bigint", "NO"),
            ("record", "jsonb", "NO"),
            ("created_at", "timestamp with time zone", "NO"),
        ]
        conn.execute("INSERT INTO deployments (chain_id, record) VALUES (31337, '{\"deploy_block\": 1}')")
        assert conn.execute("SELECT record, created_at IS NOT NULL FROM deployments").fetchall() == [
            ({"deploy_block": 1}, True)
        ]

# reserve_hold's 25-argument form (0011): the hold records the node its job goes to and the ticket's bounds.
HOLD_25 = ("SELECT reserve_hold(%s, %s, 1::numeric, 4102444800, %s, %s, 7::numeric, 'm', 300, 330, 9::numeric,"
           " %s, %s, %s, 100::numeric, 0::numeric, NULL, true, false, 3600, 40, 60, %s, 16, 120)")
HOLD_22 = ("SELECT reserve_hold(%s, %s, 2::numeric, 4102444800, %s, %s, 7::numeric, 'm', 300, 330, 9::numeric,"
           " %s, %s, %s, 100::numeric, 0::numeric, NULL, true, false, 3600, 40, 60)")


def test_hold_dispatch_migration_binds_the_hold_and_rolls_back(empty_database: str) -> None:
    from yoyo import get_backend, read_migrations

    from ledger.db import yoyo_url

    payer, node = b"\x01" * 20, b"\x0a" * 20
    bound, unbound = b"\x11" * 32, b"\x22" * 32
    migrate(empty_database)
    with psycopg.connect(empty_database, autocommit=True) as conn:
        assert conn.execute(HOLD_25, (bound, payer, payer, payer, b"\x00" * 32, b"\x00" * 65, b"\x00" * 32,
                                      node)).fetchone() == ("ok",)
        assert conn.execute(HOLD_22, (unbound, payer, payer, payer, b"\x00" * 32, b"\x00" * 65,
                                      b"\x00" * 32)).fetchone() == ("ok",)
        assert conn.execute("SELECT job_id, amount, node, max_tokens, prompt_bound FROM holds ORDER BY job_id"
                            ).fetchall() == [(bound, 7, node, 16, 120), (unbound, 7, None, None, None)]
    backend = get_backend(yoyo_url(empty_database))
    try:
        migrations = read_migrations(str(MIGRATIONS_DIR))
        with backend.lock():
            backend.rollback_migrations(backend.to_rollback(migrations.filter(
                lambda m: m.id in ("0011_hold_dispatch", "0012_settlement_bound_index"))))
    finally:
        backend.connection.close()
    with psycopg.connect(empty_database, autocommit=True) as conn:
        assert conn.execute("SELECT pronargs, l.lanname FROM pg_proc p JOIN pg_language l ON l.oid = p.prolang"
                            " WHERE proname = 'reserve_hold'").fetchall() == [(22, "plpgsql")]
        again = b"\x33" * 32
        assert conn.execute(HOLD_22.replace("2::numeric", "3::numeric", 1),
                            (again, payer, payer, payer, b"\x00" * 32, b"\x00" * 65, b"\x00" * 32)
                            ).fetchone() == ("ok",)
    assert migrate(empty_database) == ["0011_hold_dispatch", "0012_settlement_bound_index"]


def test_the_settlement_bound_check_reads_one_index_entry_whatever_the_backlog(empty_database: str) -> None:
    """reserve_hold's Invariant 7 check (0012) costs the same with 20,000 unsettled records as with none: it
    reads the oldest one from usage_records_unsettled. 0011's EXISTS, once the table is analyzed, scanned them
    all on every call (what a call's hold cost then grew with)."""
    payer, node = b"\x01" * 20, b"\x0a" * 20
    migrate(empty_database)
    with psycopg.connect(empty_database, autocommit=True) as conn:
        conn.execute("INSERT INTO usage_records (job_id, payer, spender, model, prompt_tokens, completion_tokens,"
                     " cost, max_cost, node, body_hash, nonce, deadline, request_signature, request_digest,"
                     " receipt_signature, started_at) SELECT sha256(int4send(g)), %s, %s, 'm', 1, 1, 1, 1, %s,"
                     " '\\x00', g, 4102444800, '\\x00', '\\x00', '\\x00', now()"
                     " FROM generate_series(1, 20000) g", (payer, payer, node))
        conn.execute("ANALYZE usage_records")
        with conn.transaction():
            for i in range(8):  # past plpgsql's five custom plans: the generic plan is the one that stays
                statement = HOLD_25.replace("1::numeric", f"{100 + i}::numeric", 1)
                assert conn.execute(statement, (bytes([i]) * 32, payer, payer, payer, b"\x00" * 32, b"\x00" * 65,
                                                b"\x00" * 32, node)).fetchone() == ("ok",)
            read = conn.execute("SELECT pg_stat_get_xact_tuples_returned('usage_records'::regclass)"
                                " + pg_stat_get_xact_tuples_fetched('usage_records'::regclass)").fetchone()
        assert read == (0,), "the check read usage records"
        # And it still refuses once the oldest unsettled record is past the bound (3600 s here).
        conn.execute("UPDATE usage_records SET finished_at = now() - interval '2 hours'"
                     " WHERE job_id = sha256(int4send(1))")
        statement = HOLD_25.replace("1::numeric", "200::numeric", 1)
        assert conn.execute(statement, (b"\xee" * 32, payer, payer, payer, b"\x00" * 32, b"\x00" * 65,
                                        b"\x00" * 32, node)).fetchone() == ("settlement_overdue",)


# --------------------------------------------------------------------------- Redis


def test_redis_carries_celery_messages_across_a_restart(tmp_path: Path) -> None:
    service = redis_service(StatePaths(tmp_path))
    assert service.url is not None
    assert service.url == f"redis+socket://{tmp_path}/run/redis.sock"
    with Stack([service]):
        assert redis.Redis.from_url(redis_client_url(service.url)).ping() is True
        with Connection(service.url) as conn:  # type: ignore[no-untyped-call]
            queue = conn.SimpleQueue("sluice-test")
            queue.put({"job": 1})
            queue.close()
    assert not service.healthy()
    with Stack([service]), Connection(service.url) as conn:  # type: ignore[no-untyped-call]
        queue = conn.SimpleQueue("sluice-test")
        message = queue.get(timeout=5)
        assert message.payload == {"job": 1}
        message.ack()
        queue.close()


def test_free_ports_are_picked_below_the_kernels_ephemeral_range() -> None:
    """An outgoing connection can take a port the kernel chose before the server binds it; these it never hands out."""
    from ledger.stack.probes import _ephemeral_floor, free_port_run

    floor = _ephemeral_floor()
    ports = [free_port() for _ in range(20)]
    assert all(10_000 <= port < floor for port in ports)
    base = free_port_run(4)
    assert base >= 10_000 and base + 3 < floor
    for port in range(base, base + 4):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as server:
            server.bind(("127.0.0.1", port))
