"""The service scaled out: three service processes on one PostgreSQL and one chain admit exactly what
one payer's escrow and its developers' budgets cover, follow the chain with one follower among them,
and replace that follower when it is killed.

Real chain, PostgreSQL, three service processes and the simulated nodes.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from collections import Counter
from collections.abc import Iterator

import httpx
import pytest

from ledger.domain import Tier
from ledger.polling import poll_until
from ledger.units import ONE_TOKEN
from redemption.sdk import SluiceAuth
from tests.support import escrow
from tests.support.stack import SMALL_MODEL, Deployed, deployment

CHAT = "/v1/chat/completions"
# 120 calls at once queue on two simulated nodes of a loaded machine: no call is refused for capacity.
BURST_ENV = {"SLUICE_NODE_TIMEOUT_SECONDS": "60", "SLUICE_NODE_STALE_SECONDS": "60"}
FRESH_CONNECTIONS = httpx.Limits(max_connections=100, max_keepalive_connections=0)


@pytest.fixture(scope="module")
def three(postgres_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Deployed, list[str]]]:
    with deployment(postgres_url, tmp_path_factory.mktemp("scale"), service_env=BURST_ENV) as d:
        apis = [d.api, d.add_replica(**BURST_ENV), d.add_replica(**BURST_ENV)]
        yield d, apis


def health(api: str) -> dict[str, object]:
    answer: dict[str, object] = httpx.get(api + "/health", timeout=5).json()
    return answer


def alive(apis: list[str]) -> list[str]:
    up = []
    for api in apis:
        try:
            httpx.get(api + "/health", timeout=5)
        except httpx.ConnectError:
            continue
        up.append(api)
    return up


def raw(address: str) -> bytes:
    return bytes.fromhex(address[2:])


def test_three_processes_share_one_follower(three: tuple[Deployed, list[str]]) -> None:
    _d, apis = three
    poll_until(lambda: sum(bool(health(api)["chain_follower"]) for api in apis) == 1, 20, "one follower")
    seen = [health(api) for api in apis]
    assert len({h["pid"] for h in seen}) == 3
    follower = next(h["pid"] for h in seen if h["chain_follower"])
    poll_until(lambda: all(health(api)["chain_follower_pid"] == follower for api in apis), 10,
               "every process naming the follower")
    assert all(h["mirror_lag_blocks"] == 0 for h in (health(api) for api in apis))


def test_120_calls_on_3_processes_admit_exactly_what_escrow_and_budgets_cover(
    three: tuple[Deployed, list[str]],
) -> None:
    """Escrow for 24 calls; developer A's budget covers 15, B's 15 (together more than the escrow): 60 calls
    each, at once, spread over the three processes: exactly 24 admitted, neither key over its 15."""
    d, apis = three
    rate = d.ledger.rate(SMALL_MODEL)
    # A zero input rate makes every call cost exactly its hold (4 completion tokens), whichever finish first.
    d.ledger.set_rate(d.operator, SMALL_MODEL, 0, rate.output_rate, Tier.EDGE)
    try:
        cost = -(-4 * rate.output_rate // 10**6)
        payer = d.fund(0)
        escrow.deposit(d.ledger, d.operator, payer, 24 * cost)
        developers = [d.developer(payer, 15 * cost) for _ in range(2)]
        d.wait_mirrored()
        for api in apis:
            poll_until(lambda api=api: any(c["id"] == SMALL_MODEL and c["sluice"]["input_rate"] == "0"  # type: ignore[misc]
                                           for c in httpx.get(api + "/v1/models").json()["data"]), 20,
                       "every process pricing the model")
        payload = json.dumps({"model": SMALL_MODEL, "messages": [{"role": "user", "content": "scale"}],
                              "max_tokens": 4, "ignore_eos": True}).encode()

        async def one(client: httpx.AsyncClient) -> tuple[int, str | None]:
            r = await client.post(CHAT, content=payload, headers={"content-type": "application/json"})
            return r.status_code, (r.json()["error"]["code"] if r.status_code != 200 else None)

        async def run() -> list[list[tuple[int, str | None]]]:
            clients = [[httpx.AsyncClient(base_url=api, auth=SluiceAuth(key, payer=payer.address, max_cost=cost),
                                          timeout=300, limits=FRESH_CONNECTIONS) for api in apis]
                       for key in developers]
            try:
                per_key = [asyncio.gather(*(one(mine[i % 3]) for i in range(60))) for mine in clients]
                return list(await asyncio.gather(*per_key))
            finally:
                for mine in clients:
                    for client in mine:
                        await client.aclose()

        started = time.monotonic()
        results = asyncio.run(run())
        elapsed = time.monotonic() - started
    finally:
        d.ledger.set_rate(d.operator, SMALL_MODEL, rate.input_rate, rate.output_rate, Tier.EDGE)
    admitted = [sum(1 for r in key if r == (200, None)) for key in results]
    refusals = Counter(r for key in results for r in key if r[0] != 200)
    print(f"\n[scale-out] 120 calls on 3 processes in {elapsed:.1f} s: admitted per key {admitted}, "
          f"refusals {dict(refusals)}")
    assert sum(admitted) == 24
    assert all(9 <= n <= 15 for n in admitted)
    assert set(refusals) <= {(402, "insufficient_escrow"), (402, "insufficient_budget")}
    assert refusals[(402, "insufficient_escrow")] >= 1  # the escrow, not the budgets, stopped the last calls
    assert sum(refusals.values()) == 96
    poll_until(lambda: d.sql("SELECT count(*) FROM holds WHERE payer = %s", raw(payer.address))[0][0] == 0, 30,
               "every hold released into usage")
    usage = d.sql("SELECT spender, count(*), sum(cost) FROM usage_records WHERE payer = %s GROUP BY spender",
                  raw(payer.address))
    assert {("0x" + bytes(s).hex(), int(n), int(c)) for s, n, c in usage} == {
        (dev.address.lower(), n, n * cost) for dev, n in zip(developers, admitted, strict=True)}
    d.wait_rates(SMALL_MODEL, str(rate.input_rate))


def test_killing_the_follower_hands_following_to_another_process(three: tuple[Deployed, list[str]]) -> None:
    d, apis = three
    poll_until(lambda: sum(bool(health(api)["chain_follower"]) for api in apis) == 1, 20, "one follower")
    by_api = {api: health(api) for api in apis}
    follower_api = next(api for api, h in by_api.items() if h["chain_follower"])
    pid = by_api[follower_api]["pid"]
    assert isinstance(pid, int)
    rest = [api for api in apis if api != follower_api]
    os.kill(pid, signal.SIGKILL)
    killed = time.monotonic()
    poll_until(lambda: any(health(api)["chain_follower"] for api in rest), 20, "another process following")
    took_over = time.monotonic() - killed
    print(f"\n[scale-out] follower pid {pid} killed; another process followed {took_over:.2f} s later")
    assert took_over < 5
    assert sum(bool(health(api)["chain_follower"]) for api in rest) == 1

    payer = d.fund(3)  # a deposit after the take-over is mirrored
    head = d.ledger.w3.eth.block_number
    poll_until(lambda: bool(d.sql("SELECT 1 FROM mirror_escrow WHERE account = %s AND escrow = %s",
                                  raw(payer.address), 3 * ONE_TOKEN)), 20, "the deposit mirrored")
    poll_until(lambda: all(health(api)["mirror_lag_blocks"] == 0 for api in rest), 10, "every process current")
    assert d.sql("SELECT block FROM mirror_cursor")[0][0] >= head
    payload = json.dumps({"model": SMALL_MODEL, "messages": [{"role": "user", "content": "after"}],
                          "max_tokens": 4}).encode()
    for api in rest:
        r = httpx.post(api + CHAT, content=payload, auth=SluiceAuth(payer, max_cost=ONE_TOKEN),
                       headers={"content-type": "application/json"}, timeout=60)
        assert r.status_code == 200, r.text


def test_api_workers_serve_one_port_and_take_part_in_following(three: tuple[Deployed, list[str]]) -> None:
    d, apis = three
    api = d.add_replica(**BURST_ENV, SLUICE_API_WORKERS="2")
    pids: set[object] = set()
    deadline = time.monotonic() + 20
    while len(pids) < 2 and time.monotonic() < deadline:  # fresh connections land on either worker
        pids.add(httpx.get(api + "/health", timeout=5, headers={"connection": "close"}).json()["pid"])
    assert len(pids) == 2
    # (The follower killed by the test before is gone from `apis`; the others stay.)
    followers = [h for h in (health(a) for a in [*alive(apis), api]) if h["chain_follower"]]
    assert len(followers) == 1
    metrics = httpx.get(api + "/metrics", timeout=5)
    assert metrics.status_code == 404
    assert "runs 2 workers, each counting alone" in metrics.json()["error"]["message"]


def test_api_workers_with_a_fixed_metrics_port_refuse_to_start(three: tuple[Deployed, list[str]]) -> None:
    import subprocess
    import sys

    d, _apis = three
    env = {**os.environ, "SLUICE_API_WORKERS": "3", "SLUICE_METRICS_PORT": "9", "DATABASE_URL": d.db_url,
           "SLUICE_HOME": str(d.settings.home), "RPC_URL": d.settings.effective_rpc_url}
    done = subprocess.run([sys.executable, "-m", "redemption"], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert ("redemption service refused to start: SLUICE_API_WORKERS=3 with SLUICE_METRICS_PORT=9: every worker "
            "keeps its own metrics") in done.stderr
