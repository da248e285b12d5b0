"""Adversarial nodes against the real stack (Invariants 8 and 9): only NodeRegistry's nodes serve and meter,
only the receipt of the node a job went to meters it, within the ticket's bounds, and a call that produced
output without an acceptable receipt is charged fail-closed from what the service relayed, within its hold.

The rogue is a node of the test's own (`RogueNode`, a small HTTP server on loopback speaking the node
protocol) with a key of its own; it is registered on chain as the only `cloud` node when a test needs a
registered node that misbehaves, and calls reach it with `Sluice-Tier: cloud`. Every test ends by
checking what was charged, to the base unit.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import orjson
import pytest
import uvicorn
from eth_account import Account
from eth_account.messages import encode_defunct
from eth_account.signers.local import LocalAccount
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from inference_node.protocol import (
    HEARTBEAT_PATH,
    RECEIPT_HEADER,
    RECEIPTS_PATH,
    TICKET_HEADER,
    UNSIGNED,
    NodeHeartbeat,
    SignedReceipt,
    SignedTicket,
)
from ledger.audit.api import AuditApi
from ledger.audit.verifier import verify
from ledger.domain import model_id, usage_cost
from ledger.keys import DevelopmentKeyRefused, embedded_account, settler_account
from ledger.polling import poll_until
from ledger.protocol.eip712 import Domains, UsageReceipt, typed_digest
from ledger.protocol.secp256k1 import sign_digest
from ledger.settlement.settings import SettlementSettings
from ledger.settlement.settler import Settler
from ledger.settlement.store import Database
from ledger.stack.apps import EMBEDDED_NODES
from ledger.stack.probes import free_port
from redemption.sdk import SluiceAuth
from tests.support.audit import settle_waiting, wait_indexed
from tests.support.stack import SMALL_MODEL, Deployed

CHAT = "/v1/chat/completions"
EDGE = next(n for n in EMBEDDED_NODES if n.tier == "edge")
REGIONAL = next(n for n in EMBEDDED_NODES if n.tier == "regional")
EDGE_KEY, REGIONAL_KEY = embedded_account(EDGE.key_index), embedded_account(REGIONAL.key_index)
PROMPT_TOKENS = 20  # what the rogue reports as the prompt's size


def body(**fields: Any) -> bytes:
    return json.dumps({"model": SMALL_MODEL, "messages": [{"role": "user", "content": "open the sluice"}],
                       "max_tokens": 4, **fields}).encode()


def priced(deployed: Deployed, prompt: int, completion: int) -> int:
    """The cost of these model tokens at the small model's on-chain rates."""
    rate = deployed.ledger.rate(SMALL_MODEL)
    return usage_cost(prompt, completion, rate.input_rate, rate.output_rate)


def domains(deployed: Deployed) -> Domains:
    return Domains(deployed.deployment.chain_id, deployed.deployment.contracts["settlement"])


def sign_receipt(deployed: Deployed, key: LocalAccount, job: bytes, payer: str, spender: str, prompt: int,
                 completion: int, cost: int, digest: bytes) -> SignedReceipt:
    receipt = UsageReceipt(job, payer, spender, model_id(SMALL_MODEL), prompt, completion, cost, digest)
    signature = sign_digest(bytes(key.key), typed_digest(domains(deployed).receipt, receipt.struct_hash()))
    return SignedReceipt(receipt, signature, key.address)


def post_receipt(deployed: Deployed, signed: SignedReceipt | bytes) -> httpx.Response:
    content = signed if isinstance(signed, bytes) else signed.encode().encode()
    return httpx.post(deployed.api + RECEIPTS_PATH, content=content, timeout=10)


def heartbeat(deployed: Deployed, key: LocalAccount, url: str, tier: str = "cloud") -> httpx.Response:
    beat = NodeHeartbeat(node=key.address, url=url, models=[SMALL_MODEL], tier=tier, region="rogue-land",  # type: ignore[arg-type]
                         capacity=8, running=0, waiting=0, timestamp=int(time.time()), signature=UNSIGNED)
    signature = "0x" + key.sign_message(encode_defunct(text=beat.signing_text())).signature.hex()
    return httpx.post(deployed.api + HEARTBEAT_PATH,
                      json=beat.model_copy(update={"signature": signature}).model_dump(), timeout=10)


def code(response: httpx.Response) -> str:
    value = response.json()["error"]["code"]
    assert isinstance(value, str)
    return value


