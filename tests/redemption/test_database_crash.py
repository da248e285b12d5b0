"""PostgreSQL crashes under paid traffic: no node ever runs a job whose hold the crash can lose.

Holds commit asynchronously (`synchronous_commit=off`): a hold's commit can be lost when the database
dies before the WAL holding it is flushed. That is safe only if no job reaches a node before a
synchronous commit has flushed its hold. Here the whole service runs on a PostgreSQL of the test's own,
which is SIGKILLed (postmaster and backends at once) while paid calls from many keys are in flight, and
started again: crash recovery keeps exactly what was flushed. The WAL writer is told to flush lazily
(`wal_writer_delay` 10 s), so an asynchronous commit that nothing flushed is as good as lost.

After recovery, against what the simulated nodes say they ran and what the clients were answered:
every job a node ran has its hold or its usage record; every call answered 200 has its usage record at
the cost it was told; every reservation equals its open holds plus its unmetered usage, exactly; and
what /v1/budget shows available is escrow (or budget) less exactly that. And a call whose hold is not
there when a retry rebinds it to another node is refused, and that node never runs it.

Real chain, PostgreSQL, redemption service, node agents and simulators.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import psycopg
import pytest
from eth_account.signers.local import LocalAccount
from eth_hash.auto import keccak

from ledger.polling import poll_until
from ledger.protocol.eip712 import Domains, Redemption, typed_digest
from ledger.protocol.signed_call import signed_call_headers
from ledger.stack.apps import EMBEDDED_NODES
from ledger.units import ONE_TOKEN
from redemption.calls import job_id_for
from tests.support.services import CrashablePostgres
from tests.support.stack import SMALL_MODEL, Deployed, deployment

# fault test: the database dies under load
pytestmark = pytest.mark.slow

CHAT = "/v1/chat/completions"
CALLERS = 16  # concurrent calls kept in flight
NODE_DELAY = 1.0  # each node holds every call this long first, so calls are at the nodes when the database dies
OUTAGE = 1.0  # seconds the database stays down: the calls the nodes hold finish meanwhile
ANSWERED_BEFORE, ANSWERED_AFTER = 32, 32  # calls answered 200 before the crash, and after recovery
MAX_COST = 10**16
SERVICE_ENV = {"SLUICE_NODE_TIMEOUT_SECONDS": "60", "SLUICE_NODE_STALE_SECONDS": "60"}


def raw(address: str) -> bytes:
    return bytes.fromhex(address[2:])


@dataclass(frozen=True)
class Answer:
    job: bytes
    payer: bytes
    spender: bytes
    status: int | None  # None: the connection failed
    cost: int | None  # Sluice-Cost of a 200
    named: str | None  # Sluice-Job-Id of a 200
    answered_at: float


@pytest.fixture
def crashable(tmp_path: Path) -> Iterator[CrashablePostgres]:
    pg = CrashablePostgres(tmp_path / "pg")
    try:
        with psycopg.connect(pg.url, autocommit=True) as conn:
            # The WAL writer flushes asynchronous commits only every 10 s (the most it allows): a hold whose
            # commit no synchronous commit flushed is lost in the crash, not saved by a timely background flush.
            conn.execute("ALTER SYSTEM SET wal_writer_delay = '10s'")
            conn.execute("ALTER SYSTEM SET wal_writer_flush_after = '64MB'")
            conn.execute("SELECT pg_reload_conf()")
        yield pg
    finally:
        pg.close()


class Traffic:
    """`CALLERS` loops of signed calls spread over the keys, each call's job id and answer kept."""

    def __init__(self, api: str, keys: list[tuple[LocalAccount, LocalAccount]], domains: Domains) -> None:
        self.api = api
        self.keys = keys
        self.domains = domains
        self.answers: list[Answer] = []
        self.stop = threading.Event()

    def answered_ok(self, since: float = 0.0) -> int:
        return sum(1 for a in self.answers if a.status == 200 and a.answered_at >= since)

    async def caller(self, client: httpx.AsyncClient, index: int) -> None:
        payer, spender = self.keys[index % len(self.keys)]
        while not self.stop.is_set():
            body = json.dumps({"model": SMALL_MODEL, "messages": [{"role": "user", "content": f"crash {index}"}],
                               "max_tokens": 4, "ignore_eos": True}).encode()
            nonce, deadline = secrets.randbits(128), int(time.time()) + 240
            headers = signed_call_headers(bytes(spender.key), self.domains.redemption, body, payer=payer.address,
                                          max_cost=MAX_COST, nonce=nonce, deadline=deadline)
            digest = typed_digest(self.domains.redemption,
                                  Redemption(payer.address, keccak(body), MAX_COST, nonce, deadline).struct_hash())
            job = job_id_for(spender.address, digest)
            status: int | None = None
            cost: int | None = None
            named: str | None = None
            try:
                r = await client.post(CHAT, content=body, headers={"content-type": "application/json", **headers})
                status = r.status_code
                if status == 200:
                    cost, named = int(r.headers["Sluice-Cost"]), r.headers["Sluice-Job-Id"]
            except httpx.TransportError:
                pass
            self.answers.append(Answer(job, raw(payer.address), raw(spender.address), status, cost, named,
                                       time.monotonic()))

    async def run(self) -> None:
        limits = httpx.Limits(max_connections=CALLERS, max_keepalive_connections=CALLERS)
        async with httpx.AsyncClient(base_url=self.api, timeout=120, limits=limits) as client:
            await asyncio.gather(*(self.caller(client, i) for i in range(CALLERS)))


