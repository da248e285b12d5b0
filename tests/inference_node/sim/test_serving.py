"""Generation as vLLM answers it, driven through the real ``openai`` client: shapes, usage, streams, length checks."""

from __future__ import annotations

import re
import time
from typing import Any

import httpx
import openai
import pytest

from tests.inference_node.sim.support import (
    ALIAS,
    CHAT_MESSAGES,
    CHAT_PROMPT_TOKENS,
    COMPLETION_PROMPT,
    COMPLETION_PROMPT_TOKENS,
    MODEL,
    RunningSimulator,
    text_tokens,
)


def test_chat_completion_reports_vllm_usage_and_shape(client: openai.OpenAI) -> None:
    completion = client.chat.completions.create(model=ALIAS, messages=CHAT_MESSAGES)

    assert re.fullmatch(r"chatcmpl-[0-9a-f]{16}", completion.id)
    assert completion.object == "chat.completion"
    assert completion.model == MODEL  # vLLM answers with the first served name, whatever alias was asked
    assert completion.system_fingerprint is not None
    assert re.fullmatch(r"vllm-0\.32\.0-[0-9a-f]{8}", completion.system_fingerprint)
    assert abs(completion.created - time.time()) < 60
    [choice] = completion.choices
    assert (choice.index, choice.message.role, choice.finish_reason) == (0, "assistant", "stop")
    text = choice.message.content
    assert text is not None and text.endswith(".")
    usage = completion.usage
    assert usage is not None
    assert usage.prompt_tokens == CHAT_PROMPT_TOKENS
    assert usage.completion_tokens == text_tokens(text) + 1  # the EOS token counts and carries no text
    assert 20 <= usage.completion_tokens <= 60
    assert usage.total_tokens == CHAT_PROMPT_TOKENS + usage.completion_tokens
    assert usage.prompt_tokens_details is None


def test_chat_completion_json_has_exactly_vllms_fields(sim: RunningSimulator) -> None:
    body = httpx.post(f"{sim.base_url}/v1/chat/completions", json={"messages": CHAT_MESSAGES}).json()
    assert list(body) == [
        "id",
        "object",
        "created",
        "model",
        "choices",
        "service_tier",
        "system_fingerprint",
        "usage",
        "prompt_logprobs",
        "prompt_token_ids",
        "prompt_text",
        "kv_transfer_params",
        "ec_transfer_params",
        "metrics",
    ]
    assert list(body["choices"][0]) == ["index", "message", "logprobs", "finish_reason", "stop_reason", "token_ids",
                                        "routed_experts"]  # fmt: skip
    assert list(body["choices"][0]["message"]) == ["role", "content", "refusal", "annotations", "audio",
                                                   "function_call", "reasoning"]  # no tool_calls when there are none
    assert list(body["usage"]) == ["prompt_tokens", "total_tokens", "completion_tokens", "prompt_tokens_details",
                                   "completion_tokens_details"]  # fmt: skip


def test_completion_text_is_a_deterministic_function_of_seed_and_prompt(client: openai.OpenAI) -> None:
    first = client.chat.completions.create(model=MODEL, messages=CHAT_MESSAGES)
    second = client.chat.completions.create(model=MODEL, messages=CHAT_MESSAGES)
    other = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Something else entirely."}],
    )
    seeded = client.chat.completions.create(model=MODEL, messages=CHAT_MESSAGES, seed=99)

    assert first.id != second.id
    assert first.choices[0].message.content == second.choices[0].message.content
    assert first.usage == second.usage
    assert other.choices[0].message.content != first.choices[0].message.content
    assert seeded.choices[0].message.content != first.choices[0].message.content


def test_text_is_stable_across_processes(client: openai.OpenAI) -> None:
    completion = client.completions.create(model=MODEL, prompt=COMPLETION_PROMPT, max_tokens=6)
    assert completion.choices[0].text == "One paper year, two young"


def test_completions_default_to_16_tokens_like_vllm(client: openai.OpenAI) -> None:
    completion = client.completions.create(model=MODEL, prompt=COMPLETION_PROMPT)

    assert re.fullmatch(r"cmpl-[0-9a-f]{16}", completion.id)
    assert completion.object == "text_completion"
    [choice] = completion.choices
    assert choice.finish_reason == "length"
    assert text_tokens(choice.text) == 16
    assert completion.usage is not None
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens, completion.usage.total_tokens) == (
        COMPLETION_PROMPT_TOKENS,
        16,
        COMPLETION_PROMPT_TOKENS + 16,
    )