class RogueNode:
    """A node of the test's own: answers from its ticket with usage it reports, and a receipt as `mode` says."""

    def __init__(self, deployed: Deployed) -> None:
        self.deployed = deployed
        self.key: LocalAccount = Account.create()
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.mode = "honest"
        self.served = 0
        self.delay = 0.0
        app = Starlette(routes=[Route(CHAT, self.chat, methods=["POST"]), Route("/health", self.health)])
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    async def health(self, request: Request) -> Response:
        return Response("ok")

    def receipt_for(self, ticket: Any, completion: int) -> SignedReceipt:
        cost = usage_cost(PROMPT_TOKENS, completion, ticket.input_rate, ticket.output_rate)
        return sign_receipt(self.deployed, self.key, ticket.job_id, ticket.payer, ticket.spender, PROMPT_TOKENS,
                            completion, cost, ticket.request_digest)

    async def chat(self, request: Request) -> Response:
        self.served += 1
        ticket = SignedTicket.decode(request.headers[TICKET_HEADER]).ticket
        payload = orjson.loads(await request.body())
        if self.delay:
            await asyncio.sleep(self.delay)
        produced = ticket.max_tokens
        usage = {"prompt_tokens": PROMPT_TOKENS, "completion_tokens": produced,
                 "total_tokens": PROMPT_TOKENS + produced}
        claimed = {"honest": produced, "over_max_tokens": ticket.max_tokens + 5, "over_max_cost": 10**12,
                   "no_receipt": produced}[self.mode]
        receipt = self.receipt_for(ticket, claimed)
        if payload.get("stream"):
            return StreamingResponse(self.stream(produced, usage, receipt), media_type="text/event-stream")
        answer = {"id": "chatcmpl-rogue", "object": "chat.completion", "created": int(time.time()),
                  "model": SMALL_MODEL, "usage": usage,
                  "choices": [{"index": 0, "finish_reason": "length",
                               "message": {"role": "assistant", "content": "word " * produced}}]}
        headers = {} if self.mode == "no_receipt" else {RECEIPT_HEADER: receipt.encode()}
        return JSONResponse(answer, headers=headers)

    async def stream(self, produced: int, usage: dict[str, int], receipt: SignedReceipt) -> Any:
        for i in range(produced):
            chunk = {"id": "chatcmpl-rogue", "object": "chat.completion.chunk", "model": SMALL_MODEL,
                     "choices": [{"index": 0, "delta": {"content": "word "}, "finish_reason": None}],
                     "usage": {"prompt_tokens": PROMPT_TOKENS, "completion_tokens": i + 1,
                               "total_tokens": PROMPT_TOKENS + i + 1}}
            yield b"data: " + orjson.dumps(chunk) + b"\n\n"
        yield b"data: " + orjson.dumps({"id": "chatcmpl-rogue", "choices": [], "usage": usage}) + b"\n\n"
        if self.mode != "no_receipt":
            yield b"event: sluice.receipt\ndata: " + receipt.encode().encode() + b"\n\n"
        yield b"data: [DONE]\n\n"

    def beat(self) -> httpx.Response:
        return heartbeat(self.deployed, self.key, self.url)


@pytest.fixture(scope="module")
def rogue(deployed: Deployed) -> Iterator[RogueNode]:
    node = RogueNode(deployed)
    node.thread.start()
    poll_until(lambda: node.server.started, 10, "the rogue node listening")
    yield node
    node.server.should_exit = True
    node.thread.join(5)


@pytest.fixture(scope="module")
def payer(deployed: Deployed) -> tuple[LocalAccount, LocalAccount]:
    enterprise = deployed.fund(10)
    developer = deployed.developer(enterprise, 10**18)
    deployed.wait_mirrored()
    return enterprise, developer


def call(deployed: Deployed, payer: tuple[LocalAccount, LocalAccount], content: bytes, *, max_cost: int = 10**16,
         tier: str | None = None) -> httpx.Response:
    enterprise, developer = payer
    headers = {"content-type": "application/json", **({"Sluice-Tier": tier} if tier else {})}
    return httpx.post(deployed.api + CHAT, content=content, headers=headers, timeout=30,
                      auth=SluiceAuth(developer, payer=enterprise.address, max_cost=max_cost))


