"""Behaviour tests of the node agent in front of the vLLM simulator.

Every server is real: the simulator (standing in for vLLM), the agent and a small stand-in for the
redemption service's internal API run under uvicorn on free loopback ports, each started by a
fixture that polls with a deadline. Tickets are signed here with a dispatch key the stand-in
service announces; receipts and heartbeats are verified against the node's key.
"""

from __future__ import annotations

import json
import re
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
import uvicorn
from eth_account import Account
from eth_account.messages import encode_defunct
from eth_hash.auto import keccak
from fastapi import FastAPI, Request
from prometheus_client.parser import text_string_to_metric_families

from inference_node.agent import (
    CHAT,
    COMPLETIONS,
    AgentConfig,
    Endpoint,
    InvalidRequestBody,
    SpentTickets,
    VllmNotInstalled,
    build_agent_server,
    launch_vllm,
    output_bounds,
    write_output_limit,
)
from inference_node.protocol import (
    DISPATCH_INFO_PATH,
    HEARTBEAT_PATH,
    RECEIPT_EVENT,
    RECEIPT_HEADER,
    RECEIPTS_PATH,
    TICKET_HEADER,
    DispatchInfo,
    NodeHeartbeat,
    SignedReceipt,
    SignedTicket,
)
from inference_node.simulator import SimulatorConfig, build_simulator_server
from ledger.protocol.eip712 import DispatchTicket, Domains, typed_digest
from ledger.protocol.secp256k1 import recover_digest, sign_digest
from ledger.stack.embedded import free_port

MODEL = "sim-model"
CHAT_MESSAGES = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "Say hello, please."},
]
CHAT_PROMPT_TOKENS = 15  # hand-tokenized with the simulator's template, see test_simulator.py
MAX_MODEL_LEN = 512
COMPLETION_PROMPT = "The quick brown fox"

NODE = Account.from_key("0x" + "a1" * 32)
DISPATCHER = Account.from_key("0x" + "b2" * 32)
STRANGER = Account.from_key("0x" + "c3" * 32)
OTHER_NODE = Account.from_key("0x" + "d4" * 32)
PAYER = Account.from_key("0x" + "e5" * 32).address
SPENDER = Account.from_key("0x" + "f6" * 32).address
CHAIN_ID = 31337
SETTLEMENT = "0x5E5e5e5E5e5e5E5E5e5E5e5e5E5E5e5e5e5E5e5e"
DOMAINS = Domains(CHAIN_ID, SETTLEMENT)
# One pooled client: a fresh httpx.get per call would build an SSL context every time.
HTTP = httpx.Client(timeout=10.0)
# Rates that make the ceiling in the cost formula matter.
INPUT_RATE = 1_000_003
OUTPUT_RATE = 2_999_999


def wait_until(condition: Callable[[], Any], deadline_seconds: float = 5.0) -> Any:
    """Poll `condition` until it returns something truthy, which is returned."""
    deadline = time.monotonic() + deadline_seconds
    while not (result := condition()):
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached before the deadline")
        time.sleep(0.01)
    return result


class RunningServer:
    """A uvicorn server in a background thread on a pre-bound loopback socket."""

    def __init__(self, build: Callable[[str], uvicorn.Server], ready_path: str = "/health") -> None:
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(128)
        self.base_url = f"http://127.0.0.1:{self._sock.getsockname()[1]}"
        self._ready_path = ready_path
        self._server = build(self.base_url)
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [self._sock]}, daemon=True)

    def start(self) -> RunningServer:
        self._thread.start()

        def ready() -> bool:
            try:
                HTTP.get(self.base_url + self._ready_path, timeout=1.0)
            except httpx.TransportError:
                return False
            return True

        wait_until(ready, 10.0)
        return self

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=10)
        self._sock.close()

    def metric(self, name: str, **labels: str) -> float:
        exposition = HTTP.get(self.base_url + "/metrics").text
        return sum(
            sample.value
            for family in text_string_to_metric_families(exposition)
            for sample in family.samples
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items())
        )


