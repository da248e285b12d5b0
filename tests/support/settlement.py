"""A real settlement world for the worker and fault tests: its own Anvil (stoppable, state kept),
its own database and Redis, funded (payer, spender) pairs mirrored by the real chain mirror,
usage metered through `reserve_hold` + `meter_hold` exactly as redemption/store.py calls them,
real `sluice worker` processes, and the final check against the chain.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit
from uuid import uuid4

import psycopg
from eth_account import Account
from eth_account.signers.local import LocalAccount
from eth_utils.crypto import keccak
from web3 import Web3

from ledger.chain.client import Ledger, Rate
from ledger.chain.connection import connect
from ledger.chain.deploy import deploy_all
from ledger.chain.deployment import Deployment, save_deployment
from ledger.config import Settings
from ledger.db import migrate
from ledger.domain import model_id, usage_cost
from ledger.followers.mirror import ChainMirror
from ledger.keys import embedded_account
from ledger.paths import StatePaths
from ledger.protocol.eip712 import Domains, Redemption, UsageReceipt, typed_digest
from ledger.protocol.merkle import receipt_leaf, verify_proof
from ledger.protocol.secp256k1 import sign_digest
from ledger.stack.probes import free_port
from ledger.stack.services import Service, anvil_binary, anvil_service, redis_service
from ledger.stack.supervisor import Stack
from ledger.units import ONE_TOKEN
from tests.support import escrow
from tests.support.polling import wait_until

CHAIN_ID = 31337
MODEL = "meta-llama/Llama-3.1-8B-Instruct"
T = TypeVar("T")
NODE = embedded_account(10)
REPO = Path(__file__).resolve().parents[2]

RESERVE_SQL = (
    "SELECT reserve_hold(%s, %s, %s::numeric, %s, %s, %s, %s::numeric, %s, %s, %s,"
    " %s::numeric, %s, %s, %s, %s::numeric, %s::numeric, %s::numeric, %s, %s, %s, %s, %s)"
)
METER_SQL = "SELECT meter_hold(%s, %s, %s, %s, %s::numeric, %s, %s, %s)"


def raw(address: str) -> bytes:
    return bytes.fromhex(address[2:])


# --------------------------------------------------------------------------- services


class Restartable:
    """One embedded service that a test can stop and start again with the same data (and port)."""

    def __init__(self, service: Service) -> None:
        self.service = service
        self.stack = Stack([service])
        self.stack.start()

    @property
    def url(self) -> str:
        assert self.service.url is not None
        return self.service.url

    def stop(self) -> None:
        self.stack.stop()

    def start(self) -> None:
        self.stack.start()

    def close(self) -> None:
        self.stack.stop()


def start_chain(state_dir: Path) -> Restartable:
    settings = Settings()
    binary = anvil_binary(settings)
    for attempt in range(3):
        try:
            return Restartable(anvil_service(StatePaths(state_dir), port=free_port(), chain_id=CHAIN_ID, binary=binary,
                                             block_time=settings.block_time))
        except Exception:
            if attempt == 2:
                raise
    raise AssertionError("unreachable")


def with_database(url: str, name: str) -> str:
    return urlunsplit(urlsplit(url)._replace(path=f"/{name}"))


def admin_sql(url: str, sql: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(sql.encode())


@contextlib.contextmanager
def database_copy(server_url: str, template: str) -> Iterator[str]:
    """A database of this test's own, copied from a migrated template on the server."""
    name = f"settle_{uuid4().hex[:12]}"
    admin_sql(server_url, f"CREATE DATABASE {name} TEMPLATE {template}")
    try:
        yield with_database(server_url, name)
    finally:
        admin_sql(server_url, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@contextlib.contextmanager
def migrated_template(server_url: str) -> Iterator[str]:
    name = f"settle_template_{uuid4().hex[:10]}"
    admin_sql(server_url, f"CREATE DATABASE {name}")
    try:
        migrate(with_database(server_url, name))
        yield name
    finally:
        admin_sql(server_url, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


# --------------------------------------------------------------------------- workers


class WorkerProcess:
    """A real `sluice worker` (python -m ledger.cli.worker) in its own process group."""

    def __init__(self, env: dict[str, str], log: Path, *args: str) -> None:
        self.log = log
        with log.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "ledger.cli.worker", *args],
                env=env, cwd=REPO, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def wait_ready(self, timeout: float = 30.0) -> WorkerProcess:
        def ready() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(f"worker exited with {self.proc.returncode}:\n{self.tail()}")
            return " ready." in self.log.read_text(errors="replace")

        wait_until(ready, timeout, "worker start-up")
        return self

    def tail(self, lines: int = 60) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])

    def kill9(self) -> None:
        """SIGKILL the whole worker (main process and pool children), as a crash would."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.proc.pid, signal.SIGTERM)  # the main process: warm shutdown of its pool
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.kill9()
        with contextlib.suppress(ProcessLookupError):  # pool children left behind
            os.killpg(self.proc.pid, signal.SIGKILL)


@contextlib.contextmanager
def block_producer(rpc_url: str, every: float = 0.3) -> Iterator[None]:
    """Mine a block every `every` seconds, like a chain with a block time (Anvil otherwise mines only
    on transactions, so confirmations would never come); a chain that is down is skipped."""
    from ledger.stack.probes import rpc_call

    stop = threading.Event()

    def run() -> None:
        while not stop.wait(every):
            with contextlib.suppress(OSError, ValueError):
                rpc_call(rpc_url, "evm_mine", timeout=1.0)

    thread = threading.Thread(target=run, name="block-producer", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(5)


# --------------------------------------------------------------------------- the world


@dataclass
class Pair:
    payer: LocalAccount
    spender: LocalAccount


@dataclass
class Metered:
    job_id: bytes
    payer: str
    spender: str
    cost: int


@dataclass
class World:
    home: Path
    chain: Restartable
    db_url: str
    broker: str
    w3: Web3
    ledger: Ledger
    deployment: Deployment
    domains: Domains
    minted: int = 0
    pairs: list[Pair] = field(default_factory=list)
    metered: list[Metered] = field(default_factory=list)
    workers: list[WorkerProcess] = field(default_factory=list)
    postgres: Restartable | None = None
    _rate: Rate | None = None
    _mirror: ChainMirror | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _conns: threading.local = field(default_factory=threading.local)
    _opened: list[psycopg.Connection[Any]] = field(default_factory=list)

    @property
    def operator(self) -> LocalAccount:
        return embedded_account(0)

    # -- configuration ---------------------------------------------------------------------
    def env(self, **overrides: object) -> dict[str, str]:
        env = dict(os.environ)
        for key in ("SLUICE_RPC_URL", "SLUICE_DATABASE_URL", "SLUICE_BROKER_URL"):
            env.pop(key, None)
        env.update({
            "SLUICE_HOME": str(self.home),
            "RPC_URL": self.chain.url,
            "DATABASE_URL": self.db_url,
            "BROKER_URL": self.broker,
            "SLUICE_BATCH_INTERVAL": "0.5",
            "SLUICE_SETTLER_KEY": "0x" + bytes(embedded_account(1).key).hex(),
            "SLUICE_SETTLEMENT_SWEEP": "2",
            "SLUICE_SETTLEMENT_RETRY_MAX": "1",
            "SLUICE_SETTLEMENT_WAIT": "3",
            "SLUICE_SETTLEMENT_STUCK": "5",
            "SLUICE_WORKER_METRICS_PORT": "0",
            "SLUICE_CONFIRMATIONS": "0",
            "PYTHONUNBUFFERED": "1",
        })
        env.update({f"SLUICE_{k.upper()}": str(v) for k, v in overrides.items()})
        return env

    def start_worker(self, *args: str, name: str = "worker", **overrides: object) -> WorkerProcess:
        worker = WorkerProcess(self.env(**overrides), self.home / f"{name}-{len(self.workers)}.log", *args)
        self.workers.append(worker)
        return worker.wait_ready()

    @contextlib.contextmanager
    def celery(self) -> Iterator[Any]:
        """A Celery client on this world's broker: sends tasks as beat or a redelivering broker would."""
        from ledger.settlement.celery_app import make_app
        from ledger.settlement.settings import SettlementSettings

        app = make_app(SettlementSettings(home=self.home, broker_url=self.broker, database_url=self.db_url))
        try:
            yield app
        finally:
            app.close()

    # -- chain -----------------------------------------------------------------------------
    def rpc(self, method: str, params: list[Any] | None = None) -> Any:
        return self.w3.provider.make_request(method, params or [])  # type: ignore[arg-type]

    def mine(self) -> None:
        with contextlib.suppress(Exception):  # the chain may be down on purpose
            self.rpc("evm_mine")

    def fund_pairs(self, count: int, tokens: int = 1_000, self_paying: int = 0) -> list[Pair]:
        """`count` pairs, each payer with `tokens` in escrow: the first `self_paying` pay for themselves, the
        rest give a separate spender a budget of `tokens`."""
        ledger, operator = self.ledger, self.operator
        made: list[Pair] = []
        for i in range(count):
            payer = Account.create()
            spender = payer if i < self_paying else Account.create()
            ledger.set_allowlisted(operator, payer.address, True)
            escrow.deposit(ledger, operator, payer, tokens * ONE_TOKEN)
            self.minted += tokens * ONE_TOKEN
            if spender is not payer:
                escrow.set_budget(ledger, payer, spender.address, tokens * ONE_TOKEN)
            made.append(Pair(payer, spender))
        self.pairs.extend(made)
        self.sync_mirror()
        return made

    def sync_mirror(self) -> None:
        with self._lock:
            if self._mirror is None:
                self._mirror = ChainMirror(self.w3, self.ledger, self.db_url)
            self._mirror.sync_once()

    # -- metering ----------------------------------------------------------------------------
    def _conn(self) -> psycopg.Connection[Any]:
        conn: psycopg.Connection[Any] | None = getattr(self._conns, "conn", None)
        if conn is None or conn.closed or conn.broken:
            conn = psycopg.connect(self.db_url, autocommit=True)
            self._conns.conn = conn
            with self._lock:
                self._opened.append(conn)
        return conn

    def _call(self, sql: str, params: tuple[Any, ...]) -> Any:
        """One metering statement; a connection the server dropped (a restart) is replaced once."""
        try:
            row = self._conn().execute(sql, params).fetchone()
        except psycopg.OperationalError:
            self._conns.conn = None
            row = self._conn().execute(sql, params).fetchone()
        assert row is not None
        return row[0]

    def hold(self, pair: Pair, max_cost: int) -> tuple[bytes, str]:
        """Take a hold for a signed call from `pair.spender` on `pair.payer`'s tokens; returns (job id, outcome)."""
        body = b'{"model": "%s", "messages": [{"role": "user", "content": "%s"}]}' % (
            MODEL.encode(), secrets.token_hex(8).encode())
        nonce, deadline = secrets.randbits(128), int(time.time()) + 300
        body_hash = keccak(body)
        digest = typed_digest(self.domains.redemption,
                              Redemption(pair.payer.address, body_hash, max_cost, nonce, deadline).struct_hash())
        signature = sign_digest(bytes(pair.spender.key), digest)
        job_id = os.urandom(32)
        outcome = self._call(RESERVE_SQL, (
            job_id, raw(pair.spender.address), nonce, deadline, raw(pair.payer.address), raw(pair.spender.address),
            max_cost, MODEL, 300, 330, max_cost, body_hash, signature, digest, None, None, None, None, None, 3600,
            0, 60,
        ))
        return job_id, str(outcome)

    def meter(self, pair: Pair, prompt_tokens: int | None = None, completion_tokens: int | None = None) -> Metered:
        """One call through the metering path: hold, then meter with the node's signed receipt."""
        prompt = prompt_tokens if prompt_tokens is not None else 50 + secrets.randbelow(200)
        completion = completion_tokens if completion_tokens is not None else 1 + secrets.randbelow(200)
        if self._rate is None:
            self._rate = self.ledger.rate(MODEL)
        rate = self._rate
        max_cost = usage_cost(prompt, 256, rate.input_rate, rate.output_rate)
        job_id, outcome = self.hold(pair, max_cost)
        assert outcome == "ok", f"hold refused: {outcome}"
        cost = usage_cost(prompt, completion, rate.input_rate, rate.output_rate)
        receipt = UsageReceipt(job_id, pair.payer.address, pair.spender.address, model_id(MODEL), prompt, completion,
                               cost, b"\x00" * 32)
        receipt_signature = sign_digest(bytes(NODE.key), typed_digest(self.domains.receipt, receipt.struct_hash()))
        metered = self._call(METER_SQL, (
            job_id, raw(NODE.address), prompt, completion, cost, receipt_signature, datetime.now(UTC), None,
        ))
        assert metered is True
        record = Metered(job_id, pair.payer.address, pair.spender.address, cost)
        with self._lock:
            self.metered.append(record)
        return record

    def meter_many(self, count: int, pairs: list[Pair] | None = None) -> list[Metered]:
        chosen = pairs or self.pairs
        return [self.meter(chosen[i % len(chosen)]) for i in range(count)]

    # -- observing ---------------------------------------------------------------------------
    def query(self, sql: str, *params: Any) -> list[tuple[Any, ...]]:
        with psycopg.connect(self.db_url, autocommit=True) as conn:
            return conn.execute(sql.encode() if not params else sql, params or None).fetchall()

    def scalar(self, sql: str, *params: Any) -> Any:
        return self.query(sql, *params)[0][0]

    def batches(self, status: str | None = None) -> list[bytes]:
        if status is None:
            return [bytes(r[0]) for r in self.query("SELECT batch_id FROM settlement_batches ORDER BY cut_at")]
        return [bytes(r[0]) for r in self.query(
            "SELECT batch_id FROM settlement_batches WHERE status = %s ORDER BY cut_at", status)]

    def unsettled(self) -> int:
        return int(self.scalar("SELECT count(*) FROM usage_records WHERE status NOT IN ('settled', 'released')"))

    def wait_for(self, check: Callable[[], T], timeout: float, what: str,
                 every: Callable[[], object] | None = None) -> T:
        """`wait_until`, printing each worker's log tail and the unconfirmed batches when it times out."""
        try:
            return wait_until(check, timeout, what, every=every)
        except AssertionError:
            for worker in self.workers:
                print(f"--- {worker.log.name}\n{worker.tail()}")
            with contextlib.suppress(Exception):  # the database may be down on purpose
                print(self.query("SELECT encode(batch_id, 'hex'), status, attempts, last_error"
                                 " FROM settlement_batches WHERE status <> 'confirmed'"))
            raise

    def sent_batches(self) -> list[bytes]:
        """Batches whose transaction was sent at least once, whatever became of them since (a batch is
        'submitted' only until its confirmations come, which on a fast chain can be a fraction of a second)."""
        return [bytes(r[0]) for r in self.query(
            "SELECT DISTINCT batch_id FROM settlement_attempts WHERE action IN ('sent', 'replaced')")]

    def wait_all_settled(self, timeout: float = 60.0, every: Callable[[], object] | None = None) -> None:
        def done() -> bool:
            return self.unsettled() == 0 and not self.batches("cut") and not self.batches("submitted") \
                and not self.batches("failed")

        self.wait_for(done, timeout, "settlement of every metered record", every=every)

    # -- the final check -------------------------------------------------------------------
    def assert_settled_exactly_once(self, *, shortfalls_allowed: bool = False) -> None:
        """Against the chain: every metered record is in exactly one settled batch whose on-chain root
        commits to it, and sum(Redeemed) per (payer, spender) equals the metered cost."""
        settlement = self.ledger.settlement
        start = self.deployment.deploy_block
        settled_logs = settlement.events.BatchSettled().get_logs(from_block=start)
        redeemed_logs = settlement.events.Redeemed().get_logs(from_block=start)
        shortfall_logs = settlement.events.Shortfall().get_logs(from_block=start)

        on_chain = [bytes(e["args"]["batchId"]) for e in settled_logs]
        assert len(on_chain) == len(set(on_chain)), "a batch id settled twice"
        rows = self.query("SELECT batch_id, kind, receipts_root, receipt_count, status FROM settlement_batches")
        stored = {bytes(r[0]): r for r in rows}
        assert set(on_chain) == set(stored), "batches on chain and in the database differ"
        for batch_id, (_id, _kind, root, _count, status) in stored.items():
            assert status == "confirmed"
            assert bytes(settlement.functions.receiptsRootOf(batch_id).call()) == bytes(root)
        chain_count = {bytes(e["args"]["batchId"]): int(e["args"]["items"]) for e in settled_logs}
        assert all(chain_count[b] == int(stored[b][3]) for b in stored)

        records = self.query("SELECT job_id, payer, spender, cost, batch_id, status, merkle_proof FROM usage_records")
        metered = {m.job_id: m for m in self.metered}
        assert {bytes(r[0]) for r in records} == set(metered), "usage records and metered calls differ"
        by_batch: dict[bytes, list[bytes]] = defaultdict(list)
        for job, payer, spender, cost, batch_id, status, proof in records:
            assert status in ("settled", "released"), f"record 0x{bytes(job).hex()} is {status}"
            assert batch_id is not None
            leaf = receipt_leaf(bytes(job), "0x" + bytes(payer).hex(), "0x" + bytes(spender).hex(), int(cost))
            root = bytes(stored[bytes(batch_id)][2])
            assert verify_proof(leaf, [bytes(p) for p in proof], root), "a stored proof does not verify"
            by_batch[bytes(batch_id)].append(bytes(job))
        for batch_id, jobs in by_batch.items():
            assert len(jobs) == int(stored[batch_id][3]), "batch membership and receipt count differ"
        # A sample of proofs checked by the contract itself (invariant 6).
        for job, payer, spender, cost, batch_id, _status, proof in records[:3]:
            assert settlement.functions.verifyReceipt(
                bytes(batch_id), bytes(job), Web3.to_checksum_address(bytes(payer)),
                Web3.to_checksum_address(bytes(spender)), int(cost), [bytes(p) for p in proof]).call()

        owed: dict[tuple[str, str], int] = defaultdict(int)
        for m in self.metered:
            owed[(m.payer, m.spender)] += m.cost
        burned: dict[tuple[str, str], int] = defaultdict(int)
        for e in redeemed_logs:
            burned[(e["args"]["payer"], e["args"]["spender"])] += int(e["args"]["amount"])
        if not shortfalls_allowed:
            assert not shortfall_logs, "unexpected Shortfall events"
        outstanding: dict[tuple[str, str], int] = defaultdict(int)
        for payer, spender, amount in self.query(
                "SELECT payer, spender, owed - paid FROM debts WHERE cleared_at IS NULL"):
            key = (Web3.to_checksum_address(bytes(payer)), Web3.to_checksum_address(bytes(spender)))
            outstanding[key] += int(amount)
        for pair in set(owed) | set(burned) | set(outstanding):
            assert burned[pair] + outstanding[pair] == owed[pair], f"{pair}: Redeemed + owed != metered cost"
        total_burned = sum(burned.values())
        assert self.ledger.total_supply() == self.minted - total_burned, "totalSupply != minted - burned"