def usage_row(deployed: Deployed, job: bytes) -> tuple[Any, ...]:
    [row] = deployed.sql("SELECT node, prompt_tokens, completion_tokens, cost, receipt_signature, unreceipted"
                         " FROM usage_records WHERE job_id = %s", job)
    return (("0x" + bytes(row[0]).hex()).lower(), row[1], row[2], int(row[3]), bytes(row[4]), row[5])


def job_of(response: httpx.Response) -> bytes:
    return bytes.fromhex(response.headers["Sluice-Job-Id"][2:])


def metric(deployed: Deployed, name: str, **labels: str) -> float:
    text = httpx.get(deployed.api + "/metrics", timeout=5).text
    wanted = name + ("{" + ",".join(f'{k}="{v}"' for k, v in labels.items()) + "}" if labels else "")
    for line in text.splitlines():
        if line.startswith(wanted + " "):
            return float(line.split()[-1])
    return 0.0


# --------------------------------------------------------------------------- registration


def test_a_self_registering_heartbeat_is_refused_and_gets_no_traffic(
    deployed: Deployed, payer: tuple[LocalAccount, LocalAccount], rogue: RogueNode
) -> None:
    refused = rogue.beat()
    assert refused.status_code == 403 and code(refused) == "node_not_registered"
    nodes_before = httpx.get(deployed.api + "/health", timeout=5).json()["nodes"]
    served = [call(deployed, payer, body()) for _ in range(10)]
    assert [r.status_code for r in served] == [200] * 10
    nodes = {usage_row(deployed, job_of(r))[0] for r in served}
    assert nodes <= {EDGE_KEY.address.lower(), REGIONAL_KEY.address.lower()}
    assert rogue.served == 0  # it read no prompt
    assert httpx.get(deployed.api + "/health", timeout=5).json()["nodes"] == nodes_before
    cloud = call(deployed, payer, body(), tier="cloud")  # and it is not a cloud node either
    assert cloud.status_code == 503 and code(cloud) == "no_capacity" and rogue.served == 0


def test_a_heartbeat_pointing_at_another_url_is_refused(deployed: Deployed,
                                                        payer: tuple[LocalAccount, LocalAccount]) -> None:
    real = deployed.ledger.node_of(EDGE_KEY.address).endpoint
    for elsewhere in ("http://127.0.0.1:1", "http://169.254.169.254/latest/meta-data", real + "/../admin"):
        moved = heartbeat(deployed, EDGE_KEY, elsewhere, tier="edge")
        assert moved.status_code == 403 and code(moved) == "endpoint_mismatch"
    response = call(deployed, payer, body(), tier="edge")  # still routed to its registered endpoint
    assert response.status_code == 200
    assert usage_row(deployed, job_of(response))[0] == EDGE_KEY.address.lower()


def test_malformed_heartbeats_are_400s_and_bad_signatures_401s(deployed: Deployed) -> None:
    beat = NodeHeartbeat(node=EDGE_KEY.address, url="http://127.0.0.1:9", models=[SMALL_MODEL], tier="edge",
                         region="r", capacity=1, running=0, waiting=0, timestamp=int(time.time()),
                         signature=UNSIGNED).model_dump()
    for signature in ("0x", "0x00", "0x" + "00" * 65, "0x" + "ff" * 65, "0x" + "01" * 64 + "05"):
        response = httpx.post(deployed.api + HEARTBEAT_PATH, json={**beat, "signature": signature}, timeout=5)
        assert response.status_code in (400, 401), response.text
        assert response.json()["error"]["code"] in ("invalid_request", "invalid_signature")
    for field, value in (("capacity", 2**70), ("running", -1), ("timestamp", 2**64), ("models", []),
                         ("url", "x" * 5000), ("node", "0x12"), ("tier", "gpu")):
        response = httpx.post(deployed.api + HEARTBEAT_PATH, json={**beat, field: value}, timeout=5)
        assert response.status_code == 400 and code(response) == "invalid_request", (field, response.text)


# --------------------------------------------------------------------------- receipts bound to the dispatch