class FakeService:
    """The redemption service's internal API, recording what agents send it."""

    def __init__(self) -> None:
        self.receipts: list[dict[str, Any]] = []
        self.heartbeats: list[dict[str, Any]] = []
        self.app = FastAPI()
        info = DispatchInfo(chain_id=CHAIN_ID, settlement=SETTLEMENT, dispatch_signer=DISPATCHER.address)

        @self.app.get(DISPATCH_INFO_PATH)
        async def dispatch_info() -> DispatchInfo:
            return info

        @self.app.post(RECEIPTS_PATH)
        async def receipts(request: Request) -> dict[str, bool]:
            self.receipts.append(await request.json())
            return {"ok": True}

        @self.app.post(HEARTBEAT_PATH)
        async def heartbeat(request: Request) -> dict[str, bool]:
            self.heartbeats.append(await request.json())
            return {"ok": True}

    def receipt_for(self, job_id: bytes) -> SignedReceipt | None:
        for data in self.receipts:
            if data["job_id"] == "0x" + job_id.hex():
                return SignedReceipt.from_json(data)
        return None


def _port(base_url: str) -> int:
    return int(base_url.rsplit(":", 1)[1])


def _uvicorn(app: FastAPI, base_url: str) -> uvicorn.Server:
    return uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=_port(base_url), log_level="warning"))


def _simulator(**overrides: Any) -> RunningServer:
    config = SimulatorConfig(served_model_names=[MODEL], max_model_len=MAX_MODEL_LEN, seed=7, natural_min_tokens=20,
                             natural_max_tokens=60, **overrides)  # fmt: skip
    return RunningServer(lambda url: build_simulator_server(config, port=_port(url), log_level="warning"))


def _agent(vllm_url: str, service_url: str | None, **overrides: Any) -> RunningServer:
    def build(url: str) -> uvicorn.Server:
        config = AgentConfig.model_validate({
            "vllm_url": vllm_url, "node_key": "0x" + "a1" * 32, "service_url": service_url,
            "public_url": url if service_url else None, "tier": "edge", "region": "eu-west", "capacity": 4,
            "heartbeat_interval": 0.05, **overrides,
        })  # fmt: skip
        return build_agent_server(config, port=_port(url), log_level="warning")

    return RunningServer(build)


@pytest.fixture(scope="module", autouse=True)
def _close_http() -> Iterator[None]:
    yield
    HTTP.close()


@pytest.fixture(scope="module")
def sim() -> Iterator[RunningServer]:
    server = _simulator(ttft_seconds=0, per_token_seconds=0).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def slow_sim() -> Iterator[RunningServer]:
    """One sequence at a time (the next one waits), 0.05 s to the first token and 0.02 s per token."""
    server = _simulator(ttft_seconds=0.05, per_token_seconds=0.02, max_num_seqs=1).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def service_server() -> Iterator[tuple[FakeService, str]]:
    fake = FakeService()
    server = RunningServer(lambda url: _uvicorn(fake.app, url), ready_path=DISPATCH_INFO_PATH).start()
    yield fake, server.base_url
    server.stop()


@pytest.fixture(scope="module")
def agent(sim: RunningServer, service_server: tuple[FakeService, str]) -> Iterator[RunningServer]:
    server = _agent(sim.base_url, service_server[1]).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def slow_agent(slow_sim: RunningServer, service_server: tuple[FakeService, str]) -> Iterator[RunningServer]:
    server = _agent(slow_sim.base_url, service_server[1]).start()
    yield server
    server.stop()


@pytest.fixture
def recorder(service_server: tuple[FakeService, str]) -> FakeService:
    return service_server[0]


@pytest.fixture
def faulty(sim: RunningServer) -> Iterator[RunningServer]:
    yield sim
    HTTP.post(sim.base_url + "/sim/faults", json={"mode": "none"})


# --- helpers -----------------------------------------------------------------------------------


def issue(
    *,
    node: str = NODE.address,
    model: str = MODEL,
    max_tokens: int = 256,
    expires_in: int = 60,
    signer: Any = DISPATCHER,
) -> tuple[DispatchTicket, str]:
    """A fresh ticket (random job id) and its `Sluice-Ticket` header value."""
    ticket = DispatchTicket(
        job_id=keccak(str(time.perf_counter_ns()).encode() + threading.current_thread().name.encode()),
        node=node, payer=PAYER, spender=SPENDER, model=keccak(model.encode()), max_tokens=max_tokens,
        input_rate=INPUT_RATE, output_rate=OUTPUT_RATE, request_digest=keccak(b"the developer's signed call"),
        expires=int(time.time()) + expires_in,
    )  # fmt: skip
    signature = sign_digest(bytes(signer.key), typed_digest(DOMAINS.ticket, ticket.struct_hash()))
    return ticket, SignedTicket(ticket, signature).encode()


