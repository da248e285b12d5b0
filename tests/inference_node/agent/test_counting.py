"""The agent's prompt-token bound (PROMPT_TOKENS_PATH) against the simulator: vLLM's own count where it renders
like generation, the context window where it cannot count, vLLM's refusals passed on, bad bodies refused."""

from __future__ import annotations

from typing import Any

import pytest

from inference_node.agent.bounds import CHAT, COMPLETIONS, Endpoint
from inference_node.protocol import PROMPT_TOKENS_PATH, TICKET_HEADER
from tests.inference_node.agent.support import (
    CHAT_PROMPT_TOKENS,
    COMPLETION_PROMPT,
    HTTP,
    MAX_MODEL_LEN,
    MODEL,
    RunningServer,
    chat,
    issue,
)


def bound(agent: RunningServer, endpoint: Endpoint, body: Any) -> Any:
    response = HTTP.post(agent.base_url + PROMPT_TOKENS_PATH + endpoint.path, json=body)
    assert response.status_code == 200, response.text
    return response.json()


def billed_prompt_tokens(agent: RunningServer, endpoint: Endpoint, body: dict[str, Any]) -> int:
    """What vLLM bills the same body through the agent (usage.prompt_tokens of the generation)."""
    _, header = issue()
    response = HTTP.post(agent.base_url + endpoint.path, json=body, headers={TICKET_HEADER: header})
    assert response.status_code == 200, response.text
    prompt_tokens: int = response.json()["usage"]["prompt_tokens"]
    return prompt_tokens


def completion(prompt: Any, **extra: Any) -> dict[str, Any]:
    return {"model": MODEL, "prompt": prompt, "max_tokens": 4, **extra}


def test_chat_is_counted_exactly_as_generation_bills_it(agent: RunningServer) -> None:
    assert bound(agent, CHAT, chat()) == {"prompt_tokens": CHAT_PROMPT_TOKENS, "exact": True, "reason": None}
    assert billed_prompt_tokens(agent, CHAT, chat()) == CHAT_PROMPT_TOKENS
    # The generation prompt's tokens go when the client continues its own last message instead.
    continued = chat(add_generation_prompt=False, continue_final_message=True)
    counted = bound(agent, CHAT, continued)
    assert counted["exact"] is True and counted["prompt_tokens"] < CHAT_PROMPT_TOKENS
    assert counted["prompt_tokens"] == billed_prompt_tokens(agent, CHAT, continued)


@pytest.mark.parametrize("prompt", [
    COMPLETION_PROMPT,
    [COMPLETION_PROMPT, "jumps over the lazy dog again and again"],
    [5, 6, 7, 8, 9],
    [[5, 6, 7], [8, 9]],
], ids=["text", "texts", "token-ids", "token-id-lists"])  # fmt: skip
def test_completions_are_counted_exactly_as_generation_bills_them(agent: RunningServer, prompt: Any) -> None:
    counted = bound(agent, COMPLETIONS, completion(prompt))
    assert counted["exact"] is True and counted["reason"] is None
    assert counted["prompt_tokens"] == billed_prompt_tokens(agent, COMPLETIONS, completion(prompt))


def test_special_tokens_follow_the_request(agent: RunningServer) -> None:
    with_bos = bound(agent, COMPLETIONS, completion(COMPLETION_PROMPT))["prompt_tokens"]
    plain = completion(COMPLETION_PROMPT, add_special_tokens=False)
    assert bound(agent, COMPLETIONS, plain)["prompt_tokens"] == with_bos - 1 == billed_prompt_tokens(
        agent, COMPLETIONS, plain)


IMAGE = {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}
TOOL = {"type": "function", "function": {"name": "lookup", "parameters": {"type": "object", "properties": {}}}}


@pytest.mark.parametrize(("extra", "reason"), [
    ({"messages": [{"role": "user", "content": [{"type": "text", "text": "what is this?"}, IMAGE]}]},
     "a message part of type 'image_url' is not text"),
    ({"tools": [TOOL]}, "`tools` is rendered into the prompt by the chat template"),
    ({"chat_template": "{% for m in messages %}{{ m.content * 100 }}{% endfor %}"},
     "`chat_template` is rendered into the prompt by the chat template"),
    ({"messages": [{"role": "assistant", "content": None,
                    "tool_calls": [{"id": "1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]}]},
     "assistant `tool_calls` are rendered into the prompt by the chat template"),
], ids=["image", "tools", "chat-template", "tool-calls"])  # fmt: skip
def test_what_tokenize_cannot_render_is_bounded_by_the_context(agent: RunningServer, extra: dict[str, Any],
                                                               reason: str) -> None:  # fmt: skip
    assert bound(agent, CHAT, chat(**extra)) == {"prompt_tokens": MAX_MODEL_LEN, "exact": False, "reason": reason}


def test_prompt_embeds_are_bounded_by_the_context_per_prompt(agent: RunningServer) -> None:
    assert bound(agent, COMPLETIONS, completion(["a", "b", "c"], prompt_embeds="AAAA")) == {
        "prompt_tokens": 3 * MAX_MODEL_LEN, "exact": False, "reason": "`prompt_embeds` carry no tokens to count"}


def test_vllms_refusal_passes_through(agent: RunningServer, sim: RunningServer) -> None:
    body = chat(model="no-such-model")
    direct = HTTP.post(sim.base_url + "/tokenize", json={"model": "no-such-model", "messages": body["messages"]})
    response = HTTP.post(agent.base_url + PROMPT_TOKENS_PATH + CHAT.path, json=body)
    assert direct.status_code == 404
    assert (response.status_code, response.content) == (direct.status_code, direct.content)


@pytest.mark.parametrize(("endpoint", "content", "message", "param"), [
    (CHAT, b"{not json", "the body is not JSON", None),
    (CHAT, b"[1, 2]", "the body must be a JSON object", None),
    (CHAT, b'{"model": 7, "messages": []}', "`model` must be a string", "model"),
    (CHAT, b'{"model": "sim-model", "messages": []}', "`messages` must be a non-empty array", "messages"),
    (CHAT, b'{"model": "sim-model", "messages": ["hi"]}', "each message must be an object", "messages"),
    (CHAT, b'{"model": "sim-model", "messages": [{"role": "user", "content": 5}]}',
     "message `content` must be a string or an array of parts", "messages"),
    (COMPLETIONS, b'{"model": "sim-model", "prompt": [1, "a"]}',
     "`prompt` must be a string, an array of strings or an array of token ids", "prompt"),
    (COMPLETIONS, b'{"model": "sim-model"}',
     "`prompt` must be a string, an array of strings or an array of token ids", "prompt"),
], ids=["not-json", "array", "model", "no-messages", "message", "content", "mixed-prompt", "no-prompt"])  # fmt: skip
def test_bad_bodies_are_400s(agent: RunningServer, endpoint: Endpoint, content: bytes, message: str,
                             param: str | None) -> None:  # fmt: skip
    response = HTTP.post(agent.base_url + PROMPT_TOKENS_PATH + endpoint.path, content=content,
                         headers={"Content-Type": "application/json"})  # fmt: skip
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["message"].startswith(message) and error["param"] == param
    assert error["code"] == "invalid_request_body"