def ran_on_nodes(d: Deployed) -> set[bytes]:
    """Job ids the simulated nodes generated for (the agents name the vLLM request by its job id)."""
    jobs = set()
    for node in EMBEDDED_NODES:
        for request_id in httpx.get(d.sim_url(node.name) + "/sim/requests", timeout=10).json()["request_ids"]:
            jobs.add(bytes.fromhex(request_id.removeprefix("chatcmpl-")))
    return jobs


def test_database_killed_under_paid_traffic_loses_no_call_a_node_ran(crashable: CrashablePostgres,
                                                                     tmp_path: Path) -> None:
    with deployment(crashable.url, tmp_path / "home", service_env=SERVICE_ENV) as d:
        payers = [d.fund(100) for _ in range(3)]
        # Per payer: itself, and two developer keys with budgets (reserved_pair counts only these).
        keys = [(p, p) for p in payers] + [(p, d.developer(p, 50 * ONE_TOKEN)) for p in payers for _ in range(2)]
        d.wait_mirrored()
        for node in EMBEDDED_NODES:
            d.set_fault(node.name, mode="delay", delay_seconds=NODE_DELAY)
        traffic = Traffic(d.api, keys, Domains(d.deployment.chain_id, d.deployment.contracts["settlement"]))
        loop = threading.Thread(target=asyncio.run, args=(traffic.run(),), name="traffic")
        loop.start()
        try:
            poll_until(lambda: traffic.answered_ok() >= ANSWERED_BEFORE, 120, "calls answered before the crash")
            # Crash just after a node took a job: its hold committed moments ago, likely after every metering
            # (synchronous) commit, so only the commit that let it be dispatched keeps it.
            taken = len(ran_on_nodes(d))
            poll_until(lambda: len(ran_on_nodes(d)) > taken, 20, "a node taking another job")
            crashable.crash()
            time.sleep(OUTAGE)  # the fault's length, not a wait for work: the database is down this long
            crashable.start()
            recovered = time.monotonic()
            poll_until(lambda: traffic.answered_ok(recovered) >= ANSWERED_AFTER, 120, "calls answered after recovery")
        finally:
            traffic.stop.set()
            loop.join(180)
        assert not loop.is_alive()
        d.clear_faults()
        ran = ran_on_nodes(d)

        with psycopg.connect(d.db_url) as conn, conn.transaction():  # one snapshot for every figure
            conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            holds = {bytes(j): (bytes(p), bytes(s), int(a)) for j, p, s, a in
                     conn.execute("SELECT job_id, payer, spender, amount FROM holds").fetchall()}
            usage = {bytes(j): (bytes(p), bytes(s), int(c), status) for j, p, s, c, status in
                     conn.execute("SELECT job_id, payer, spender, cost, status FROM usage_records").fetchall()}
            reserved_payer = {bytes(p): int(r) for p, r in
                              conn.execute("SELECT payer, reserved FROM reserved_payer").fetchall()}
            reserved_pair = {(bytes(p), bytes(s)): int(r) for p, s, r in
                             conn.execute("SELECT payer, spender, reserved FROM reserved_pair").fetchall()}

        sent = {a.job: a for a in traffic.answers}
        outcomes = Counter(a.status for a in traffic.answers)
        lost = [a for a in traffic.answers if a.status != 200 and a.job not in holds and a.job not in usage]
        print(f"\n[database crash] {len(sent)} calls: answers {dict(outcomes)}; {len(ran)} ran on nodes; after "
              f"recovery {len(holds)} open holds, {len(usage)} usage records; {len(lost)} refused calls left no record")

        # The nodes ran only calls sent here, and every one of them is on record: its hold, or its usage.
        assert ran <= set(sent)
        missing = sorted(job.hex() for job in ran if job not in holds and job not in usage)
        assert not missing, f"{len(missing)} jobs ran on a node with neither a hold nor a usage record: {missing[:5]}"
        # Every call answered 200 is metered at the cost it was told, and it ran on a node.
        for a in traffic.answers:
            if a.status == 200:
                assert a.named == "0x" + a.job.hex()
                assert a.job in usage, f"job 0x{a.job.hex()} answered 200 has no usage record"
                assert usage[a.job][2] == a.cost, f"job 0x{a.job.hex()}: answered cost {a.cost}, metered {usage[a.job]}"
                assert a.job in ran
        assert set(holds) <= set(sent) and set(usage) <= set(sent)
        assert outcomes[200] >= ANSWERED_BEFORE + ANSWERED_AFTER
        assert set(outcomes) <= {200, 503}, "a call the outage stopped is answered 503, not dropped or a 500"
        # Nothing is settled here: each reservation is exactly its open holds plus its metered usage.
        assert all(status == "metered" for *_, status in usage.values())
        by_payer: dict[bytes, int] = defaultdict(int)
        by_pair: dict[tuple[bytes, bytes], int] = defaultdict(int)
        for held_payer, held_spender, amount in holds.values():
            by_payer[held_payer] += amount
            by_pair[(held_payer, held_spender)] += amount
        for used_payer, used_spender, cost, _ in usage.values():
            by_payer[used_payer] += cost
            by_pair[(used_payer, used_spender)] += cost
        for p in payers:
            assert reserved_payer.get(raw(p.address), 0) == by_payer[raw(p.address)], f"payer {p.address}"
        for payer, spender in keys:
            if payer is not spender:
                pair = (raw(payer.address), raw(spender.address))
                assert reserved_pair.get(pair, 0) == by_pair[pair], f"pair {payer.address} {spender.address}"
        assert set(reserved_pair) <= {(raw(p.address), raw(s.address)) for p, s in keys if p is not s}
        # What the service shows available is escrow (or budget) less exactly that.
        for payer, spender in keys:
            shown = d.budget(payer.address, spender.address).json()
            assert int(shown["escrow_available"]) == d.ledger.escrow_of(payer.address) - by_payer[raw(payer.address)]
            if payer is not spender:
                pair = (raw(payer.address), raw(spender.address))
                assert int(shown["budget_available"]) == 50 * ONE_TOKEN - by_pair[pair]