def test_max_tokens_truncates_with_finish_reason_length(client: openai.OpenAI) -> None:
    for limit in (1, 5, 19):
        completion = client.chat.completions.create(
            model=MODEL,
            messages=CHAT_MESSAGES,
            max_tokens=limit,
        )
        [choice] = completion.choices
        assert choice.finish_reason == "length"
        assert choice.message.content is not None and text_tokens(choice.message.content) == limit
        assert completion.usage is not None and completion.usage.completion_tokens == limit
    by_new_name = client.chat.completions.create(
        model=MODEL,
        messages=CHAT_MESSAGES,
        max_completion_tokens=7,
    )
    assert by_new_name.usage is not None and by_new_name.usage.completion_tokens == 7


def test_n_returns_distinct_choices_and_sums_usage(client: openai.OpenAI) -> None:
    completion = client.chat.completions.create(model=MODEL, messages=CHAT_MESSAGES, n=3)

    assert [choice.index for choice in completion.choices] == [0, 1, 2]
    texts = [choice.message.content or "" for choice in completion.choices]
    assert len(set(texts)) == 3
    assert completion.usage is not None
    assert completion.usage.prompt_tokens == CHAT_PROMPT_TOKENS
    assert completion.usage.completion_tokens == sum(text_tokens(text) + 1 for text in texts)


def test_x_request_id_header_names_the_completion(client: openai.OpenAI) -> None:
    completion = client.chat.completions.create(
        model=MODEL,
        messages=CHAT_MESSAGES,
        extra_headers={"X-Request-Id": "job-42"},
    )
    assert completion.id == "chatcmpl-job-42"


def test_chat_stream_equals_the_non_stream_completion(client: openai.OpenAI) -> None:
    reference = client.chat.completions.create(model=MODEL, messages=CHAT_MESSAGES)
    chunks = list(
        client.chat.completions.create(
            model=MODEL,
            messages=CHAT_MESSAGES,
            stream=True,
            stream_options={"include_usage": True},
        )
    )

    role, *tokens, usage_chunk = chunks
    assert role.choices[0].delta.role == "assistant"
    assert role.choices[0].delta.content == ""
    assert role.choices[0].finish_reason is None
    assert {chunk.id for chunk in chunks} == {role.id}
    assert role.id.startswith("chatcmpl-")
    assert all(chunk.object == "chat.completion.chunk" and chunk.model == MODEL for chunk in chunks)
    assert [chunk.choices[0].finish_reason for chunk in tokens] == [None] * (len(tokens) - 1) + ["stop"]
    assert tokens[-1].choices[0].delta.content == ""  # the EOS step
    assert "".join(chunk.choices[0].delta.content or "" for chunk in tokens) == reference.choices[0].message.content
    assert usage_chunk.choices == []
    assert usage_chunk.usage == reference.usage
    assert reference.usage is not None and len(tokens) == reference.usage.completion_tokens


def test_chat_stream_without_stream_options_has_no_usage_chunk(sim: RunningSimulator) -> None:
    body = httpx.post(
        f"{sim.base_url}/v1/chat/completions",
        json={"messages": CHAT_MESSAGES, "stream": True, "max_tokens": 3},
    ).text
    frames = body.split("\n\n")
    assert frames[-2:] == ["data: [DONE]", ""]
    assert all(frame.startswith("data: {") for frame in frames[:-2])
    assert len(frames[:-2]) == 1 + 3  # the role chunk, then one chunk per token
    assert '"usage"' not in body


def test_completion_stream_with_continuous_usage_counts_every_token(
    client: openai.OpenAI,
) -> None:
    reference = client.completions.create(model=MODEL, prompt=COMPLETION_PROMPT, max_tokens=10)
    chunks = list(
        client.completions.create(
            model=MODEL,
            prompt=COMPLETION_PROMPT,
            max_tokens=10,
            stream=True,
            extra_body={"stream_options": {"include_usage": True, "continuous_usage_stats": True}},
        )
    )

    *tokens, final = chunks
    assert len(tokens) == 10
    assert [chunk.usage.completion_tokens for chunk in tokens if chunk.usage] == list(range(1, 11))
    assert all(chunk.usage and chunk.usage.prompt_tokens == COMPLETION_PROMPT_TOKENS for chunk in tokens)
    assert [chunk.choices[0].finish_reason for chunk in tokens] == [None] * 9 + ["length"]
    assert "".join(chunk.choices[0].text for chunk in tokens) == reference.choices[0].text
    assert final.choices == []
    assert final.usage == reference.usage