def expected_cost(prompt_tokens: int, completion_tokens: int) -> int:
    numerator = prompt_tokens * INPUT_RATE + completion_tokens * OUTPUT_RATE
    return numerator // 1_000_000 + (1 if numerator % 1_000_000 else 0)


def check_receipt(signed: SignedReceipt, ticket: DispatchTicket, prompt_tokens: int, completion_tokens: int) -> None:
    receipt = signed.receipt
    assert recover_digest(typed_digest(DOMAINS.receipt, receipt.struct_hash()), signed.signature) == NODE.address
    assert signed.node == NODE.address
    assert (receipt.job_id, receipt.payer, receipt.spender, receipt.model, receipt.request_digest) == (
        ticket.job_id, ticket.payer, ticket.spender, ticket.model, ticket.request_digest,
    )  # fmt: skip
    assert (receipt.prompt_tokens, receipt.completion_tokens) == (prompt_tokens, completion_tokens)
    assert receipt.cost == expected_cost(prompt_tokens, completion_tokens)


def events(text: str) -> list[str]:
    frames = text.split("\n\n")
    assert frames[-1] == ""
    return frames[:-1]


def without_created(frame: str) -> str:
    return re.sub(r'"created":\d+', '"created":0', frame)


def receipt_of(frame: str) -> SignedReceipt:
    head, data = frame.split("\n")
    assert head == f"event: {RECEIPT_EVENT}"
    return SignedReceipt.decode(data.removeprefix("data: "))


def chat(stream: bool = False, **extra: Any) -> dict[str, Any]:
    return {"model": MODEL, "messages": CHAT_MESSAGES, "stream": stream, **extra}


# --- metering ----------------------------------------------------------------------------------


def test_non_stream_returns_vllms_body_unchanged_with_a_receipt(agent: RunningServer, sim: RunningServer) -> None:
    ticket, header = issue()
    response = HTTP.post(agent.base_url + CHAT.path, json=chat(), headers={TICKET_HEADER: header})
    assert response.status_code == 200, response.text
    # The agent names the vLLM request after the job and gives chat the ticket's 256 tokens.
    same_request = {"X-Request-Id": ticket.job_id.hex()}
    direct = HTTP.post(sim.base_url + CHAT.path, json=chat(max_tokens=256), headers=same_request)

    assert without_created(response.text) == without_created(direct.text)  # byte for byte, field order included
    usage = response.json()["usage"]
    assert usage["prompt_tokens"] == CHAT_PROMPT_TOKENS and 20 <= usage["completion_tokens"] <= 60
    check_receipt(SignedReceipt.decode(response.headers[RECEIPT_HEADER]), ticket, CHAT_PROMPT_TOKENS,
                  usage["completion_tokens"])  # fmt: skip


@pytest.mark.parametrize(
    ("endpoint", "body", "ticket_max", "expected"),
    [
        (COMPLETIONS.path, {"prompt": COMPLETION_PROMPT, "max_tokens": 500}, 7, [7]),
        (COMPLETIONS.path, {"prompt": COMPLETION_PROMPT}, 100, [16]),  # vLLM's default survives the clamp
        (CHAT.path, {"messages": CHAT_MESSAGES, "max_completion_tokens": 100, "ignore_eos": True}, 5, [5]),
        (CHAT.path, {"messages": CHAT_MESSAGES, "max_tokens": 3}, 5, [3]),
        (CHAT.path, {"messages": CHAT_MESSAGES, "n": 2, "ignore_eos": True}, 9, [4, 4]),  # the budget is per job
    ],
)
def test_max_tokens_is_clamped_to_the_ticket(
    agent: RunningServer, endpoint: str, body: dict[str, Any], ticket_max: int, expected: list[int]
) -> None:
    ticket, header = issue(max_tokens=ticket_max)
    response = HTTP.post(agent.base_url + endpoint, json={"model": MODEL, **body}, headers={TICKET_HEADER: header})
    assert response.status_code == 200, response.text
    assert [choice["finish_reason"] for choice in response.json()["choices"]] == ["length"] * len(expected)
    usage = response.json()["usage"]
    assert usage["completion_tokens"] == sum(expected)
    check_receipt(SignedReceipt.decode(response.headers[RECEIPT_HEADER]), ticket, usage["prompt_tokens"],
                  sum(expected))  # fmt: skip


