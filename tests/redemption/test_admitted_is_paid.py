"""Invariant 7, adversarially, end to end: a payer who withdraws, cuts a budget or tops up and leaves right
after admission still pays every admitted call in full.

Real chain, PostgreSQL, service, simulated nodes, Redis and a settlement worker with its beat. Each test
ends with the cost the service served (its metered usage, which is what the clients were told) equal to
the cost burned on chain (the `Redeemed` events), exactly, and no `Shortfall`. Time on chain moves with
Anvil's evm_increaseTime.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import orjson
import pytest
from eth_account import Account
from eth_account.signers.local import LocalAccount

from ledger.domain import Tier
from ledger.polling import poll_until
from ledger.units import ONE_TOKEN
from redemption.sdk import SluiceAuth
from tests.support import escrow
from tests.support.stack import SMALL_MODEL, Deployed, deployment

CHAT = "/v1/chat/completions"
# Bursts of 90 streams and 300 calls queue on two simulated nodes of a loaded machine: wait for a first byte,
# and for a node's heartbeat, as long as it takes, so no call is refused for capacity.
BURST_ENV = {"SLUICE_NODE_TIMEOUT_SECONDS": "60", "SLUICE_NODE_STALE_SECONDS": "60"}
# No keep-alive: a burst would otherwise reuse connections the server is closing as idle (httpx.ReadError).
FRESH_CONNECTIONS = httpx.Limits(max_connections=100, max_keepalive_connections=0)


@pytest.fixture(scope="module")
def settled(postgres_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployed]:
    env = BURST_ENV
    with deployment(postgres_url, tmp_path_factory.mktemp("paid"), settlement=True, service_env=env) as d:
        yield d


def raw(address: str) -> bytes:
    return bytes.fromhex(address[2:])


def body(content: str, max_tokens: int, *, stream: bool) -> bytes:
    fields: dict[str, Any] = {"model": SMALL_MODEL, "messages": [{"role": "user", "content": content}],
                              "max_tokens": max_tokens, "ignore_eos": True}
    if stream:
        fields |= {"stream": True, "stream_options": {"include_usage": True}}
    return json.dumps(fields).encode()


def served(d: Deployed, payer: str) -> int:
    """The cost the service metered (and told the clients) for `payer`'s calls."""
    return int(d.sql("SELECT coalesce(sum(cost), 0) FROM usage_records WHERE payer = %s", raw(payer))[0][0])


def burned(d: Deployed, payer: str) -> tuple[int, int]:
    """(sum of Redeemed, number of Shortfall) for `payer` on chain, from the deployment on."""
    events = d.ledger.settlement.events
    span = {"from_block": d.deployment.deploy_block, "to_block": d.ledger.w3.eth.block_number}
    redeemed = sum(int(e["args"]["amount"]) for e in events.Redeemed().get_logs(**span)
                   if e["args"]["payer"] == payer)
    shortfalls = sum(1 for e in events.Shortfall().get_logs(**span) if e["args"]["payer"] == payer)
    return redeemed, shortfalls


def wait_settled(d: Deployed, payer: str, timeout: float = 120, *, calls: int = 1) -> None:
    """Until at least `calls` calls of `payer` are metered, none is held, and all of them are burned."""
    poll_until(lambda: d.sql("SELECT count(*) FROM usage_records WHERE payer = %s", raw(payer))[0][0] >= calls
               and d.sql("SELECT count(*) FROM usage_records WHERE payer = %s"
                             " AND status NOT IN ('settled', 'released')", raw(payer))[0][0] == 0
               and d.sql("SELECT count(*) FROM holds WHERE payer = %s", raw(payer))[0][0] == 0,
               timeout, "every call of the payer settled on chain")


async def stream_call(client: httpx.AsyncClient, payload: bytes, admitted: asyncio.Queue[int]) -> tuple[int, int]:
    """One streamed call: (HTTP status, cost its final usage chunk reports; 0 when refused)."""
    async with client.stream("POST", CHAT, content=payload, headers={"content-type": "application/json"}) as r:
        if r.status_code != 200:
            await r.aread()
            await admitted.put(r.status_code)
            return r.status_code, 0
        await admitted.put(r.status_code)
        cost = 0
        async for line in r.aiter_lines():
            if line.startswith("data: {"):
                chunk = orjson.loads(line[6:])
                if "sluice" in chunk:
                    cost = int(chunk["sluice"]["cost"])
        return 200, cost


def admissions(d: Deployed, payer: str) -> int:
    """Calls of `payer` admitted so far: open holds plus metered usage."""
    return int(d.sql("SELECT (SELECT count(*) FROM holds WHERE payer = %s)"
                     " + (SELECT count(*) FROM usage_records WHERE payer = %s)", raw(payer), raw(payer))[0][0])


