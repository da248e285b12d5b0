"""Node faults and routing constraints, end to end through the real service and simulated nodes.

The simulator's fault injection (`POST /sim/faults`) makes a node answer 500, hang
before its first byte, or drop its stream mid-way. Whatever happens, a call is
charged at most once, only for what a node generated, never more than it signed
for; a call no node could serve is refused with 503 `no_capacity` and costs nothing.

The service routes a call to the node with the lowest score (queue depth plus its
average time to first byte) and rests a node for a few seconds after it fails, so the
order of the tests matters: the failover tests first make the regional node look slow
so the edge node, the one they fail, is tried first; a test that needs a rested node
back polls until it serves again; both nodes fail only in the last test.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from eth_account.signers.local import LocalAccount
from eth_hash.auto import keccak

from ledger.domain import usage_cost
from ledger.keys import embedded_account
from ledger.polling import poll_until
from ledger.protocol.eip712 import Domains, Redemption, typed_digest
from ledger.protocol.secp256k1 import sign_digest
from ledger.stack.apps import EMBEDDED_NODES
from tests.support.stack import LARGE_MODEL, SMALL_MODEL, Deployed

# fault tests: nodes die, stall and lie under a running service
pytestmark = pytest.mark.slow

CHAT = "/v1/chat/completions"
NODE_TIMEOUT = 3.0  # SLUICE_NODE_TIMEOUT_SECONDS in the deployment
EDGE, REGIONAL = (next(n for n in EMBEDDED_NODES if n.tier == tier) for tier in ("edge", "regional"))
EDGE_NODE = embedded_account(EDGE.key_index).address
REGIONAL_NODE = embedded_account(REGIONAL.key_index).address


def raw(address: str) -> bytes:
    return bytes.fromhex(address[2:])


def chat_body(model: str = SMALL_MODEL, **fields: Any) -> bytes:
    return json.dumps({"model": model, "messages": [{"role": "user", "content": "tell me about sluices"}],
                       "max_tokens": 4, **fields}).encode()


@dataclass
class Payer:
    """An enterprise wallet, a developer key it approved, and the EIP-712 domains the developer signs under."""

    enterprise: LocalAccount
    developer: LocalAccount
    domains: Domains

    @property
    def address(self) -> str:
        return self.enterprise.address

    def headers(self, body: bytes, max_cost: int = 10**16, route: dict[str, str] | None = None) -> dict[str, str]:
        """The five signed-call headers, plus the routing constraints `route` (Sluice-Tier, Sluice-Region)."""
        nonce, deadline = secrets.randbits(128), int(time.time()) + 120
        message = Redemption(self.address, keccak(body), max_cost, nonce, deadline)
        signature = sign_digest(bytes(self.developer.key), typed_digest(self.domains.redemption,
                                                                        message.struct_hash()))
        return {"content-type": "application/json", "Sluice-Payer": self.address, "Sluice-Max-Cost": str(max_cost),
                "Sluice-Nonce": str(nonce), "Sluice-Deadline": str(deadline),
                "Sluice-Signature": "0x" + signature.hex(), **(route or {})}


@pytest.fixture(scope="module")
def payer(deployed: Deployed) -> Payer:
    enterprise = deployed.fund(10)
    developer = deployed.developer(enterprise, 10**18)
    deployed.wait_mirrored()
    d = deployed.deployment
    return Payer(enterprise, developer, Domains(d.chain_id, d.contracts["settlement"]))


@pytest.fixture(autouse=True)
def _no_faults(deployed: Deployed) -> Iterator[None]:
    deployed.clear_faults()
    yield
    deployed.clear_faults()


def post(deployed: Deployed, body: bytes, headers: dict[str, str]) -> httpx.Response:
    return httpx.post(deployed.api + CHAT, content=body, headers=headers, timeout=30)


def usage(deployed: Deployed, job: str) -> list[tuple[Any, ...]]:
    return deployed.sql("SELECT node, prompt_tokens, completion_tokens, cost, max_cost FROM usage_records"
                        " WHERE job_id = %s", bytes.fromhex(job[2:]))


def money(deployed: Deployed, payer: Payer) -> tuple[Any, ...]:
    """What the payer has been charged and has reserved: usage records, holds, reservations, budget."""
    p = raw(payer.address)
    figures = deployed.sql(
        "SELECT (SELECT count(*) FROM usage_records WHERE payer = %s), (SELECT count(*) FROM holds WHERE payer = %s),"
        " (SELECT coalesce(sum(reserved), 0) FROM reserved_payer WHERE payer = %s),"
        " (SELECT coalesce(sum(reserved), 0) FROM reserved_pair WHERE payer = %s)", p, p, p, p)[0]
    budget = deployed.budget(payer.address, payer.developer.address).json()
    return (*figures, budget["escrow_available"], budget["budget_available"])


def fault_state(deployed: Deployed, node: str) -> dict[str, Any]:
    state: dict[str, Any] = httpx.get(deployed.sim_url(node) + "/sim/faults", timeout=5).json()
    return state


def assert_no_capacity(response: httpx.Response, *hints: str) -> None:
    assert response.status_code == 503, response.text
    error = response.json()["error"]
    assert response.json() == {"error": {"message": error["message"], "type": "server_error", "param": "model",
                                         "code": "no_capacity"}}
    for hint in ("nothing was charged", *hints):
        assert hint in error["message"], error["message"]


def assert_charged_once(deployed: Deployed, response: httpx.Response, node: str, max_cost: int,
                        model: str = SMALL_MODEL) -> None:
    """Served by `node` and metered exactly once, at the rate card's price for the usage it reported."""
    assert response.status_code == 200, response.text
    reported = response.json()["usage"]
    rate = deployed.ledger.rate(model)
    cost = usage_cost(reported["prompt_tokens"], reported["completion_tokens"], rate.input_rate, rate.output_rate)
    assert int(response.headers["Sluice-Cost"]) == cost
    assert usage(deployed, response.headers["Sluice-Job-Id"]) == [
        (raw(node), reported["prompt_tokens"], reported["completion_tokens"], cost, max_cost)]
    job = bytes.fromhex(response.headers["Sluice-Job-Id"][2:])
    assert deployed.sql("SELECT count(*) FROM settlement_outbox WHERE job_id = %s", job) == [(1,)]
    assert deployed.sql("SELECT count(*) FROM holds WHERE job_id = %s", job) == [(0,)]