def test_a_ticket_beyond_the_context_leaves_vllms_default_limit(agent: RunningServer) -> None:
    _, header = issue(max_tokens=10_000)  # more than the simulator's 512-token context
    body = chat(ignore_eos=True)
    response = HTTP.post(agent.base_url + CHAT.path, json=body, headers={TICKET_HEADER: header})
    assert response.status_code == 200, response.text
    assert response.json()["usage"]["completion_tokens"] == MAX_MODEL_LEN - CHAT_PROMPT_TOKENS


def test_a_binding_ticket_is_cut_to_what_the_prompt_leaves_of_the_context(agent: RunningServer) -> None:
    long_prompt = " ".join(["word"] * 400)  # 401 tokens with BOS: 111 left of the 512-token context
    _, header = issue(max_tokens=200)
    body = {"model": MODEL, "prompt": long_prompt, "max_tokens": None, "ignore_eos": True}
    response = HTTP.post(agent.base_url + COMPLETIONS.path, json=body, headers={TICKET_HEADER: header})
    assert response.status_code == 200, response.text
    assert response.json()["usage"] == {"prompt_tokens": 401, "total_tokens": 512, "completion_tokens": 111,
                                        "prompt_tokens_details": None}  # fmt: skip


def test_stream_relays_every_vllm_chunk_then_the_receipt_then_done(agent: RunningServer, sim: RunningServer) -> None:
    ticket, header = issue()
    with HTTP.stream("POST", agent.base_url + CHAT.path, json=chat(True), headers={TICKET_HEADER: header}) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        relayed = events(response.read().decode())
    forced = {"include_usage": True, "continuous_usage_stats": True}
    direct = events(HTTP.post(sim.base_url + CHAT.path, json=chat(True, max_tokens=256, stream_options=forced),
                               headers={"X-Request-Id": ticket.job_id.hex()}).text)  # fmt: skip

    assert [without_created(f) for f in relayed[:-2]] == [without_created(f) for f in direct[:-1]]
    assert relayed[-1] == direct[-1] == "data: [DONE]"
    final_usage = json.loads(direct[-2].removeprefix("data: "))["usage"]
    assert final_usage["prompt_tokens"] == CHAT_PROMPT_TOKENS
    check_receipt(receipt_of(relayed[-2]), ticket, CHAT_PROMPT_TOKENS, final_usage["completion_tokens"])


def test_stream_chunks_leave_as_vllm_makes_them(slow_agent: RunningServer) -> None:
    _, header = issue()
    arrivals: list[float] = []
    body = chat(True, max_tokens=30, ignore_eos=True)
    with HTTP.stream("POST", slow_agent.base_url + CHAT.path, json=body, headers={TICKET_HEADER: header}) as response:
        for line in response.iter_lines():
            if line.startswith("data: {"):
                arrivals.append(time.monotonic())
    # 30 tokens at 0.02 s: a buffering relay would deliver them all at once at the end.
    assert len(arrivals) >= 31
    assert arrivals[-1] - arrivals[1] >= 0.4


# --- admission ---------------------------------------------------------------------------------


def _tampered() -> str:
    _, header = issue()
    data = json.loads(header)
    signature = bytearray.fromhex(data["signature"][2:])
    signature[10] ^= 0x01
    data["signature"] = "0x" + signature.hex()
    return json.dumps(data)


