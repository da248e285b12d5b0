"""Behaviour of NodeAgent in front of the vLLM simulator: metering, vLLM's failures, heartbeats, health."""

from __future__ import annotations

import asyncio
import http.client
import json
import time
from collections.abc import Awaitable, Callable, Iterator

import httpx
import pytest
from eth_account import Account
from eth_account.messages import encode_defunct

from inference_node.agent.bounds import CHAT
from inference_node.agent.serving import _unless_disconnected
from inference_node.protocol import (
    PROMPT_TOKENS_PATH,
    RECEIPT_EVENT,
    RECEIPT_HEADER,
    TICKET_HEADER,
    NodeHeartbeat,
    SignedReceipt,
)
from ledger.protocol.eip712 import DispatchTicket
from ledger.stack.probes import free_port
from tests.inference_node.agent.support import (
    CHAIN_ID,
    CHAT_PROMPT_TOKENS,
    DISPATCHER,
    HTTP,
    MODEL,
    NODE,
    SETTLEMENT,
    FakeService,
    RunningServer,
    agent_server,
    assert_aborted,
    chat,
    check_receipt,
    issue,
    wait_until,
    without_created,
)


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


def test_a_non_stream_answer_carries_vllms_content_type_and_length(agent: RunningServer) -> None:
    response = HTTP.post(agent.base_url + CHAT.path, json=chat(), headers={TICKET_HEADER: issue()[1]})
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert response.headers["content-length"] == str(len(response.content))


def test_other_methods_on_a_generation_route_are_refused_in_the_envelope(agent: RunningServer) -> None:
    response = HTTP.get(agent.base_url + CHAT.path)
    assert response.status_code == 405
    assert response.json() == {
        "error": {"message": "Method Not Allowed", "type": "invalid_request_error", "param": None,
                  "code": "method_not_allowed"}
    }  # fmt: skip


def _receive_hanging_up_after(seconds: float) -> tuple[Callable[[], Awaitable[dict[str, object]]], list[float]]:
    """An ASGI `receive` whose client hangs up after `seconds` (and the times it was called)."""
    calls: list[float] = []

    async def receive() -> dict[str, object]:
        calls.append(time.monotonic())
        await asyncio.sleep(seconds)
        return {"type": "http.disconnect"}

    return receive, calls


@pytest.mark.parametrize(("hang_up_after", "grace"), [(0.0, 0.05), (0.05, 0.0)])
def test_a_hang_up_cancels_the_work_and_answers_false(hang_up_after: float, grace: float) -> None:
    cancelled: list[float] = []

    async def work() -> str:
        try:
            await asyncio.sleep(5)
        except asyncio.CancelledError:
            cancelled.append(time.monotonic())
            raise
        return "never"

    async def run() -> tuple[tuple[bool, str | None], float, list[float]]:
        receive, calls = _receive_hanging_up_after(hang_up_after)
        started = time.monotonic()
        outcome = await _unless_disconnected(receive, work(), grace)
        await asyncio.sleep(0.02)  # still this task's own: no cancel left over for it
        return outcome, started, calls

    outcome, started, calls = asyncio.run(run())
    assert outcome == (False, None)
    assert len(calls) == 1 and calls[0] - started >= grace  # watched for only once the grace was over
    assert len(cancelled) == 1 and grace + hang_up_after <= cancelled[0] - started < 1


def test_work_that_finishes_within_the_grace_leaves_no_watcher_and_no_cancel_behind() -> None:
    async def run() -> tuple[tuple[bool, str | None], int, list[float]]:
        receive, calls = _receive_hanging_up_after(0)

        async def work() -> str:
            await asyncio.sleep(0.01)
            return "answer"

        outcome = await _unless_disconnected(receive, work(), 0.05)
        await asyncio.sleep(0.1)  # past the grace: nothing starts watching, so nothing cancels this task
        task = asyncio.current_task()
        assert task is not None
        return outcome, task.cancelling(), calls

    assert asyncio.run(run()) == ((True, "answer"), 0, [])


def test_a_cancel_from_outside_goes_on_through_a_hang_up() -> None:
    async def run() -> None:
        receive, _ = _receive_hanging_up_after(0.01)
        await _unless_disconnected(receive, asyncio.sleep(5), 0)

    async def main() -> bool:
        task = asyncio.create_task(run())
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        task.cancel()  # a shutdown, before the hang-up is seen
        try:
            await task
        except asyncio.CancelledError:
            return True
        return False

    assert asyncio.run(main()) is True


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