def post(d: Deployed, key: LocalAccount, payer: str, payload: bytes, api: str | None = None) -> httpx.Response:
    return httpx.post((api or d.api) + CHAT, content=payload, auth=SluiceAuth(key, payer=payer, max_cost=ONE_TOKEN),
                      headers={"content-type": "application/json"}, timeout=60)


def report(name: str, served_cost: int, burned_cost: int, shortfalls: int) -> None:
    print(f"\n[admitted-is-paid] {name}: served {served_cost} base units, burned {burned_cost}, "
          f"shortfalls {shortfalls}")


def test_withdrawing_everything_right_after_admitting_90_streams_still_pays_them(settled: Deployed) -> None:
    d = settled
    payer = d.fund(0)
    escrow.deposit(d.ledger, d.operator, payer, 4 * ONE_TOKEN)  # covers the 90 holds (~0.03 tokens each)
    d.ledger.mint(d.operator, payer.address, ONE_TOKEN // 2)  # a wallet balance to drain too
    developers = [d.developer(payer, 2 * ONE_TOKEN) for _ in range(3)]
    sink = Account.create()
    d.ledger.set_allowlisted(d.operator, sink.address, True)
    d.wait_mirrored()
    requested: list[int] = []

    async def run() -> list[tuple[int, int]]:
        admitted: asyncio.Queue[int] = asyncio.Queue()
        clients = [httpx.AsyncClient(base_url=d.api, auth=SluiceAuth(dev, payer=payer.address, max_cost=ONE_TOKEN),
                                     timeout=300, limits=FRESH_CONNECTIONS) for dev in developers]
        try:
            calls = [asyncio.create_task(stream_call(clients[i % 3], body(f"report {i}", 400, stream=True),
                                                     admitted)) for i in range(90)]
            # Right after the 90th hold is taken (before most streams have their first token), take
            # everything away, escrow and wallet.
            deadline = asyncio.get_running_loop().time() + 300  # a machine shared with other suites is slow
            while (seen := await asyncio.to_thread(admissions, d, payer.address)) < 90:
                if asyncio.get_running_loop().time() > deadline:
                    codes = [admitted.get_nowait() for _ in range(admitted.qsize())]
                    raise AssertionError(f"only {seen} of 90 calls admitted; statuses {codes}")
                await asyncio.sleep(0.005)
            left = await asyncio.to_thread(escrow.request_everything, d.ledger, payer)
            requested.extend((left, 4 * ONE_TOKEN - left))
            await asyncio.to_thread(d.ledger.transfer, payer, sink.address, ONE_TOKEN // 2)
            return await asyncio.gather(*calls)
        finally:
            for client in clients:
                await client.aclose()

    results = asyncio.run(run())

    assert [status for status, _ in results] == [200] * 90
    d.wait_mirrored()
    refused = post(d, developers[0], payer.address, body("one more", 1, stream=False))
    assert refused.status_code == 402 and refused.json()["error"]["code"] == "insufficient_escrow"
    with pytest.raises(Exception, match=r"WithdrawalLocked"):
        escrow.withdraw(d.ledger, payer)
    wait_settled(d, payer.address)
    served_cost = served(d, payer.address)
    burned_cost, shortfalls = burned(d, payer.address)
    report(f"withdrawal of everything ({requested[0]} in escrow, {requested[1]} of it burned before the request) "
           "right after 90 streams were admitted", served_cost, burned_cost, shortfalls)
    assert served_cost == sum(cost for _, cost in results) > 0
    assert burned_cost == served_cost and shortfalls == 0
    assert escrow.escrow_of(d.ledger, payer.address) == 4 * ONE_TOKEN - served_cost
    assert escrow.pending_withdrawal_of(d.ledger, payer.address)[0] == 4 * ONE_TOKEN - served_cost
    assert d.ledger.balance_of(payer.address) == 0


def test_cutting_a_budget_to_zero_mid_stream_still_pays_the_streams(settled: Deployed) -> None:
    d = settled
    payer = d.fund(5)
    developer = d.developer(payer, ONE_TOKEN // 2)
    d.wait_mirrored()

    async def run() -> list[tuple[int, int]]:
        admitted: asyncio.Queue[int] = asyncio.Queue()
        async with httpx.AsyncClient(base_url=d.api, auth=SluiceAuth(developer, payer=payer.address,
                                                                     max_cost=ONE_TOKEN), timeout=120) as client:
            calls = [asyncio.create_task(stream_call(client, body(f"cut {i}", 300, stream=True), admitted))
                     for i in range(20)]
            assert [await admitted.get() for _ in calls] == [200] * 20
            await asyncio.to_thread(escrow.set_budget, d.ledger, payer, developer.address, 0)
            return await asyncio.gather(*calls)

    results = asyncio.run(run())

    assert [status for status, _ in results] == [200] * 20
    d.wait_mirrored()
    refused = post(d, developer, payer.address, body("after the cut", 1, stream=False))
    assert refused.status_code == 403 and refused.json()["error"]["code"] == "no_budget"
    wait_settled(d, payer.address)
    served_cost = served(d, payer.address)
    burned_cost, shortfalls = burned(d, payer.address)
    report("budget cut to zero mid-stream (20 streams)", served_cost, burned_cost, shortfalls)
    assert served_cost == sum(cost for _, cost in results) > 0
    assert burned_cost == served_cost and shortfalls == 0
    remaining, scheduled, effective_at = escrow.budget_of(d.ledger, payer.address, developer.address)
    assert (remaining, scheduled) == (ONE_TOKEN // 2 - served_cost, 0) and effective_at > 0


def test_top_up_calls_then_withdrawal_after_the_unlock_period_leaves_nothing_unpaid(settled: Deployed) -> None:
    d = settled
    payer = d.fund(0)
    escrow.deposit(d.ledger, d.operator, payer, ONE_TOKEN // 10)
    d.wait_mirrored()
    first = [post(d, payer, payer.address, body(f"before {i}", 16, stream=False)) for i in range(5)]
    escrow.deposit(d.ledger, d.operator, payer, ONE_TOKEN // 10)  # the top-up
    d.wait_mirrored()
    second = [post(d, payer, payer.address, body(f"after {i}", 16, stream=False)) for i in range(5)]
    assert [r.status_code for r in first + second] == [200] * 10
    charged = sum(int(r.headers["Sluice-Cost"]) for r in first + second)
    total = 2 * (ONE_TOKEN // 10)
    escrow.request_everything(d.ledger, payer)  # right after the calls
    wait_settled(d, payer.address)  # well inside the unlock period, as the window guarantees
    escrow.advance_time(d.ledger, d.ledger.unlock_period() + 1)

    escrow.withdraw(d.ledger, payer)

    served_cost = served(d, payer.address)
    burned_cost, shortfalls = burned(d, payer.address)
    report("top-up, 10 calls, withdrawal after the unlock period", served_cost, burned_cost, shortfalls)
    assert served_cost == charged > 0
    assert burned_cost == served_cost and shortfalls == 0
    assert d.ledger.balance_of(payer.address) == total - served_cost
    assert escrow.escrow_of(d.ledger, payer.address) == 0


def test_race_300_calls_from_6_keys_on_2_replicas_admit_exactly_what_funds_cover(settled: Deployed) -> None:
    """Escrow for 120 calls, five developer budgets of 30 calls each plus the payer's own key, 50 calls per key
    spread over two service replicas: exactly 120 admitted, no key over its budget, and the chain agrees."""
    d = settled
    input_rate, output_rate = d.ledger.rate(SMALL_MODEL).input_rate, d.ledger.rate(SMALL_MODEL).output_rate
    # A zero input rate makes every call cost exactly its hold (4 completion tokens), so the count of calls
    # admitted cannot depend on which ones finish first.
    d.ledger.set_rate(d.operator, SMALL_MODEL, 0, output_rate, Tier.EDGE)
    replica = d.add_replica(**BURST_ENV)
    try:
        cost = -(-4 * output_rate // 10**6)
        payer = d.fund(0)
        escrow.deposit(d.ledger, d.operator, payer, 120 * cost)
        developers = [d.developer(payer, 30 * cost) for _ in range(5)]
        keys = [payer, *developers]
        d.wait_mirrored()
        d.wait_rates(SMALL_MODEL, "0")
        poll_until(lambda: any(c["id"] == SMALL_MODEL and c["sluice"]["input_rate"] == "0"
                               for c in httpx.get(replica + "/v1/models").json()["data"]), 20, "the replica's rates")
        payload = body("race", 4, stream=False)

        async def one(client: httpx.AsyncClient) -> tuple[int, str | None]:
            r = await client.post(CHAT, content=payload, headers={"content-type": "application/json"})
            return r.status_code, (r.json()["error"]["code"] if r.status_code != 200 else None)

        async def run() -> list[list[tuple[int, str | None]]]:
            clients = [httpx.AsyncClient(base_url=api, auth=SluiceAuth(key, payer=payer.address, max_cost=cost),
                                         timeout=300, limits=FRESH_CONNECTIONS)
                       for key in keys for api in (d.api, replica)]
            try:
                per_key = [asyncio.gather(*(one(clients[2 * k + i % 2]) for i in range(50)))
                           for k in range(len(keys))]
                return list(await asyncio.gather(*per_key))
            finally:
                for client in clients:
                    await client.aclose()

        results = asyncio.run(run())
    finally:
        d.ledger.set_rate(d.operator, SMALL_MODEL, input_rate, output_rate, Tier.EDGE)
    admitted = [sum(1 for r in key if r == (200, None)) for key in results]
    refusals = {r for key in results for r in key if r[0] != 200}
    assert sum(admitted) == 120
    assert all(n <= 30 for n in admitted[1:])
    assert refusals <= {(402, "insufficient_escrow"), (402, "insufficient_budget")}
    wait_settled(d, payer.address)
    served_cost = served(d, payer.address)
    burned_cost, shortfalls = burned(d, payer.address)
    report(f"race, 300 calls, 6 keys, 2 replicas (admitted per key {admitted})", served_cost, burned_cost,
           shortfalls)
    assert served_cost == burned_cost == 120 * cost and shortfalls == 0
    assert escrow.escrow_of(d.ledger, payer.address) == 0
    for developer, n in zip(developers, admitted[1:], strict=True):
        assert escrow.budget_of(d.ledger, payer.address, developer.address)[0] == (30 - n) * cost
    d.wait_rates(SMALL_MODEL, str(input_rate))


@pytest.fixture(scope="module")
def short_holds(postgres_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployed]:
    env = {**BURST_ENV, "SLUICE_HOLD_LIFETIME_SECONDS": "5"}
    with deployment(postgres_url, tmp_path_factory.mktemp("short"), settlement=True, service_env=env) as d:
        yield d


def test_a_stream_that_outlives_the_hold_lifetime_is_cut_and_charged_for_what_it_generated(
        short_holds: Deployed) -> None:
    d = short_holds
    payer = d.fund(5)
    d.wait_mirrored()
    auth = SluiceAuth(payer, max_cost=ONE_TOKEN)
    events: list[dict[str, Any]] = []
    with httpx.stream("POST", d.api + CHAT, content=body("a very long story", 4000, stream=True), auth=auth,
                      headers={"content-type": "application/json"}, timeout=60) as r:
        assert r.status_code == 200
        for line in r.iter_lines():
            if line.startswith("data: {"):
                events.append(orjson.loads(line[6:]))
    assert events[-1]["error"]["code"] == "duration_exceeded"
    # Token chunks only: the first chunk carries the assistant role and no token.
    relayed = sum(1 for e in events if e.get("choices") and "role" not in e["choices"][0]["delta"])
    assert 0 < relayed < 4000
    wait_settled(d, payer.address, timeout=90)
    rows = d.sql("SELECT completion_tokens, cost FROM usage_records WHERE payer = %s", raw(payer.address))
    assert len(rows) == 1 and rows[0][0] >= relayed and rows[0][0] < 4000
    served_cost = served(d, payer.address)
    burned_cost, shortfalls = burned(d, payer.address)
    report(f"stream cut at the 5 s hold lifetime ({rows[0][0]} of 4000 tokens)", served_cost, burned_cost,
           shortfalls)
    assert burned_cost == served_cost == int(rows[0][1]) > 0 and shortfalls == 0
    assert d.sql("SELECT count(*) FROM holds") == [(0,)]


@pytest.mark.slow  # waits out the hold's receipt allowance (30 s)
def test_a_whole_answer_that_outlives_the_hold_lifetime_is_cut_and_costs_nothing(short_holds: Deployed) -> None:
    """Not streamed: at the hold lifetime the service closes the node's (pooled) connection and answers 504; the
    node aborts the generation and, having delivered nothing, posts no receipt; the hold is released when its
    receipt allowance is over, and the payer is charged nothing."""
    d = short_holds
    payer = d.fund(5)
    d.wait_mirrored()
    auth = SluiceAuth(payer, max_cost=ONE_TOKEN)
    started = time.monotonic()
    r = httpx.post(d.api + CHAT, content=body("a very long story", 4000, stream=False), auth=auth,
                   headers={"content-type": "application/json"}, timeout=60)
    assert r.status_code == 504 and r.json()["error"]["code"] == "duration_exceeded"
    assert 5 <= time.monotonic() - started < 15  # cut at the lifetime, not at the node timeout (60 s)
    poll_until(lambda: d.sql("SELECT count(*) FROM holds WHERE payer = %s", raw(payer.address)) == [(0,)], 90,
               "the cut call's hold released")
    assert d.sql("SELECT count(*) FROM usage_records WHERE payer = %s", raw(payer.address)) == [(0,)]
    assert d.sql("SELECT reserved FROM reserved_payer WHERE payer = %s", raw(payer.address)) == [(0,)]