def test_a_registered_node_cannot_meter_another_nodes_job(
    deployed: Deployed, payer: tuple[LocalAccount, LocalAccount]
) -> None:
    enterprise, developer = payer
    deployed.set_fault(EDGE.name, mode="delay", delay_seconds=2.0, count=1)
    result: dict[str, httpx.Response] = {}
    worker = threading.Thread(target=lambda: result.setdefault("r", call(deployed, payer, body(), tier="edge")))
    worker.start()
    try:
        poll_until(lambda: bool(deployed.sql("SELECT 1 FROM holds WHERE node IS NOT NULL AND spender = %s",
                                             bytes.fromhex(developer.address[2:]))), 10, "the call dispatched")
        [(job, digest, node)] = deployed.sql("SELECT job_id, request_digest, node FROM holds WHERE spender = %s",
                                             bytes.fromhex(developer.address[2:]))
        assert "0x" + bytes(node).hex() == EDGE_KEY.address.lower()
        job = bytes(job)
        cheap = priced(deployed, 1, 1)
        # The regional node is registered and active, but the job was sent to the edge node.
        other = post_receipt(deployed, sign_receipt(deployed, REGIONAL_KEY, job, enterprise.address.lower(),
                                                    developer.address.lower(), 1, 1, cheap, bytes(digest)))
        assert other.status_code == 409 and code(other) == "receipt_not_accepted"
        # Exactly what a receipt for a job that does not exist gets: no way to learn whether a hold exists.
        ghost = post_receipt(deployed, sign_receipt(deployed, REGIONAL_KEY, os.urandom(32),
                                                    enterprise.address.lower(), developer.address.lower(), 1, 1,
                                                    cheap, bytes(digest)))
        assert ghost.status_code == 409 and ghost.json() == other.json()
        stranger = post_receipt(deployed, sign_receipt(deployed, Account.create(), job, enterprise.address.lower(),
                                                       developer.address.lower(), 1, 1, cheap, bytes(digest)))
        assert stranger.status_code == 403 and code(stranger) == "node_not_registered"
    finally:
        worker.join(30)
    response = result["r"]
    assert response.status_code == 200
    usage = response.json()["usage"]
    node, prompt, completion, cost, signature, unreceipted = usage_row(deployed, job)
    assert (node, prompt, completion, unreceipted) == (EDGE_KEY.address.lower(), usage["prompt_tokens"],
                                                       usage["completion_tokens"], None)
    assert cost == int(response.headers["Sluice-Cost"]) == priced(deployed, prompt, completion)
    assert len(signature) == 65
    late = post_receipt(deployed, sign_receipt(deployed, EDGE_KEY, job, enterprise.address.lower(),
                                               developer.address.lower(), prompt, completion, cost, bytes(digest)))
    assert late.status_code == 409 and code(late) == "receipt_not_accepted"  # nothing is metered twice
    assert usage_row(deployed, job)[3] == cost


def test_malformed_and_oversized_receipts_are_refused_without_a_trace(deployed: Deployed) -> None:
    for content in (b"", b"{", b"[]", b"null", b'{"job_id": 1}', json.dumps({"a": [[[[[[[[[[1]]]]]]]]]]}).encode(),
                    b"[" * 5000 + b"]" * 5000, "\u00e9".encode("latin-1")):
        response = post_receipt(deployed, content)
        assert response.status_code in (400, 413) and response.json()["error"]["code"] in (
            "invalid_receipt", "body_too_large"), (content[:20], response.text)
    huge = post_receipt(deployed, b"{" + b" " * (17 * 1024) + b"}")
    assert huge.status_code == 413 and code(huge) == "body_too_large"


# --------------------------------------------------------------------------- fail closed


@pytest.fixture(scope="module")
def registered_rogue(deployed: Deployed, rogue: RogueNode) -> RogueNode:
    deployed.ledger.register_node(deployed.operator, rogue.key.address, rogue.url, "cloud", "rogue-land")
    poll_until(lambda: rogue.beat().status_code == 200, 10, "the service admitting the registered rogue")
    return rogue


@pytest.mark.parametrize(("mode", "reason"), [("over_max_tokens", "receipt_refused:over_max_tokens"),
                                              ("over_max_cost", "receipt_refused:over_max_cost"),
                                              ("no_receipt", "no_receipt")])
