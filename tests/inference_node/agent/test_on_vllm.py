"""The agent in front of a real vLLM 0.32 (the `vllm` tier): metering, ids, clamping, hang-ups, errors, heartbeats.

The server is the session's one CPU vLLM on the tiny model (`tests.support.vllm`); its token counts are
exact and known (the recordings in tests/inference_node/recorded/vllm-0.32): the chat below is 23 prompt
tokens, "The quick brown fox" 13, "Hello world" 3, and the model never ends on its own, so every choice
runs to its limit.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import ExitStack
from typing import Any

import httpx
import pytest

from inference_node.agent.bounds import CHAT, COMPLETIONS
from inference_node.protocol import PROMPT_TOKENS_PATH, RECEIPT_HEADER, TICKET_HEADER, NodeHeartbeat, SignedReceipt
from inference_node.sim.bpe import ByteLevelBpeTokenizer
from tests.inference_node.agent.support import (
    CHAT_MESSAGES,
    COMPLETION_PROMPT,
    HTTP,
    FakeService,
    RunningServer,
    agent_server,
    assert_aborted,
    check_receipt,
    events,
    issue,
    metric,
    receipt_of,
    wait_until,
)
from tests.support.vllm import MAX_MODEL_LEN, MAX_NUM_SEQS, TINY_MODEL, RealVllm

pytestmark = pytest.mark.vllm

RECORDED = "tests/inference_node/recorded/vllm-0.32"
CHAT_PROMPT_TOKENS = 23
COMPLETION_PROMPT_TOKENS = 13
SECOND_PROMPT, SECOND_PROMPT_TOKENS = "Hello world", 3
NEAR_FULL_PROMPT, NEAR_FULL_PROMPT_TOKENS = " ".join(["hello"] * 2000), 2002
OVER_FULL_PROMPT = " ".join(["hello"] * 2100)
SAMPLED = {"temperature": 1.0, "seed": 7}


@pytest.fixture(scope="module")
def vllm_agent(real_vllm: RealVllm, service_server: tuple[FakeService, str]) -> Iterator[RunningServer]:
    server = agent_server(real_vllm.base_url, service_server[1], capacity=MAX_NUM_SEQS).start()
    yield server
    server.stop()


def chat(**extra: Any) -> dict[str, Any]:
    return {"model": TINY_MODEL, "messages": CHAT_MESSAGES, "temperature": 0, **extra}


def completion(**extra: Any) -> dict[str, Any]:
    return {"model": TINY_MODEL, "prompt": COMPLETION_PROMPT, "temperature": 0, **extra}


def post(agent: RunningServer, path: str, body: dict[str, Any], max_tokens: int = 256) -> tuple[Any, httpx.Response]:
    ticket, header = issue(model=TINY_MODEL, max_tokens=max_tokens)
    response = HTTP.post(agent.base_url + path, json=body, headers={TICKET_HEADER: header}, timeout=120)
    return ticket, response


def stream(agent: RunningServer, path: str, body: dict[str, Any], max_tokens: int = 256) -> tuple[Any, list[str]]:
    ticket, header = issue(model=TINY_MODEL, max_tokens=max_tokens)
    with HTTP.stream("POST", agent.base_url + path, json={**body, "stream": True}, headers={TICKET_HEADER: header},
                     timeout=120) as response:  # fmt: skip
        assert response.status_code == 200
        return ticket, events(response.read().decode())


def chunks(frames: list[str]) -> list[dict[str, Any]]:
    return [json.loads(frame.removeprefix("data: ")) for frame in frames if frame.startswith("data: {")]


# -- receipts are vLLM's own usage ------------------------------------------------------------


def test_a_non_stream_receipt_is_vllms_usage_and_the_job_names_the_request(vllm_agent: RunningServer) -> None:
    ticket, response = post(vllm_agent, CHAT.path, chat(max_tokens=8))
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["id"] == f"chatcmpl-{ticket.job_id.hex()}"  # vLLM took the job id as its request id
    assert body["usage"] == {"prompt_tokens": CHAT_PROMPT_TOKENS, "total_tokens": CHAT_PROMPT_TOKENS + 8,
                             "completion_tokens": 8, "prompt_tokens_details": None,
                             "completion_tokens_details": None}  # fmt: skip
    check_receipt(SignedReceipt.decode(response.headers[RECEIPT_HEADER]), ticket, CHAT_PROMPT_TOKENS, 8)


def test_a_stream_is_relayed_whole_and_receipted_with_vllms_final_usage(vllm_agent: RunningServer) -> None:
    ticket, frames = stream(vllm_agent, CHAT.path, chat(max_tokens=8))
    *relayed, receipt, done = frames
    data = chunks(relayed)
    assert {chunk["id"] for chunk in data} == {f"chatcmpl-{ticket.job_id.hex()}"}
    assert data[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert [chunk["usage"]["completion_tokens"] for chunk in data[:-1]] == list(range(9))  # continuous usage
    assert data[-1]["choices"] == []
    assert data[-1]["usage"] == {"prompt_tokens": CHAT_PROMPT_TOKENS, "total_tokens": CHAT_PROMPT_TOKENS + 8,
                                 "completion_tokens": 8}  # fmt: skip
    check_receipt(receipt_of(receipt), ticket, CHAT_PROMPT_TOKENS, 8)
    assert done == "data: [DONE]"


def test_n_choices_share_the_ticket_and_the_prompt_counts_once(vllm_agent: RunningServer) -> None:
    ticket, response = post(vllm_agent, CHAT.path, chat(n=2, **SAMPLED), max_tokens=10)
    assert response.status_code == 200, response.text
    assert [choice["finish_reason"] for choice in response.json()["choices"]] == ["length", "length"]
    assert response.json()["usage"]["completion_tokens"] == 10  # 5 tokens each
    check_receipt(SignedReceipt.decode(response.headers[RECEIPT_HEADER]), ticket, CHAT_PROMPT_TOKENS, 10)

    ticket, frames = stream(vllm_agent, CHAT.path, chat(n=2, **SAMPLED), max_tokens=10)
    check_receipt(receipt_of(frames[-2]), ticket, CHAT_PROMPT_TOKENS, 10)


@pytest.mark.parametrize("streamed", [False, True])
def test_multi_prompt_completions_are_receipted_per_prompt_and_choice(vllm_agent: RunningServer,
                                                                       streamed: bool) -> None:  # fmt: skip
    body = completion(prompt=[COMPLETION_PROMPT, SECOND_PROMPT], n=2, **SAMPLED)
    prompt_tokens = COMPLETION_PROMPT_TOKENS + SECOND_PROMPT_TOKENS  # each prompt once, whatever n
    if streamed:
        ticket, frames = stream(vllm_agent, COMPLETIONS.path, body, max_tokens=16)
        indexes = {chunk["choices"][0]["index"] for chunk in chunks(frames[:-2]) if chunk["choices"]}
        assert indexes == {0, 1, 2, 3}  # prompt x n + sample
        check_receipt(receipt_of(frames[-2]), ticket, prompt_tokens, 16)
    else:
        ticket, response = post(vllm_agent, COMPLETIONS.path, body, max_tokens=16)
        assert response.status_code == 200, response.text
        assert len(response.json()["choices"]) == 4
        check_receipt(SignedReceipt.decode(response.headers[RECEIPT_HEADER]), ticket, prompt_tokens, 16)


# -- the ticket bounds what vLLM may generate ---------------------------------------------------


def test_the_ticket_clamps_the_clients_limit(vllm_agent: RunningServer) -> None:
    ticket, response = post(vllm_agent, CHAT.path, chat(max_tokens=100, min_tokens=50), max_tokens=5)
    assert response.status_code == 200, response.text  # min_tokens was lowered with the limit, or vLLM refuses
    assert response.json()["usage"]["completion_tokens"] == 5
    check_receipt(SignedReceipt.decode(response.headers[RECEIPT_HEADER]), ticket, CHAT_PROMPT_TOKENS, 5)


@pytest.mark.parametrize(("limit", "made"), [(None, 16), (100, 46), (4096, 46)])
def test_a_limit_past_what_the_prompt_leaves_is_cut_to_the_context(vllm_agent: RunningServer, limit: int | None,
                                                                    made: int) -> None:  # fmt: skip
    """A limit that only overflows with the 2002-token prompt, and one over the 2048-token context itself (what
    the service writes when a chat gives none), get the 46 tokens the prompt leaves; null is vLLM's 16."""
    body = completion(prompt=NEAR_FULL_PROMPT, max_tokens=limit)
    ticket, response = post(vllm_agent, COMPLETIONS.path, body, max_tokens=5000)
    assert response.status_code == 200, response.text
    assert response.json()["usage"]["completion_tokens"] == made
    check_receipt(SignedReceipt.decode(response.headers[RECEIPT_HEADER]), ticket, NEAR_FULL_PROMPT_TOKENS, made)