def test_service_hanging_up_before_a_full_answer_aborts_vllm_without_a_receipt(
    slow_agent: RunningServer, slow_sim: RunningServer, recorder: FakeService
) -> None:
    generated = slow_sim.metric("vllm:generation_tokens_total")
    ticket, header = issue()
    with pytest.raises(httpx.ReadTimeout):  # about 1 s of generation; the service gives up after 0.2 s
        HTTP.post(slow_agent.base_url + CHAT.path, json=chat(max_tokens=50, ignore_eos=True),
                  headers={TICKET_HEADER: header}, timeout=0.2)  # fmt: skip
    assert_aborted(slow_sim.base_url, generated, of=50)
    assert recorder.receipt_for(ticket.job_id) is None  # nothing was delivered, so nothing is billed


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
    server = agent_server(dead_vllm, None, chain_id=CHAIN_ID, settlement=SETTLEMENT,
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
    server = agent_server(faulty.base_url, None, chain_id=CHAIN_ID, settlement=SETTLEMENT,
                    dispatch_signer=DISPATCHER.address, vllm_timeout=0.3).start()  # fmt: skip
    try:
        HTTP.post(faulty.base_url + "/sim/faults", json={"mode": "timeout", "count": 1})
        response = HTTP.post(server.base_url + CHAT.path, json=chat(stream), headers={TICKET_HEADER: issue()[1]})
        assert (response.status_code, response.json()["error"]["code"]) == (504, "upstream_timeout")
    finally:
        server.stop()


def test_agent_starts_without_the_service_and_refuses_until_it_answers(sim: RunningServer) -> None:
    started = time.monotonic()
    server = agent_server(sim.base_url, f"http://127.0.0.1:{free_port()}", dispatch_info_wait=0.2).start()
    try:
        assert time.monotonic() - started < 5
        assert HTTP.get(server.base_url + "/health").json()["dispatch"] == "pending"
        response = HTTP.post(server.base_url + CHAT.path, json=chat(), headers={TICKET_HEADER: issue()[1]})
        assert (response.status_code, response.json()["error"]["code"]) == (503, "node_not_ready")
    finally:
        server.stop()


BODY_LIMIT = 4096


@pytest.fixture(scope="module")
def small_body_agent(sim: RunningServer, service_server: tuple[FakeService, str]) -> Iterator[RunningServer]:
    server = agent_server(sim.base_url, service_server[1], max_body_bytes=BODY_LIMIT).start()
    yield server
    server.stop()


def _chat_body_of(size: int) -> bytes:
    """A chat request of exactly `size` bytes: its JSON, then whitespace (which JSON allows after a value)."""
    body = json.dumps(chat()).encode()
    assert len(body) <= size
    return body + b" " * (size - len(body))


def _taken_by_vllm(sim: RunningServer, ticket: DispatchTicket) -> int:
    """How many generation requests the simulator took for this ticket's job (the agent names them after it)."""
    taken: list[str] = HTTP.get(sim.base_url + "/sim/requests").json()["request_ids"]
    return taken.count(f"chatcmpl-{ticket.job_id.hex()}")


def _refused_too_large(agent: RunningServer) -> float:
    return agent.metric("sluice_node_requests_total", endpoint="chat", status="413")


def _head_only(agent: RunningServer, path: str, headers: dict[str, str]) -> tuple[int, bytes, str | None]:
    """POST only the head of a request declaring a 1 MiB body, which never follows: (status, body, receipt).
    An agent that waited for the declared megabyte would time this out."""
    host, port = agent.base_url.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=5)
    try:
        connection.putrequest("POST", path)
        for name, value in {**headers, "Content-Type": "application/json", "Content-Length": str(1 << 20)}.items():
            connection.putheader(name, value)
        connection.endheaders()
        response = connection.getresponse()
        return response.status, response.read(), response.getheader(RECEIPT_HEADER)
    finally:
        connection.close()