@pytest.mark.parametrize("stream", [False, True], ids=["complete", "stream"])
def test_a_refused_or_missing_receipt_is_charged_fail_closed_within_the_hold(
    deployed: Deployed, payer: tuple[LocalAccount, LocalAccount], registered_rogue: RogueNode, mode: str,
    reason: str, stream: bool
) -> None:
    registered_rogue.mode = mode
    registered_rogue.beat()
    before = metric(deployed, "sluice_unreceipted_calls_total", reason=reason.split(":")[0])
    response = call(deployed, payer, body(stream=stream), tier="cloud")
    assert response.status_code == 200
    job = job_of(response)
    node, prompt, completion, cost, signature, unreceipted = usage_row(deployed, job)
    # Charged what the service relayed (the usage it saw), never more than the ticket allowed.
    assert (node, prompt, completion, signature, unreceipted) == (registered_rogue.key.address.lower(),
                                                                  PROMPT_TOKENS, 4, b"", reason)
    assert cost == priced(deployed, PROMPT_TOKENS, 4) > 0
    if stream:
        chunks = [json.loads(line[6:]) for line in response.text.splitlines()
                  if line.startswith("data: {") and '"sluice"' in line]
        assert chunks[-1]["sluice"]["cost"] == str(cost)
    else:
        assert int(response.headers["Sluice-Cost"]) == cost
    assert metric(deployed, "sluice_unreceipted_calls_total", reason=reason.split(":")[0]) == before + 1
    assert not deployed.sql("SELECT 1 FROM holds WHERE job_id = %s", job)
    registered_rogue.mode = "honest"


def test_a_posted_receipt_over_the_bounds_is_refused_and_the_call_still_pays(
    deployed: Deployed, payer: tuple[LocalAccount, LocalAccount], registered_rogue: RogueNode
) -> None:
    enterprise, developer = payer
    registered_rogue.mode, registered_rogue.delay = "honest", 2.0
    registered_rogue.beat()
    result: dict[str, httpx.Response] = {}
    worker = threading.Thread(target=lambda: result.setdefault("r", call(deployed, payer, body(), tier="cloud")))
    worker.start()
    try:
        poll_until(lambda: bool(deployed.sql("SELECT 1 FROM holds WHERE node = %s",
                                             bytes.fromhex(registered_rogue.key.address[2:]))), 10, "dispatch")
        [(job, digest, max_tokens)] = deployed.sql("SELECT job_id, request_digest, max_tokens FROM holds"
                                                   " WHERE node = %s", bytes.fromhex(registered_rogue.key.address[2:]))
        over = max_tokens + 1
        refused = post_receipt(deployed, sign_receipt(
            deployed, registered_rogue.key, bytes(job), enterprise.address.lower(), developer.address.lower(),
            PROMPT_TOKENS, over, priced(deployed, PROMPT_TOKENS, over), bytes(digest)))
        assert refused.status_code == 422 and code(refused) == "receipt_refused"
        assert "over_max_tokens" in refused.json()["error"]["message"]
    finally:
        worker.join(30)
        registered_rogue.delay = 0.0
    assert result["r"].status_code == 200  # then its honest inline receipt meters it
    assert usage_row(deployed, bytes(job))[2:4] == (4, priced(deployed, PROMPT_TOKENS, 4))


def test_a_retired_nodes_receipts_are_refused_and_it_gets_no_more_work(
    deployed: Deployed, payer: tuple[LocalAccount, LocalAccount], registered_rogue: RogueNode
) -> None:
    enterprise, developer = payer
    registered_rogue.beat()
    served = call(deployed, payer, body(), tier="cloud")
    assert served.status_code == 200
    deployed.ledger.retire_node(deployed.operator, registered_rogue.key.address)
    poll_until(lambda: call(deployed, payer, body(), tier="cloud").status_code == 503, 10,
               "the service dropping the retired node")
    beat = registered_rogue.beat()
    assert beat.status_code == 403 and code(beat) == "node_retired"
    receipt = post_receipt(deployed, sign_receipt(deployed, registered_rogue.key, os.urandom(32),
                                                  enterprise.address.lower(), developer.address.lower(), 1, 1, 1,
                                                  os.urandom(32)))
    assert receipt.status_code == 403 and code(receipt) == "node_retired"
    with pytest.raises(Exception, match=r"(?i)retired"):  # a retired key never comes back
        deployed.ledger.register_node(deployed.operator, registered_rogue.key.address, registered_rogue.url,
                                      "cloud", "rogue-land")

    # Its receipt metered before the retirement, settled after it: audit verify flags it (and reports the
    # fail-closed charges of this module in their own class).
    settings = SettlementSettings(home=deployed.settings.home, rpc_url=deployed.settings.effective_rpc_url,
                                  database_url=deployed.db_url)
    batch = settle_waiting(deployed, Settler(deployed.ledger, embedded_account(1), Database(deployed.db_url),
                                             settings))
    wait_indexed(deployed)
    auditor: LocalAccount = Account.create()
    deployed.ledger.grant_role(deployed.operator, "AUDITOR_ROLE", auditor.address)
    report = verify(deployed.settings.effective_rpc_url, AuditApi(deployed.api, auditor), workers=1)
    assert not report.ok
    flagged = {(d.check, d.job) for d in report.discrepancies}
    assert ("inactive_node", served.headers["Sluice-Job-Id"]) in flagged
    assert {d.check for d in report.discrepancies} <= {"inactive_node"}
    assert {u["reason"] for u in report.unreceipted} == {"no_receipt", "receipt_refused:over_max_tokens",
                                                          "receipt_refused:over_max_cost"}
    assert all(u["batch_id"] == "0x" + batch.hex() for u in report.unreceipted)
    cli = subprocess.run([sys.executable, "-c", "from ledger.cli.app import main; main()", "audit", "verify",
                          "--rpc", deployed.settings.effective_rpc_url, "--api", deployed.api, "--json"],
                         capture_output=True, text=True, timeout=120, check=False,
                         env={**os.environ, "SLUICE_AUDITOR_KEY": "0x" + bytes(auditor.key).hex()})
    assert cli.returncode == 1 and "inactive_node" in cli.stdout