def test_a_retry_whose_hold_is_gone_never_reaches_the_next_node(postgres_url: str, tmp_path: Path) -> None:
    """The first node fails, so the call is rebound to the next one (`bind_dispatch`); a trigger makes every
    rebinding find no hold, as when the hold is gone: 503, and the next node never gets the job."""
    with deployment(postgres_url, tmp_path / "home") as d:
        payer = d.fund(10)
        d.wait_mirrored()
        domains = Domains(d.deployment.chain_id, d.deployment.contracts["settlement"])
        body = json.dumps({"model": SMALL_MODEL, "messages": [{"role": "user", "content": "lost"}],
                           "max_tokens": 4}).encode()

        def call() -> httpx.Response:
            headers = signed_call_headers(bytes(payer.key), domains.redemption, body, payer=payer.address,
                                          max_cost=MAX_COST, nonce=secrets.randbits(128),
                                          deadline=int(time.time()) + 120)
            return httpx.post(d.api + CHAT, content=body, headers={"content-type": "application/json", **headers},
                              timeout=30)

        def taken(node: str) -> set[bytes]:
            ids = httpx.get(d.sim_url(node) + "/sim/requests", timeout=10).json()["request_ids"]
            return {bytes.fromhex(i.removeprefix("chatcmpl-")) for i in ids}

        with psycopg.connect(d.db_url, autocommit=True) as conn:
            conn.execute("CREATE FUNCTION no_hold_to_rebind() RETURNS trigger LANGUAGE plpgsql AS $$"
                         " BEGIN IF NEW.node IS DISTINCT FROM OLD.node THEN RETURN NULL; END IF; RETURN NEW; END $$")
            conn.execute("CREATE TRIGGER no_hold_to_rebind BEFORE UPDATE ON holds FOR EACH ROW"
                         " EXECUTE FUNCTION no_hold_to_rebind()")
            for node in EMBEDDED_NODES:
                d.set_fault(node.name, mode="error", status=500)
            before = {node.name: taken(node.name) for node in EMBEDDED_NODES}
            refused = call()
            assert refused.status_code == 503, refused.text
            assert refused.json()["error"]["code"] == "database_unavailable"
            assert "nothing was charged" in refused.json()["error"]["message"]
            new = {node.name: taken(node.name) - before[node.name] for node in EMBEDDED_NODES}
            assert sorted(len(jobs) for jobs in new.values()) == [0, 1], new  # the first node only
            assert d.sql("SELECT count(*) FROM usage_records") == [(0,)]
            conn.execute("DROP TRIGGER no_hold_to_rebind ON holds")
        d.clear_faults()
        served = call()
        assert served.status_code == 200, served.text
