"""Stream relay: every vLLM chunk as it comes, then the receipt, even when either side hangs up."""

from __future__ import annotations

import json
import time

from inference_node.agent.bounds import CHAT
from inference_node.protocol import TICKET_HEADER, SignedReceipt
from tests.inference_node.agent.support import (
    CHAT_PROMPT_TOKENS,
    HTTP,
    FakeService,
    RunningServer,
    assert_aborted,
    chat,
    check_receipt,
    events,
    issue,
    receipt_of,
    wait_until,
    without_created,
)


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
    generated = slow_sim.metric("vllm:generation_tokens_total")
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
    made = assert_aborted(slow_sim.base_url, generated, of=50)
    assert posted.receipt.completion_tokens <= made  # the receipt covers what the service was sent
