"""The agent tests' servers and helpers: a simulator standing in for vLLM, the agent, a stand-in
for the redemption service's internal API, and ticket and receipt helpers.

Every server is real: each runs under uvicorn on a free loopback port and is started with a
deadline-bound poll. Tickets are signed here with a dispatch key the stand-in service announces;
receipts and heartbeats are verified against the node's key.
"""

from __future__ import annotations

import re
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

import httpx
import uvicorn
from eth_account import Account
from eth_hash.auto import keccak
from fastapi import FastAPI, Request
from prometheus_client.parser import text_string_to_metric_families

from inference_node.agent.api_server import build_agent_server
from inference_node.agent.config import AgentConfig
from inference_node.protocol import (
    DISPATCH_INFO_PATH,
    HEARTBEAT_PATH,
    RECEIPT_EVENT,
    RECEIPTS_PATH,
    DispatchInfo,
    SignedReceipt,
    SignedTicket,
)
from inference_node.sim.api_server import build_simulator_server
from inference_node.sim.config import SimulatorConfig
from ledger.protocol.eip712 import DispatchTicket, Domains, typed_digest
from ledger.protocol.secp256k1 import recover_digest, sign_digest
from tests.support import polling

MODEL = "sim-model"


CHAT_MESSAGES = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "Say hello, please."},
]


CHAT_PROMPT_TOKENS = 15  # hand-tokenized with the simulator's template, see tests/inference_node/sim/support.py


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


def metric(base_url: str, name: str, **labels: str) -> float:
    """The sum of the samples `name` with these labels on the server's /metrics."""
    exposition = HTTP.get(base_url + "/metrics").text
    return sum(
        sample.value
        for family in text_string_to_metric_families(exposition)
        for sample in family.samples
        if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items())
    )


def assert_aborted(vllm_url: str, generated_before: float, *, of: int) -> int:
    """Wait until vLLM runs nothing, then check its request stopped short of the `of` tokens asked: how many it made.

    vLLM 0.32 counts a request aborted by a hang-up as finished by no reason (not even "abort"); what shows
    the abort is that the request leaves the engine with fewer tokens made than it would have run to.
    """
    def idle() -> bool:
        return metric(vllm_url, "vllm:num_requests_running") == metric(vllm_url, "vllm:num_requests_waiting") == 0

    wait_until(idle, 30.0)
    made = round(metric(vllm_url, "vllm:generation_tokens_total") - generated_before)
    assert 0 <= made < of, f"{made} tokens of {of}: the request was not aborted"
    return made


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
        return metric(self.base_url, name, **labels)


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


def uvicorn_server(app: FastAPI, base_url: str) -> uvicorn.Server:
    return uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=_port(base_url), log_level="warning"))


def simulator_server(**overrides: Any) -> RunningServer:
    config = SimulatorConfig(served_model_names=[MODEL], max_model_len=MAX_MODEL_LEN, seed=7, natural_min_tokens=20,
                             natural_max_tokens=60, **overrides)  # fmt: skip
    return RunningServer(lambda url: build_simulator_server(config, port=_port(url), log_level="warning"))


def agent_server(vllm_url: str, service_url: str | None, **overrides: Any) -> RunningServer:
    def build(url: str) -> uvicorn.Server:
        config = AgentConfig.model_validate({
            "vllm_url": vllm_url, "node_key": "0x" + "a1" * 32, "service_url": service_url,
            "public_url": url if service_url else None, "tier": "edge", "region": "eu-west", "capacity": 4,
            "heartbeat_interval": 0.05, **overrides,
        })  # fmt: skip
        return build_agent_server(config, port=_port(url), log_level="warning")

    return RunningServer(build)


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


def wait_until(check: Callable[[], Any], timeout: float = 20.0, what: str = "the condition") -> Any:
    """`tests.support.polling.wait_until` on a steady 10 ms beat: engine states here last under a second."""
    return polling.wait_until(check, timeout, what, max_delay=0.01)