def test_a_binding_ticket_without_a_client_limit_is_also_cut_by_vllm(vllm_agent: RunningServer) -> None:
    ticket, response = post(vllm_agent, CHAT.path, {**chat(), "messages": [{"role": "user", "content":
                            NEAR_FULL_PROMPT}]}, max_tokens=200)  # fmt: skip
    assert response.status_code == 200, response.text
    assert response.json()["usage"]["completion_tokens"] == MAX_MODEL_LEN - 2008  # the chat form is 2008 tokens
    check_receipt(SignedReceipt.decode(response.headers[RECEIPT_HEADER]), ticket, 2008, MAX_MODEL_LEN - 2008)


# -- hang-ups, errors, heartbeats ---------------------------------------------------------------


def test_the_service_hanging_up_mid_stream_aborts_vllm_and_the_receipt_covers_what_was_made(
    vllm_agent: RunningServer, real_vllm: RealVllm, recorder: FakeService
) -> None:
    generated = metric(real_vllm.base_url, "vllm:generation_tokens_total")
    ticket, header = issue(model=TINY_MODEL, max_tokens=1000)
    body = {**chat(max_tokens=1000), "stream": True}
    with HTTP.stream("POST", vllm_agent.base_url + CHAT.path, json=body, headers={TICKET_HEADER: header},
                     timeout=120) as response:  # fmt: skip
        lines = response.iter_lines()
        received = 0
        while received < 4:
            received += next(lines).startswith("data: {")
    posted: SignedReceipt = wait_until(lambda: recorder.receipt_for(ticket.job_id), 30.0)
    made = assert_aborted(real_vllm.base_url, generated, of=1000)
    assert 3 <= posted.receipt.completion_tokens <= made
    check_receipt(posted, ticket, CHAT_PROMPT_TOKENS, posted.receipt.completion_tokens)