REJECTIONS: dict[str, tuple[Callable[[], str | None], dict[str, Any], int, str]] = {
    "missing header": (lambda: None, chat(), 401, "invalid_ticket"),
    "malformed header": (lambda: '{"job_id": "0x12"}', chat(), 401, "invalid_ticket"),
    "tampered signature": (_tampered, chat(), 401, "invalid_ticket"),
    "wrong signer": (lambda: issue(signer=STRANGER)[1], chat(), 401, "invalid_ticket"),
    "other node": (lambda: issue(node=OTHER_NODE.address)[1], chat(), 401, "invalid_ticket"),
    "expired": (lambda: issue(expires_in=-60)[1], chat(), 401, "ticket_expired"),
    "model mismatch": (lambda: issue(model="another-model")[1], chat(), 400, "model_mismatch"),
    "no model": (lambda: issue()[1], {"messages": CHAT_MESSAGES}, 400, "model_mismatch"),
}


@pytest.mark.parametrize("case", list(REJECTIONS))
def test_requests_without_a_valid_ticket_never_reach_vllm(agent: RunningServer, sim: RunningServer, case: str) -> None:
    make_header, body, status, code = REJECTIONS[case]
    header = make_header()
    generated = sim.metric("vllm:request_success_total")
    response = HTTP.post(agent.base_url + CHAT.path, json=body, headers={TICKET_HEADER: header} if header else {})
    assert response.status_code == status
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["code"] == code
    assert RECEIPT_HEADER not in response.headers
    assert sim.metric("vllm:request_success_total") == generated


def test_a_ticket_is_accepted_once(agent: RunningServer) -> None:
    _, header = issue()
    first = HTTP.post(agent.base_url + CHAT.path, json=chat(), headers={TICKET_HEADER: header})
    replay = HTTP.post(agent.base_url + CHAT.path, json=chat(), headers={TICKET_HEADER: header})
    assert first.status_code == 200
    assert (replay.status_code, replay.json()["error"]["code"]) == (409, "ticket_replayed")
    rejections = agent.metric("sluice_node_ticket_rejections_total", code="ticket_replayed")
    assert rejections >= 1


# --- vLLM failures -----------------------------------------------------------------------------


@pytest.mark.parametrize("stream", [False, True])
def test_vllm_error_status_passes_through_without_a_receipt(faulty: RunningServer, agent: RunningServer,
                                                             stream: bool) -> None:  # fmt: skip
    HTTP.post(faulty.base_url + "/sim/faults", json={"mode": "error", "status": 503, "count": 1})
    _, header = issue()
    response = HTTP.post(agent.base_url + CHAT.path, json=chat(stream), headers={TICKET_HEADER: header})
    assert response.status_code == 503
    assert response.json() == {
        "error": {"message": "Service Unavailable", "type": "ServiceUnavailableError", "param": None, "code": 503}
    }
    assert RECEIPT_HEADER not in response.headers and RECEIPT_EVENT not in response.text


def test_vllm_dropping_mid_stream_ends_with_an_error_and_a_receipt_for_what_was_made(
    faulty: RunningServer, agent: RunningServer
) -> None:
    HTTP.post(faulty.base_url + "/sim/faults", json={"mode": "drop_mid_stream", "after_tokens": 3, "count": 1})
    ticket, header = issue()
    with HTTP.stream("POST", agent.base_url + CHAT.path, json=chat(True), headers={TICKET_HEADER: header}) as response:
        assert response.status_code == 200
        frames = events(response.read().decode())

    *chunks, error, receipt, done = frames
    assert len(chunks) == 1 + 3  # the role chunk and three tokens
    assert json.loads(error.removeprefix("data: "))["error"]["code"] == "upstream_dropped"
    check_receipt(receipt_of(receipt), ticket, CHAT_PROMPT_TOKENS, 3)
    assert done == "data: [DONE]"


def test_service_hanging_up_mid_stream_aborts_vllm_and_posts_the_receipt(
    slow_agent: RunningServer, slow_sim: RunningServer, recorder: FakeService
) -> None:
    aborted = slow_sim.metric("vllm:request_success_total", finished_reason="abort")
    ticket, header = issue()
    body = chat(True, max_tokens=50, ignore_eos=True)
    with HTTP.stream("POST", slow_agent.base_url + CHAT.path, json=body, headers={TICKET_HEADER: header}) as response:
        lines = response.iter_lines()
        received = 0
        while received < 4:
            received += next(lines).startswith("data: {")

    posted: SignedReceipt = wait_until(lambda: recorder.receipt_for(ticket.job_id))
    assert 3 <= posted.receipt.completion_tokens < 50
    check_receipt(posted, ticket, CHAT_PROMPT_TOKENS, posted.receipt.completion_tokens)
    wait_until(lambda: slow_sim.metric("vllm:request_success_total", finished_reason="abort") == aborted + 1)