def wait_until_served(deployed: Deployed, payer: Payer, tier: str) -> None:
    """Until the service routes to the node of `tier` again (it rests a node for a few seconds after a failure)."""
    def served() -> bool:
        body = chat_body(max_tokens=1)
        return post(deployed, body, payer.headers(body, route={"Sluice-Tier": tier})).status_code == 200

    poll_until(served, 15, f"the {tier} node serving again")


def make_regional_look_slow(deployed: Deployed, payer: Payer) -> None:
    """One regional call stalled 1 s lifts the regional node's average time to first byte by ~200 ms (its
    weight is 0.2), far above the edge node's, so a call with no constraint tries the edge node first."""
    deployed.set_fault(REGIONAL.name, mode="delay", delay_seconds=1.0, count=1)
    body = chat_body(max_tokens=1)
    assert post(deployed, body, payer.headers(body, route={"Sluice-Tier": "regional"})).status_code == 200


# -- routing constraints --------------------------------------------------------------------------------------


@pytest.mark.parametrize(("header", "value", "node"), [
    ("Sluice-Tier", "edge", EDGE_NODE),
    ("Sluice-Tier", "regional", REGIONAL_NODE),
    ("Sluice-Region", EDGE.region, EDGE_NODE),
    ("Sluice-Region", REGIONAL.region, REGIONAL_NODE),
])
def test_tier_and_region_pick_the_node(deployed: Deployed, payer: Payer, header: str, value: str, node: str) -> None:
    for _ in range(2):  # every call, not just the first, goes where it was told
        body = chat_body(max_tokens=2)
        assert_charged_once(deployed, post(deployed, body, payer.headers(body, route={header: value})), node, 10**16)