def test_the_service_hanging_up_before_a_full_answer_aborts_vllm_unbilled(
    vllm_agent: RunningServer, real_vllm: RealVllm, recorder: FakeService
) -> None:
    generated = metric(real_vllm.base_url, "vllm:generation_tokens_total")
    ticket, header = issue(model=TINY_MODEL, max_tokens=1000)
    with pytest.raises(httpx.ReadTimeout):  # 1000 tokens take vLLM seconds on one core
        HTTP.post(vllm_agent.base_url + CHAT.path, json=chat(max_tokens=1000), headers={TICKET_HEADER: header},
                  timeout=0.5)  # fmt: skip
    assert_aborted(real_vllm.base_url, generated, of=1000)
    assert recorder.receipt_for(ticket.job_id) is None  # nothing was delivered, so nothing is billed


@pytest.mark.parametrize("streamed", [False, True])
def test_vllms_refusal_passes_through_unchanged_and_unbilled(vllm_agent: RunningServer, streamed: bool) -> None:
    recorded = json.loads(open(f"{RECORDED}/error-completion-prompt-too-long.json").read())  # noqa: SIM115
    _, response = post(vllm_agent, COMPLETIONS.path, completion(prompt=OVER_FULL_PROMPT, max_tokens=8,
                                                                stream=streamed))  # fmt: skip
    assert (response.status_code, response.json()) == (400, recorded["body"])
    assert RECEIPT_HEADER not in response.headers