def test_unknown_model_is_404_with_vllms_error(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as raised:
        client.chat.completions.create(model="gpt-4o", messages=CHAT_MESSAGES)
    assert raised.value.status_code == 404
    assert raised.value.body == {
        "message": "The model `gpt-4o` does not exist. Valid aliases: sim-model, sim-alias.",
        "type": "NotFoundError",
        "param": "model",
        "code": 404,
    }


def test_prompt_longer_than_the_context_is_400(client: openai.OpenAI) -> None:
    long_prompt = "word " * 300  # BOS + 300 words
    with pytest.raises(openai.BadRequestError) as raised:
        client.completions.create(model=MODEL, prompt=long_prompt, max_tokens=10)
    # vLLM 0.32 tokenizes text to one token past the context, hence "at least" 257
    assert raised.value.body == {
        "message": (
            "This model's maximum context length is 256 tokens. However, your prompt contains at least 257 input "
            "tokens, which exceeds this limit even without any output tokens. Please reduce the length of the "
            "input prompt. (parameter=input_tokens, value=257)"
        ),
        "type": "BadRequestError",
        "param": "input_tokens",
        "code": 400,
    }
    ids = [100] * 300  # a token-id prompt is counted whole
    with pytest.raises(openai.BadRequestError, match="your prompt contains 300 input tokens"):
        client.completions.create(model=MODEL, prompt=ids, max_tokens=10)


def test_prompt_and_max_tokens_over_the_context_are_answered_with_the_limit_cut(client: openai.OpenAI) -> None:
    # 241 prompt tokens + max_tokens 100 > 256: vLLM 0.32 answers, generating the 15 tokens the context leaves
    completion = client.completions.create(model=MODEL, prompt="word " * 240, max_tokens=100, extra_body={
        "ignore_eos": True})  # fmt: skip
    assert completion.choices[0].finish_reason == "length"
    assert completion.usage is not None
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (241, 15)


def test_max_tokens_beyond_the_context_is_400(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as raised:
        client.chat.completions.create(model=MODEL, messages=CHAT_MESSAGES, max_tokens=300)
    assert raised.value.body == {
        "message": (
            "max_tokens=300 cannot be greater than max_model_len=256. "
            "Please request fewer output tokens. (parameter=max_tokens, value=300)"
        ),
        "type": "BadRequestError",
        "param": "max_tokens",
        "code": 400,
    }


def test_default_max_tokens_fills_the_rest_of_the_context(client: openai.OpenAI) -> None:
    # A lone user message adds 4 template tokens: <s>, <|user|>, <|end|>, <|assistant|>.
    def ask(words: int) -> Any:
        return client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "word " * words}])

    with pytest.raises(openai.BadRequestError) as over:
        ask(253)  # 257 prompt tokens > 256
    assert isinstance(over.value.body, dict)
    assert over.value.body["message"] == (
        "This model's maximum context length is 256 tokens. However, your prompt contains at least 257 input "
        "tokens, which exceeds this limit even without any output tokens. Please reduce the length of the input "
        "prompt. (parameter=input_tokens, value=257)"
    )
    with pytest.raises(openai.BadRequestError) as full:
        ask(252)  # 256 prompt tokens leave no room for one output token
    assert full.value.body == {
        "message": "max_tokens must be at least 1, got 0. (parameter=max_tokens, value=0)",
        "type": "BadRequestError",
        "param": "max_tokens",
        "code": 400,
    }
    squeezed = ask(240)  # 244 prompt tokens leave 12, fewer than any natural completion here (>= 20)
    assert squeezed.choices[0].finish_reason == "length"
    assert squeezed.usage is not None
    assert (squeezed.usage.prompt_tokens, squeezed.usage.completion_tokens) == (244, 12)


def test_unmodelled_features_are_refused_not_ignored(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as raised:
        client.chat.completions.create(model=MODEL, messages=CHAT_MESSAGES, logprobs=True)
    assert isinstance(raised.value.body, dict) and raised.value.body["param"] == "logprobs"
