"""Output bounds: the ticket clamps what vLLM may generate, without making vLLM refuse a request."""

from __future__ import annotations

from typing import Any

import pytest

from inference_node.agent.bounds import CHAT, COMPLETIONS, Endpoint, output_bounds, write_output_limit
from inference_node.agent.errors import InvalidRequestBody
from inference_node.protocol import RECEIPT_HEADER, TICKET_HEADER, SignedReceipt
from tests.inference_node.agent.support import (
    CHAT_MESSAGES,
    CHAT_PROMPT_TOKENS,
    COMPLETION_PROMPT,
    HTTP,
    MAX_MODEL_LEN,
    MODEL,
    RunningServer,
    chat,
    check_receipt,
    issue,
)


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
    body = {"model": MODEL, "prompt": long_prompt, "max_tokens": 500, "ignore_eos": True}
    response = HTTP.post(agent.base_url + COMPLETIONS.path, json=body, headers={TICKET_HEADER: header})
    assert response.status_code == 200, response.text
    assert response.json()["usage"] == {"prompt_tokens": 401, "total_tokens": 512, "completion_tokens": 111,
                                        "prompt_tokens_details": None, "completion_tokens_details": None}  # fmt: skip


def test_output_bounds_keep_vllms_reading_of_the_limit_fields() -> None:
    def bounds(endpoint: Endpoint, budget: int, **body: Any) -> tuple[int | None, int]:
        found = output_bounds(body, endpoint, budget)
        return found.requested, found.per_choice

    assert bounds(CHAT, 50) == (None, 50)
    assert bounds(CHAT, 50, max_completion_tokens=0, max_tokens=None) == (None, 50)  # 0 or None: no limit
    assert bounds(CHAT, 50, max_completion_tokens=80, max_tokens=10) == (80, 50)
    assert bounds(COMPLETIONS, 50, prompt="a") == (16, 50)  # vLLM's default for completions
    assert bounds(COMPLETIONS, 50, prompt=[1, 2, 3], max_tokens=None) == (16, 50)  # vLLM 0.32 reads null as 16
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