# --------------------------------------------------------------------------- development keys


class ProductionChain(BaseHTTPRequestHandler):
    """A loopback JSON-RPC front to Anvil that says it is Besu: a chain that is not a development chain."""

    upstream = ""

    def do_POST(self) -> None:
        request = json.loads(self.rfile.read(int(self.headers["content-length"])))
        if isinstance(request, dict) and request.get("method") == "web3_clientVersion":
            answer = json.dumps({"jsonrpc": "2.0", "id": request.get("id"), "result": "besu/v24.12.0"}).encode()
        else:
            answer = httpx.post(self.upstream, json=request, timeout=10).content
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, *args: Any) -> None:
        return None


@pytest.fixture(scope="module")
def production_rpc(deployed: Deployed) -> Iterator[str]:
    handler = type("Front", (ProductionChain,), {"upstream": deployed.settings.effective_rpc_url})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def start_service(deployed: Deployed, rpc: str, **env: str) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("SLUICE_") and k not in ("RPC_URL",)}
    return subprocess.run(
        [sys.executable, "-m", "redemption"], capture_output=True, text=True, timeout=60, check=False,
        env={**base, "SLUICE_HOME": str(deployed.settings.state_dir), "RPC_URL": rpc, "DATABASE_URL": deployed.db_url,
             "SLUICE_API_PORT": str(free_port()), **env})


def test_a_development_dispatch_key_against_a_production_chain_refuses_to_start(
    deployed: Deployed, production_rpc: str
) -> None:
    unset = start_service(deployed, production_rpc)
    assert unset.returncode == 2 and "set SLUICE_DISPATCH_KEY" in unset.stderr
    # The key a forger would sign tickets with: Anvil's public key #2, the embedded dispatch key.
    forged = start_service(deployed, production_rpc, SLUICE_DISPATCH_KEY="0x" + bytes(embedded_account(2).key).hex())
    assert forged.returncode == 2 and "well-known development key" in forged.stderr
    assert "SLUICE_DISPATCH_KEY" in forged.stderr and "Traceback" not in forged.stderr
    settings = SettlementSettings(home=deployed.settings.home, rpc_url=production_rpc,
                                  settler_key="0x" + bytes(embedded_account(1).key).hex())  # type: ignore[arg-type]
    with pytest.raises(DevelopmentKeyRefused, match="SLUICE_SETTLER_KEY"):
        settler_account(settings)
    operator = subprocess.run(
        [sys.executable, "-c", "from ledger.cli.app import main; main()", "admin", "nodes", "retire",
         EDGE_KEY.address], capture_output=True, text=True, timeout=60, check=False,
        env={**os.environ, "SLUICE_HOME": str(deployed.settings.state_dir), "RPC_URL": production_rpc,
             "SLUICE_OPERATOR_KEY": "0x" + bytes(embedded_account(0).key).hex()})
    assert operator.returncode != 0 and "SLUICE_OPERATOR_KEY" in operator.stderr
    assert deployed.ledger.is_node_active(EDGE_KEY.address)  # nothing was done with the public key