# -- one node fails --------------------------------------------------------------------------------------------


def test_failover_when_a_node_answers_500(deployed: Deployed, payer: Payer) -> None:
    """The edge node (tried first) answers 500: the regional node serves, charged once."""
    make_regional_look_slow(deployed, payer)
    before = money(deployed, payer)
    deployed.set_fault(EDGE.name, mode="error", status=500, count=1)
    body = chat_body()
    response = post(deployed, body, payer.headers(body))
    assert fault_state(deployed, EDGE.name)["mode"] == "none"  # the edge node was tried and failed
    assert_charged_once(deployed, response, REGIONAL_NODE, 10**16)
    cost = int(response.headers["Sluice-Cost"])
    after = money(deployed, payer)
    assert after == (before[0] + 1, before[1], before[2] + cost, before[3] + cost, str(int(before[4]) - cost),
                     str(int(before[5]) - cost))


def test_node_dropping_mid_stream_charges_only_what_was_generated(deployed: Deployed, payer: Payer) -> None:
    deployed.set_fault(REGIONAL.name, mode="drop_mid_stream", after_tokens=3)
    body = chat_body(max_tokens=50, stream=True)
    max_cost = 10**16
    events: list[Any] = []
    with httpx.stream("POST", deployed.api + CHAT, content=body, timeout=30,
                      headers=payer.headers(body, max_cost, route={"Sluice-Tier": "regional"})) as response:
        assert response.status_code == 200
        job = response.headers["Sluice-Job-Id"]
        for line in response.iter_lines():
            if line.startswith("data: "):
                data = line[len("data: "):]
                events.append(data if data == "[DONE]" else json.loads(data))
    assert events[-1] == "[DONE]"
    chunks, error = events[:-2], events[-2]
    assert all(c.get("choices") for c in chunks)  # no usage chunk: the stream never finished
    received = [c for c in chunks if "role" not in c["choices"][0]["delta"]]
    assert len(received) == 3 and all(c["choices"][0]["delta"]["content"] for c in received)
    rows = usage(deployed, job)
    assert len(rows) == 1
    node, prompt_tokens, completion_tokens, cost, signed_max = rows[0]
    rate = deployed.ledger.rate(SMALL_MODEL)
    assert (node, completion_tokens, signed_max) == (raw(REGIONAL_NODE), 3, max_cost)
    assert cost == usage_cost(prompt_tokens, 3, rate.input_rate, rate.output_rate) <= max_cost
    assert error == {"error": {
        "message": f"the node dropped the stream; you were charged {cost} base units, only for the tokens it "
                   "generated; send the call again for the rest",
        "type": "server_error", "param": None, "code": "upstream_dropped"}}
    assert deployed.sql("SELECT count(*) FROM holds WHERE job_id = %s", bytes.fromhex(job[2:])) == [(0,)]


def generated_tokens(deployed: Deployed, node: str) -> float:
    """vLLM's `vllm:generation_tokens_total` on the node's simulator."""
    text = httpx.get(deployed.sim_url(node) + "/metrics", timeout=5).text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("vllm:generation_tokens_total"))