@contextlib.contextmanager
def settlement_world(tmp: Path, server_url: str | None, template: str | None,
                     own_postgres: bool = False) -> Iterator[World]:
    """Chain, database, broker and a deployment for one test; workers stopped at the end."""
    from ledger.stack.services import postgres_service

    home = tmp / "home"
    home.mkdir()
    chain = start_chain(tmp / "anvil")
    broker = Restartable(redis_service(StatePaths(tmp / "redis")))
    postgres: Restartable | None = None
    world: World | None = None
    try:
        with contextlib.ExitStack() as stack:
            if own_postgres:
                postgres = Restartable(postgres_service(StatePaths(tmp / "pg")))
                migrate(postgres.url)
                db_url = postgres.url
            else:
                assert server_url is not None and template is not None
                db_url = stack.enter_context(database_copy(server_url, template))
            w3 = connect(chain.url)
            settings = Settings(home=home, rpc_url=chain.url)
            deployment = deploy_all(settings, w3, embedded_account(0), embedded_account(1))
            save_deployment(home, deployment)
            ledger = Ledger(w3, deployment, timeout=30)
            world = World(home, chain, db_url, broker.url, w3, ledger, deployment,
                          Domains(CHAIN_ID, deployment.contracts["settlement"]), postgres=postgres)
            try:
                yield world
            finally:
                for worker in world.workers:
                    worker.stop()
                if world._mirror is not None:
                    world._mirror.close()
                for conn in world._opened:
                    conn.close()
    finally:
        broker.close()
        if postgres is not None:
            postgres.close()
        chain.close()