def test_heartbeats_carry_vllms_queue_depth(vllm_agent: RunningServer, real_vllm: RealVllm,
                                            recorder: FakeService) -> None:  # fmt: skip
    generated = metric(real_vllm.base_url, "vllm:generation_tokens_total")
    streams = MAX_NUM_SEQS + 2
    body = {**completion(max_tokens=1000), "stream": True}
    with ExitStack() as held:
        for _ in range(streams):
            header = issue(model=TINY_MODEL, max_tokens=1000)[1]
            held.enter_context(HTTP.stream("POST", vllm_agent.base_url + COMPLETIONS.path, json=body,
                                           headers={TICKET_HEADER: header}, timeout=120))  # fmt: skip
        def full_beat() -> dict[str, Any] | None:
            return next((hb for hb in reversed(recorder.heartbeats) if hb["url"] == vllm_agent.base_url
                         and (hb["running"], hb["waiting"]) == (MAX_NUM_SEQS, 2)), None)  # fmt: skip

        beat = wait_until(full_beat, 60.0)
    heartbeat = NodeHeartbeat.model_validate(beat)
    assert (heartbeat.models, heartbeat.capacity) == ([TINY_MODEL], MAX_NUM_SEQS)
    assert_aborted(real_vllm.base_url, generated, of=streams * 1000)


def test_the_built_model_tokenizes_as_the_simulator_does(real_vllm: RealVllm) -> None:
    """The recordings' tokenizer.json is the one setup.sh builds, and the simulator's BPE reads it as vLLM does."""
    checked_in = open(f"{RECORDED}/model/tokenizer.json", "rb").read()  # noqa: SIM115
    assert (real_vllm.model_dir / "tokenizer.json").read_bytes() == checked_in
    simulator = ByteLevelBpeTokenizer.from_file(real_vllm.model_dir / "tokenizer.json")
    texts = ["The quick brown fox", "Say hello, please.", "naïve café — 東京 🙂", "  spaced\n\nlines\t", "x=1+2; y'll",
             "<|user|>\nhi<|end|>\n", "", "1234567 89"]  # fmt: skip
    for text in texts:
        for special in (True, False):
            answer = HTTP.post(real_vllm.base_url + "/tokenize", json={"model": TINY_MODEL, "prompt": text,
                               "add_special_tokens": special, "return_token_strs": True}).json()  # fmt: skip
            assert simulator.encode_with_pieces(text, add_special_tokens=special) == (answer["tokens"],
                                                                                       answer["token_strs"]), text


# -- prompt-token bounds are vLLM's own count ---------------------------------------------------


def count(agent: RunningServer, path: str, body: dict[str, Any]) -> Any:
    response = HTTP.post(agent.base_url + PROMPT_TOKENS_PATH + path, json=body, timeout=60)
    assert response.status_code == 200, response.text
    return response.json()


@pytest.mark.parametrize(("path", "body", "prompt_tokens"), [
    (CHAT.path, chat(max_tokens=2), CHAT_PROMPT_TOKENS),
    (COMPLETIONS.path, completion(max_tokens=2), COMPLETION_PROMPT_TOKENS),
    (COMPLETIONS.path, completion(prompt=[COMPLETION_PROMPT, SECOND_PROMPT], max_tokens=2),
     COMPLETION_PROMPT_TOKENS + SECOND_PROMPT_TOKENS),
    (COMPLETIONS.path, completion(prompt=NEAR_FULL_PROMPT, max_tokens=2), NEAR_FULL_PROMPT_TOKENS),
], ids=["chat", "completion", "two-prompts", "near-full"])  # fmt: skip
def test_the_prompt_bound_is_what_vllm_bills(vllm_agent: RunningServer, path: str, body: dict[str, Any],
                                             prompt_tokens: int) -> None:  # fmt: skip
    assert count(vllm_agent, path, body) == {"prompt_tokens": prompt_tokens, "exact": True, "reason": None}
    _, response = post(vllm_agent, path, body)
    assert response.status_code == 200, response.text
    assert response.json()["usage"]["prompt_tokens"] == prompt_tokens


def test_an_image_part_is_bounded_by_vllms_context(vllm_agent: RunningServer) -> None:
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}
    body = chat(messages=[{"role": "user", "content": [{"type": "text", "text": "what is it?"}, image]}])
    assert count(vllm_agent, CHAT.path, body) == {
        "prompt_tokens": MAX_MODEL_LEN, "exact": False, "reason": "a message part of type 'image_url' is not text"}