def test_service_hanging_up_before_a_full_answer_aborts_vllm_without_a_receipt(
    slow_agent: RunningServer, slow_sim: RunningServer, recorder: FakeService
) -> None:
    aborted = slow_sim.metric("vllm:request_success_total", finished_reason="abort")
    ticket, header = issue()
    with pytest.raises(httpx.ReadTimeout):  # about 1 s of generation; the service gives up after 0.2 s
        HTTP.post(slow_agent.base_url + CHAT.path, json=chat(max_tokens=50, ignore_eos=True),
                  headers={TICKET_HEADER: header}, timeout=0.2)  # fmt: skip
    wait_until(lambda: slow_sim.metric("vllm:request_success_total", finished_reason="abort") == aborted + 1)
    assert recorder.receipt_for(ticket.job_id) is None  # nothing was delivered, so nothing is billed


# --- registration, health, metrics -------------------------------------------------------------


def test_heartbeats_are_signed_and_carry_vllms_queue(slow_agent: RunningServer, recorder: FakeService) -> None:
    bodies = [chat(True, max_tokens=40, ignore_eos=True), chat(True, max_tokens=5)]
    with (
        HTTP.stream("POST", slow_agent.base_url + CHAT.path, json=bodies[0], headers={TICKET_HEADER: issue()[1]}),
        HTTP.stream("POST", slow_agent.base_url + CHAT.path, json=bodies[1], headers={TICKET_HEADER: issue()[1]}),
    ):
        beat = wait_until(lambda: next((hb for hb in reversed(recorder.heartbeats)
                                        if hb["url"] == slow_agent.base_url and hb["waiting"] == 1), None))  # fmt: skip

    heartbeat = NodeHeartbeat.model_validate(beat)
    signer = Account.recover_message(encode_defunct(text=heartbeat.signing_text()), signature=heartbeat.signature)
    assert signer == NODE.address == heartbeat.node
    assert (heartbeat.models, heartbeat.tier, heartbeat.region, heartbeat.capacity) == ([MODEL], "edge", "eu-west", 4)
    assert (heartbeat.running, heartbeat.waiting) == (1, 1)  # the simulator runs one sequence at a time
    assert abs(heartbeat.timestamp - time.time()) < 5


def test_health_and_metrics(agent: RunningServer) -> None:
    assert HTTP.get(agent.base_url + "/health").json() == {
        "status": "ok", "node": NODE.address, "vllm": "ok", "dispatch": "ok",
    }  # fmt: skip
    before = agent.metric("sluice_node_ticket_rejections_total", code="ticket_expired")
    HTTP.post(agent.base_url + CHAT.path, json=chat(), headers={TICKET_HEADER: issue(expires_in=-60)[1]})
    assert agent.metric("sluice_node_ticket_rejections_total", code="ticket_expired") == before + 1
    assert agent.metric("sluice_node_requests_total", endpoint="chat", status="200") >= 1
    assert agent.metric("sluice_node_model_tokens_total", kind="completion") > 0
    assert agent.metric("sluice_node_forward_latency_seconds_count", endpoint="chat", stream="false") >= 1


def test_standalone_agent_reports_vllm_down_and_answers_502() -> None:
    dead_vllm = f"http://127.0.0.1:{free_port()}"
    server = _agent(dead_vllm, None, chain_id=CHAIN_ID, settlement=SETTLEMENT,
                    dispatch_signer=DISPATCHER.address).start()  # fmt: skip
    try:
        health = HTTP.get(server.base_url + "/health")
        assert (health.status_code, health.json()["vllm"]) == (503, "down")
        response = HTTP.post(server.base_url + CHAT.path, json=chat(), headers={TICKET_HEADER: issue()[1]})
        assert (response.status_code, response.json()["error"]["code"]) == (502, "upstream_error")
    finally:
        server.stop()