def test_a_body_declared_over_the_limit_is_refused_unread_and_leaves_its_ticket_unspent(
    small_body_agent: RunningServer, sim: RunningServer
) -> None:
    ticket, header = issue()
    refused = _refused_too_large(small_body_agent)
    status, content, receipt = _head_only(small_body_agent, CHAT.path, {TICKET_HEADER: header})
    assert (status, receipt) == (413, None)
    assert json.loads(content) == {"error": {
        "message": "the request body of 1048576 bytes is over this node's 4096-byte limit; send a smaller request, "
                   "or raise the agent's --max-body-bytes",
        "type": "invalid_request_error", "param": None, "code": "body_too_large",
    }}  # fmt: skip
    assert _taken_by_vllm(sim, ticket) == 0
    assert _refused_too_large(small_body_agent) == refused + 1

    # The refusal spent nothing: the same ticket runs once with a body within the limit, and only once.
    accepted = HTTP.post(small_body_agent.base_url + CHAT.path, json=chat(), headers={TICKET_HEADER: header})
    assert accepted.status_code == 200, accepted.text
    check_receipt(SignedReceipt.decode(accepted.headers[RECEIPT_HEADER]), ticket, CHAT_PROMPT_TOKENS,
                  accepted.json()["usage"]["completion_tokens"])  # fmt: skip
    replay = HTTP.post(small_body_agent.base_url + CHAT.path, json=chat(), headers={TICKET_HEADER: header})
    assert (replay.status_code, replay.json()["error"]["code"]) == (409, "ticket_replayed")
    assert _taken_by_vllm(sim, ticket) == 1


def test_a_chunked_body_growing_past_the_limit_is_refused(small_body_agent: RunningServer, sim: RunningServer) -> None:
    ticket, header = issue()
    refused = _refused_too_large(small_body_agent)
    body = _chat_body_of(3 * 2048)
    chunks = iter([body[:2048], body[2048:4096], body[4096:]])  # an iterator: sent chunked, with no Content-Length
    response = HTTP.post(small_body_agent.base_url + CHAT.path, content=chunks,
                         headers={TICKET_HEADER: header, "Content-Type": "application/json"})  # fmt: skip
    assert response.request.headers.get("Transfer-Encoding") == "chunked"
    assert "Content-Length" not in response.request.headers
    assert response.status_code == 413
    assert response.json() == {"error": {
        "message": "the request body is over this node's 4096-byte limit; send a smaller request, or raise the "
                   "agent's --max-body-bytes",
        "type": "invalid_request_error", "param": None, "code": "body_too_large",
    }}  # fmt: skip
    assert RECEIPT_HEADER not in response.headers
    assert _taken_by_vllm(sim, ticket) == 0
    assert _refused_too_large(small_body_agent) == refused + 1


@pytest.mark.parametrize("chunked", [False, True])
def test_a_body_exactly_at_the_limit_is_served(small_body_agent: RunningServer, sim: RunningServer,
                                               chunked: bool) -> None:  # fmt: skip
    ticket, header = issue()
    body = _chat_body_of(BODY_LIMIT)
    assert len(body) == 4096
    content: bytes | Iterator[bytes] = iter([body[:2048], body[2048:]]) if chunked else body
    response = HTTP.post(small_body_agent.base_url + CHAT.path, content=content,
                         headers={TICKET_HEADER: header, "Content-Type": "application/json"})  # fmt: skip
    assert response.status_code == 200, response.text
    check_receipt(SignedReceipt.decode(response.headers[RECEIPT_HEADER]), ticket, CHAT_PROMPT_TOKENS,
                  response.json()["usage"]["completion_tokens"])  # fmt: skip
    assert _taken_by_vllm(sim, ticket) == 1


def test_a_prompt_count_over_the_body_limit_is_refused_unread(small_body_agent: RunningServer) -> None:
    """The prompt-count route takes no ticket: anyone may call it, so its body is bounded too."""
    status, content, receipt = _head_only(small_body_agent, PROMPT_TOKENS_PATH + CHAT.path, {})
    assert (status, receipt) == (413, None)
    assert json.loads(content)["error"] == {
        "message": "the request body of 1048576 bytes is over this node's 4096-byte limit; send a smaller request, "
                   "or raise the agent's --max-body-bytes",
        "type": "invalid_request_error", "param": None, "code": "body_too_large",
    }  # fmt: skip
    counted = HTTP.post(small_body_agent.base_url + PROMPT_TOKENS_PATH + CHAT.path, content=_chat_body_of(BODY_LIMIT),
                        headers={"Content-Type": "application/json"})  # fmt: skip
    assert counted.status_code == 200, counted.text
    assert counted.json() == {"prompt_tokens": CHAT_PROMPT_TOKENS, "exact": True, "reason": None}