def test_client_leaving_mid_stream_is_charged_for_what_was_generated(deployed: Deployed, payer: Payer) -> None:
    max_tokens, max_cost = 2000, 10**17
    body = chat_body(max_tokens=max_tokens, stream=True, ignore_eos=True)  # ~20 s of regional generation
    generated_before = generated_tokens(deployed, REGIONAL.name)
    received = 0
    started = time.monotonic()
    with httpx.stream("POST", deployed.api + CHAT, content=body, timeout=30,
                      headers=payer.headers(body, max_cost, route={"Sluice-Tier": "regional"})) as response:
        assert response.status_code == 200
        job = bytes.fromhex(response.headers["Sluice-Job-Id"][2:])
        for line in response.iter_lines():
            if line.startswith("data: {"):
                received += "role" not in json.loads(line[6:])["choices"][0]["delta"]
                if received == 3:
                    break
    # Leaving the `with` closed the connection mid-stream.

    def metered() -> bool:
        return deployed.sql("SELECT count(*) FROM holds WHERE job_id = %s", job) == [(0,)] and bool(
            deployed.sql("SELECT 1 FROM usage_records WHERE job_id = %s", job))

    poll_until(metered, 10, "the abandoned stream being metered")
    assert time.monotonic() - started < 10  # well before the ~20 s the whole answer takes
    [(node, prompt_tokens, completion_tokens, cost, signed_max)] = deployed.sql(
        "SELECT node, prompt_tokens, completion_tokens, cost, max_cost FROM usage_records WHERE job_id = %s", job)
    generated = generated_tokens(deployed, REGIONAL.name) - generated_before
    assert (node, signed_max) == (raw(REGIONAL_NODE), max_cost)
    assert received <= completion_tokens <= generated < max_tokens
    rate = deployed.ledger.rate(SMALL_MODEL)
    assert cost == usage_cost(prompt_tokens, completion_tokens, rate.input_rate, rate.output_rate) <= max_cost


# Here, while the edge node rests after its 500: these calls need no node at all.
@pytest.mark.parametrize(("constraints", "model", "hint"), [
    ({"Sluice-Region": "mars-north-1"}, SMALL_MODEL, "in region mars-north-1"),
    ({"Sluice-Tier": "cloud"}, SMALL_MODEL, "in tier cloud"),
    ({"Sluice-Tier": "edge", "Sluice-Region": REGIONAL.region}, SMALL_MODEL,
     f"in tier edge in region {REGIONAL.region}"),
    ({"Sluice-Tier": "edge"}, LARGE_MODEL, "in tier edge"),
], ids=["unknown region", "no cloud node", "edge tier in the regional region", "large model at the edge"])
def test_impossible_constraint_is_503_and_free(deployed: Deployed, payer: Payer, constraints: dict[str, str],
                                              model: str, hint: str) -> None:
    before = money(deployed, payer)
    body = chat_body(model)
    assert_no_capacity(post(deployed, body, payer.headers(body, 10**17, constraints)), hint, "retry later")
    assert money(deployed, payer) == before


def test_failover_when_a_node_hangs_before_its_first_byte(deployed: Deployed, payer: Payer) -> None:
    """The edge node (tried first) hangs: after the service's 3 s node timeout the regional node serves."""
    make_regional_look_slow(deployed, payer)
    wait_until_served(deployed, payer, "edge")  # the edge node rested after its 500 above
    deployed.set_fault(EDGE.name, mode="timeout", count=1)
    body = chat_body()
    started = time.monotonic()
    response = post(deployed, body, payer.headers(body))
    elapsed = time.monotonic() - started
    assert fault_state(deployed, EDGE.name)["mode"] == "none"  # the edge node was tried
    assert_charged_once(deployed, response, REGIONAL_NODE, 10**16)
    assert NODE_TIMEOUT <= elapsed < NODE_TIMEOUT + 2


# -- every node fails (last: both nodes then rest) -------------------------------------------------------------


def test_all_nodes_failing_is_503_and_free(deployed: Deployed, payer: Payer) -> None:
    wait_until_served(deployed, payer, "edge")  # the edge node rested after it hung above
    before = money(deployed, payer)
    for node in (EDGE.name, REGIONAL.name):
        deployed.set_fault(node, mode="error", status=500, count=1)
    body = chat_body()
    assert_no_capacity(post(deployed, body, payer.headers(body)), "retry later")
    for node in (EDGE.name, REGIONAL.name):
        assert fault_state(deployed, node)["mode"] == "none"  # each node was tried once and failed
    assert money(deployed, payer) == before
    # While both nodes rest, a streamed call is refused the same way.
    body = chat_body(stream=True)
    assert_no_capacity(post(deployed, body, payer.headers(body)), "retry later")
    assert money(deployed, payer) == before
