"""The simulator's app, driven through the real ``openai`` client: discovery routes, tokenize, schema errors."""

from __future__ import annotations

import httpx
import openai

from tests.inference_node.sim.support import (
    ALIAS,
    CHAT_MESSAGES,
    CHAT_PROMPT_TOKENS,
    COMPLETION_PROMPT,
    COMPLETION_PROMPT_TOKENS,
    MAX_MODEL_LEN,
    MODEL,
    RunningSimulator,
)


def test_models_lists_every_served_name_as_a_vllm_model_card(client: openai.OpenAI) -> None:
    models = client.models.list().data
    assert [model.id for model in models] == [MODEL, ALIAS]
    for model in models:
        assert model.object == "model"
        assert model.owned_by == "vllm"
        assert model.model_extra is not None
        assert model.model_extra["root"] == MODEL
        assert model.model_extra["max_model_len"] == MAX_MODEL_LEN
        assert model.model_extra["permission"][0]["object"] == "model_permission"


def test_health_is_empty_200_and_version_reports_vllm(sim: RunningSimulator) -> None:
    health = httpx.get(f"{sim.base_url}/health")
    assert (health.status_code, health.content) == (200, b"")
    assert httpx.get(f"{sim.base_url}/version").json() == {"version": "0.32.0"}


def test_unknown_route_gets_fastapis_own_answer_as_from_vllm(sim: RunningSimulator) -> None:
    response = httpx.get(f"{sim.base_url}/v1/nothing-here")
    assert response.status_code == 404
    assert response.json() == {"detail": "Not Found"}  # vLLM 0.32 answers an unknown route without its envelope


def test_sim_requests_lists_the_generation_requests_taken_in_order(sim: RunningSimulator) -> None:
    before = httpx.get(f"{sim.base_url}/sim/requests").json()["request_ids"]
    chat = {"model": MODEL, "messages": CHAT_MESSAGES, "max_tokens": 2}
    assert httpx.post(f"{sim.base_url}/v1/chat/completions", json=chat,
                      headers={"X-Request-Id": "job-a"}).status_code == 200
    assert httpx.post(f"{sim.base_url}/v1/completions", json={"model": MODEL, "prompt": COMPLETION_PROMPT,
                      "max_tokens": 2}, headers={"X-Request-Id": "job-b"}).status_code == 200
    # Refused before generation (unknown model): never taken, so not listed.
    assert httpx.post(f"{sim.base_url}/v1/chat/completions", json={**chat, "model": "nope"},
                      headers={"X-Request-Id": "job-c"}).status_code == 404
    after = httpx.get(f"{sim.base_url}/sim/requests").json()["request_ids"]
    assert after == [*before, "chatcmpl-job-a", "cmpl-job-b"]


def test_tokenize_counts_what_usage_reports(sim: RunningSimulator, client: openai.OpenAI) -> None:
    chat = httpx.post(f"{sim.base_url}/tokenize", json={"model": MODEL, "messages": CHAT_MESSAGES}).json()
    assert (chat["count"], chat["max_model_len"], len(chat["tokens"]), chat["token_strs"]) == (
        CHAT_PROMPT_TOKENS,
        MAX_MODEL_LEN,
        CHAT_PROMPT_TOKENS,
        None,
    )
    completion_prompt = httpx.post(
        f"{sim.base_url}/tokenize", json={"prompt": COMPLETION_PROMPT, "return_token_strs": True}
    ).json()
    assert completion_prompt["count"] == COMPLETION_PROMPT_TOKENS
    assert completion_prompt["token_strs"] == ["<s>", "The", "quick", "brown", "fox"]

    usage = client.completions.create(model=MODEL, prompt=COMPLETION_PROMPT, max_tokens=1).usage
    assert usage is not None and usage.prompt_tokens == completion_prompt["count"]
    chat_usage = client.chat.completions.create(model=MODEL, messages=CHAT_MESSAGES, max_tokens=1).usage
    assert chat_usage is not None and chat_usage.prompt_tokens == chat["count"]


def test_schema_errors_are_400_bad_request(sim: RunningSimulator) -> None:
    response = httpx.post(
        f"{sim.base_url}/v1/chat/completions",
        json={"messages": CHAT_MESSAGES, "stream_options": {"include_usage": True}},
    )
    assert response.status_code == 400
    error = response.json()["error"]
    # vLLM 0.32 refuses this one in its serving code, so as a BadRequestError naming the parameter
    assert (error["type"], error["param"], error["code"]) == ("BadRequestError", "stream_options", 400)
    assert error["message"] == "Stream options can only be defined when `stream=True`. (parameter=stream_options)"
    missing = httpx.post(f"{sim.base_url}/v1/chat/completions", json={"model": MODEL}).json()["error"]
    assert (missing["type"], missing["param"], missing["code"]) == ("Bad Request", "body.messages", 400)