@pytest.mark.parametrize("stream", [False, True])
def test_vllm_not_answering_in_time_is_a_504(faulty: RunningServer, stream: bool) -> None:
    server = _agent(faulty.base_url, None, chain_id=CHAIN_ID, settlement=SETTLEMENT,
                    dispatch_signer=DISPATCHER.address, vllm_timeout=0.3).start()  # fmt: skip
    try:
        HTTP.post(faulty.base_url + "/sim/faults", json={"mode": "timeout", "count": 1})
        response = HTTP.post(server.base_url + CHAT.path, json=chat(stream), headers={TICKET_HEADER: issue()[1]})
        assert (response.status_code, response.json()["error"]["code"]) == (504, "upstream_timeout")
    finally:
        server.stop()


def test_agent_starts_without_the_service_and_refuses_until_it_answers(sim: RunningServer) -> None:
    started = time.monotonic()
    server = _agent(sim.base_url, f"http://127.0.0.1:{free_port()}", dispatch_info_wait=0.2).start()
    try:
        assert time.monotonic() - started < 5
        assert HTTP.get(server.base_url + "/health").json()["dispatch"] == "pending"
        response = HTTP.post(server.base_url + CHAT.path, json=chat(), headers={TICKET_HEADER: issue()[1]})
        assert (response.status_code, response.json()["error"]["code"]) == (503, "node_not_ready")
    finally:
        server.stop()


# --- units -------------------------------------------------------------------------------------


def test_output_bounds_keep_vllms_reading_of_the_limit_fields() -> None:
    def bounds(endpoint: Endpoint, budget: int, **body: Any) -> tuple[int | None, int]:
        found = output_bounds(body, endpoint, budget)
        return found.requested, found.per_choice

    assert bounds(CHAT, 50) == (None, 50)
    assert bounds(CHAT, 50, max_completion_tokens=0, max_tokens=None) == (None, 50)  # 0 or None: no limit
    assert bounds(CHAT, 50, max_completion_tokens=80, max_tokens=10) == (80, 50)
    assert bounds(COMPLETIONS, 50, prompt="a") == (16, 50)  # vLLM's default for completions
    assert bounds(COMPLETIONS, 50, prompt=[1, 2, 3], max_tokens=None) == (None, 50)
    assert bounds(COMPLETIONS, 50, prompt=["a", "b"], n=2) == (16, 12)  # four choices share the budget
    assert bounds(CHAT, 2**300) == (None, 2**31 - 1)
    for bad in ({"max_tokens": "9999"}, {"max_tokens": 10.0}, {"max_tokens": True}, {"n": "2"}, {"n": 60}):
        with pytest.raises(InvalidRequestBody):
            output_bounds(dict(bad), CHAT, 50)

    body: dict[str, Any] = {"max_completion_tokens": 0, "max_tokens": None}
    write_output_limit(body, CHAT, 7)
    assert body == {"max_completion_tokens": 7, "max_tokens": None}
    body = {"prompt": "a"}
    write_output_limit(body, COMPLETIONS, 7)
    assert body == {"prompt": "a", "max_tokens": 7}


def test_spent_tickets_forget_only_what_has_expired() -> None:
    spent = SpentTickets(grace_seconds=5)
    assert spent.spend(b"a", expires=100, now=90)
    assert not spent.spend(b"a", expires=100, now=104)
    assert spent.spend(b"b", expires=200, now=106)  # prunes "a": its ticket is refused as expired by now
    assert len(spent) == 1


def test_config_requires_a_service_or_the_dispatch_settings() -> None:
    key = "0x" + "a1" * 32
    with pytest.raises(ValueError, match="standalone"):
        AgentConfig.model_validate({"node_key": key})
    with pytest.raises(ValueError, match="public_url"):
        AgentConfig.model_validate({"node_key": key, "service_url": "http://service"})
    with pytest.raises(ValueError, match="32 bytes"):
        AgentConfig.model_validate({"node_key": "0x1234", "service_url": "http://s", "public_url": "http://a"})


def test_launch_vllm_names_the_extra_to_install() -> None:
    with pytest.raises(VllmNotInstalled, match=re.escape("pip install 'sluice[vllm]'")):
        launch_vllm("meta-llama/Llama-3.1-8B-Instruct", free_port())
