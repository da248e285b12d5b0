"""Behaviour tests of the vLLM-API simulator, driven through the real ``openai`` client.

Every test talks HTTP to a real uvicorn server on a free loopback port, started by a fixture that
polls ``/health`` with a deadline. The known prompts below were tokenized by hand with the
simulator's template (``<s><|role|>\\ncontent<|end|>\\n...<|assistant|>\\n``; every word,
punctuation mark and tag is one token), so prompt token counts are asserted as literals.
"""

from __future__ import annotations

import re
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam
from prometheus_client.parser import text_string_to_metric_families

from inference_node.sim.api_server import build_simulator_server
from inference_node.sim.config import SimulatorConfig
from inference_node.sim.faults import FaultPlan
from inference_node.sim.tokenizer import WordTokenizer

MODEL = "sim-model"
ALIAS = "sim-alias"
MAX_MODEL_LEN = 256

# "<s>", "<|system|>", "You", "are", "terse", ".", "<|end|>",
# "<|user|>", "Say", "hello", ",", "please", ".", "<|end|>", "<|assistant|>"
CHAT_MESSAGES: list[ChatCompletionMessageParam] = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "Say hello, please."},
]
CHAT_PROMPT_TOKENS = 15
# "<s>", "The", "quick", "brown", "fox"
COMPLETION_PROMPT = "The quick brown fox"
COMPLETION_PROMPT_TOKENS = 5

TOKENIZER = WordTokenizer()


def text_tokens(text: str) -> int:
    return len(TOKENIZER.pieces(text))


class RunningSimulator:
    """A simulator served by uvicorn in a background thread on a pre-bound loopback socket."""

    def __init__(self, config: SimulatorConfig) -> None:
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(128)
        self.port: int = self._sock.getsockname()[1]
        self.base_url = f"http://127.0.0.1:{self.port}"
        self._server = build_simulator_server(config, "127.0.0.1", self.port, log_level="warning")
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [self._sock]}, daemon=True)

    def start(self, deadline_seconds: float = 10.0) -> None:
        self._thread.start()
        deadline = time.monotonic() + deadline_seconds
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.base_url}/health", timeout=1.0).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.01)
        raise RuntimeError(f"simulator on port {self.port} did not become healthy")

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=10)
        self._sock.close()

    def openai_client(self, timeout: float = 10.0) -> openai.OpenAI:
        return openai.OpenAI(base_url=f"{self.base_url}/v1", api_key="unused", max_retries=0, timeout=timeout)

    def arm(self, **fault: Any) -> dict[str, Any]:
        response = httpx.post(f"{self.base_url}/sim/faults", json=fault)
        assert response.status_code == 200, response.text
        state: dict[str, Any] = response.json()
        return state

    def metrics(self) -> MetricSamples:
        return MetricSamples(httpx.get(f"{self.base_url}/metrics").text)

    def metric(self, name: str, **labels: str) -> float:
        return self.metrics().value(name, **labels)


class MetricSamples:
    """One scrape of ``/metrics``."""

    def __init__(self, exposition: str) -> None:
        self._samples = [sample for family in text_string_to_metric_families(exposition) for sample in family.samples]

    def value(self, name: str, **labels: str) -> float:
        """The value of the sample ``name`` (e.g. ``vllm:prompt_tokens_total``) with these labels; 0 if absent."""
        for sample in self._samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
        return 0.0


def wait_until(condition: Callable[[], bool], deadline_seconds: float = 5.0) -> None:
    deadline = time.monotonic() + deadline_seconds
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached before the deadline")
        time.sleep(0.01)


@pytest.fixture(scope="module")
def sim() -> Iterator[RunningSimulator]:
    """Zero-latency simulator; natural completions (20..60 tokens) outrun the completions default of 16."""
    config = SimulatorConfig(
        served_model_names=[MODEL, ALIAS],
        ttft_seconds=0,
        per_token_seconds=0,
        max_model_len=MAX_MODEL_LEN,
        seed=7,
        natural_min_tokens=20,
        natural_max_tokens=60,
    )
    server = RunningSimulator(config)
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def slow_sim() -> Iterator[RunningSimulator]:
    """One sequence at a time, 0.1 s to the first token and 0.02 s per further token."""
    config = SimulatorConfig(
        served_model_names=[MODEL],
        ttft_seconds=0.1,
        per_token_seconds=0.02,
        max_model_len=MAX_MODEL_LEN,
        max_num_seqs=1,
    )
    server = RunningSimulator(config)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def client(sim: RunningSimulator) -> Iterator[openai.OpenAI]:
    with sim.openai_client() as api:
        yield api


@pytest.fixture
def faulty(sim: RunningSimulator) -> Iterator[RunningSimulator]:
    """The zero-latency simulator, disarmed again after the test."""
    yield sim
    sim.arm(mode="none")


# --- configuration -----------------------------------------------------------------------------


def test_latency_defaults_come_from_the_tier_and_zero_is_allowed() -> None:
    edge = SimulatorConfig(tier="edge")
    assert (edge.ttft_seconds, edge.per_token_seconds) == (0.02, 0.005)
    regional = SimulatorConfig()
    assert (regional.tier, regional.ttft_seconds, regional.per_token_seconds) == ("regional", 0.05, 0.01)
    cloud = SimulatorConfig.model_validate({"tier": "cloud"})
    assert (cloud.ttft_seconds, cloud.per_token_seconds) == (0.1, 0.015)
    bench = SimulatorConfig(tier="cloud", ttft_seconds=0, per_token_seconds=0)
    assert (bench.ttft_seconds, bench.per_token_seconds) == (0, 0)
    with pytest.raises(ValueError, match="greater than or equal to 0"):
        SimulatorConfig(ttft_seconds=-0.1)


# --- discovery endpoints -----------------------------------------------------------------------


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
    assert httpx.get(f"{sim.base_url}/version").json() == {"version": "0.33.0"}


def test_unknown_route_uses_the_vllm_error_envelope(sim: RunningSimulator) -> None:
    response = httpx.get(f"{sim.base_url}/v1/nothing-here")
    assert response.status_code == 404
    assert response.json() == {"error": {"message": "Not Found", "type": "Not Found", "param": None, "code": 404}}


# --- non-streaming generation ------------------------------------------------------------------


def test_chat_completion_reports_vllm_usage_and_shape(client: openai.OpenAI) -> None:
    completion = client.chat.completions.create(model=ALIAS, messages=CHAT_MESSAGES)

    assert re.fullmatch(r"chatcmpl-[0-9a-f]{32}", completion.id)
    assert completion.object == "chat.completion"
    assert completion.model == MODEL  # vLLM answers with the first served name, whatever alias was asked
    assert completion.system_fingerprint is None
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
        "kv_transfer_params",
    ]
    assert list(body["choices"][0]) == ["index", "message", "logprobs", "finish_reason", "stop_reason", "token_ids"]
    assert list(body["usage"]) == ["prompt_tokens", "total_tokens", "completion_tokens", "prompt_tokens_details"]


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

    assert re.fullmatch(r"cmpl-[0-9a-f]{32}", completion.id)
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


# --- streaming ---------------------------------------------------------------------------------


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


# --- tokenize ----------------------------------------------------------------------------------


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


# --- errors ------------------------------------------------------------------------------------


def test_unknown_model_is_404_with_vllms_error(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as raised:
        client.chat.completions.create(model="gpt-4o", messages=CHAT_MESSAGES)
    assert raised.value.status_code == 404
    assert raised.value.body == {
        "message": "The model `gpt-4o` does not exist.",
        "type": "NotFoundError",
        "param": "model",
        "code": 404,
    }


def test_prompt_longer_than_the_context_is_400(client: openai.OpenAI) -> None:
    long_prompt = "word " * 300  # BOS + 300 words
    with pytest.raises(openai.BadRequestError) as raised:
        client.completions.create(model=MODEL, prompt=long_prompt, max_tokens=10)
    assert raised.value.body == {
        "message": (
            "You passed 301 input tokens and requested 10 output tokens. However, the model's context length "
            "is only 256 tokens, resulting in a maximum input length of 246 tokens. Please reduce the length "
            "of the input prompt. (parameter=input_tokens, value=301)"
        ),
        "type": "BadRequestError",
        "param": "input_tokens",
        "code": 400,
    }


def test_max_tokens_beyond_the_context_is_400(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as raised:
        client.chat.completions.create(model=MODEL, messages=CHAT_MESSAGES, max_tokens=300)
    assert raised.value.body == {
        "message": (
            "max_tokens=300cannot be greater than max_model_len=max_total_tokens=256. "
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
        "You passed 257 input tokens and requested 0 output tokens. However, the model's context length is "
        "only 256 tokens, resulting in a maximum input length of 256 tokens. Please reduce the length of the "
        "input prompt. (parameter=input_tokens, value=257)"
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


def test_schema_errors_are_400_bad_request(sim: RunningSimulator) -> None:
    response = httpx.post(
        f"{sim.base_url}/v1/chat/completions",
        json={"messages": CHAT_MESSAGES, "stream_options": {"include_usage": True}},
    )
    assert response.status_code == 400
    error = response.json()["error"]
    assert (error["type"], error["param"], error["code"]) == ("Bad Request", "stream_options", 400)
    assert "Stream options can only be defined when `stream=True`." in error["message"]


def test_unmodelled_features_are_refused_not_ignored(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as raised:
        client.chat.completions.create(model=MODEL, messages=CHAT_MESSAGES, logprobs=True)
    assert isinstance(raised.value.body, dict) and raised.value.body["param"] == "logprobs"


# --- metrics -----------------------------------------------------------------------------------

VLLM_METRIC_NAMES = (
    "vllm:num_requests_running",
    "vllm:num_requests_waiting",
    "vllm:prompt_tokens_total",
    "vllm:generation_tokens_total",
    "vllm:request_success_total",
    "vllm:time_to_first_token_seconds_bucket",
    "vllm:e2e_request_latency_seconds_bucket",
    "vllm:request_queue_time_seconds_bucket",
    "vllm:inter_token_latency_seconds_bucket",
    "vllm:request_prompt_tokens_bucket",
    "vllm:request_generation_tokens_bucket",
)


def test_metrics_use_vllm_names_and_count_exactly(sim: RunningSimulator, client: openai.OpenAI) -> None:
    text = httpx.get(f"{sim.base_url}/metrics").text
    for name in VLLM_METRIC_NAMES:
        assert f'{name}{{engine="0",' in text or f"{name}{{engine=" in text, name
    assert f'model_name="{MODEL}"' in text

    def snapshot() -> dict[str, float]:
        scrape = sim.metrics()
        return {
            "prompt": scrape.value("vllm:prompt_tokens_total", model_name=MODEL),
            "generation": scrape.value("vllm:generation_tokens_total", model_name=MODEL),
            "stop": scrape.value("vllm:request_success_total", finished_reason="stop"),
            "length": scrape.value("vllm:request_success_total", finished_reason="length"),
            "ttft": scrape.value("vllm:time_to_first_token_seconds_count"),
            "e2e": scrape.value("vllm:e2e_request_latency_seconds_count"),
        }

    before = snapshot()
    chat = client.chat.completions.create(model=MODEL, messages=CHAT_MESSAGES)
    completion = client.completions.create(model=MODEL, prompt=COMPLETION_PROMPT, max_tokens=4)
    after = snapshot()

    assert chat.usage is not None and completion.usage is not None
    assert after["prompt"] - before["prompt"] == CHAT_PROMPT_TOKENS + COMPLETION_PROMPT_TOKENS
    assert after["generation"] - before["generation"] == chat.usage.completion_tokens + 4
    assert (after["stop"] - before["stop"], after["length"] - before["length"]) == (1, 1)
    assert (after["ttft"] - before["ttft"], after["e2e"] - before["e2e"]) == (2, 2)
    idle = sim.metrics()
    assert (idle.value("vllm:num_requests_running"), idle.value("vllm:num_requests_waiting")) == (0, 0)


def test_requests_beyond_max_num_seqs_wait_in_the_queue(slow_sim: RunningSimulator) -> None:
    chunks_received = {"first": 0, "second": 0}

    def stream(name: str, max_tokens: int) -> None:
        with (
            slow_sim.openai_client() as api,
            api.chat.completions.create(
                model=MODEL,
                messages=CHAT_MESSAGES,
                max_tokens=max_tokens,
                stream=True,
            ) as chunks,
        ):
            for _ in chunks:
                chunks_received[name] += 1

    def timings() -> tuple[float, float, float, float]:
        scrape = slow_sim.metrics()
        return (
            scrape.value("vllm:request_queue_time_seconds_count"),
            scrape.value("vllm:request_queue_time_seconds_sum"),
            scrape.value("vllm:request_prefill_time_seconds_sum"),
            scrape.value("vllm:request_inference_time_seconds_sum"),
        )

    before = timings()
    # The first request holds the only slot for 0.1 s + 39 x 0.02 s, long enough to queue behind it.
    launched = time.monotonic()
    first = threading.Thread(target=stream, args=("first", 40))
    first.start()
    wait_until(lambda: slow_sim.metric("vllm:num_requests_running") == 1)
    second = threading.Thread(target=stream, args=("second", 5))
    second.start()
    wait_until(lambda: slow_sim.metric("vllm:num_requests_waiting") == 1)
    queued_by = time.monotonic()
    assert slow_sim.metric("vllm:num_requests_running") == 1
    first.join(10)
    second.join(10)
    after = timings()

    assert chunks_received == {"first": 1 + 40, "second": 1 + 5}
    idle = slow_sim.metrics()
    assert (idle.value("vllm:num_requests_running"), idle.value("vllm:num_requests_waiting")) == (0, 0)
    # The server shares this process's monotonic clock: the first arrived after `launched` and held
    # its slot >= 0.88 s; the second arrived before `queued_by`, so it waited at least the difference.
    queue_count, queue_sum, prefill_sum, inference_sum = (a - b for a, b in zip(after, before, strict=True))
    assert queue_count == 2
    assert queue_sum >= launched + 0.1 + 39 * 0.02 - queued_by
    assert prefill_sum >= 2 * 0.1
    assert inference_sum >= 2 * 0.1 + (39 + 4) * 0.02  # token deadlines count from admission


def test_client_leaving_mid_stream_aborts_the_request(slow_sim: RunningSimulator) -> None:
    aborted = slow_sim.metric("vllm:request_success_total", finished_reason="abort")
    with httpx.stream(
        "POST",
        f"{slow_sim.base_url}/v1/chat/completions",
        json={"messages": CHAT_MESSAGES, "stream": True, "max_tokens": 50},
    ) as response:
        lines = response.iter_lines()
        assert next(lines).startswith("data: ")
    wait_until(lambda: slow_sim.metric("vllm:request_success_total", finished_reason="abort") == aborted + 1)
    assert slow_sim.metric("vllm:num_requests_running") == 0


# --- fault injection ---------------------------------------------------------------------------


def test_error_fault_answers_with_the_status_for_count_requests(faulty: RunningSimulator) -> None:
    state = faulty.arm(mode="error", status=503, count=2)
    assert state == {"mode": "error", "status": 503, "after_tokens": 3, "count": 2, "message": None,
                     "delay_seconds": 1.0}

    with faulty.openai_client() as api:
        for _ in range(2):
            with pytest.raises(openai.APIStatusError) as raised:
                api.chat.completions.create(model=MODEL, messages=CHAT_MESSAGES)
            assert raised.value.status_code == 503
            assert raised.value.body == {
                "message": "Service Unavailable",
                "type": "ServiceUnavailableError",
                "param": None,
                "code": 503,
            }
        assert api.chat.completions.create(model=MODEL, messages=CHAT_MESSAGES).choices
    assert httpx.get(f"{faulty.base_url}/sim/faults").json()["mode"] == "none"


def test_error_fault_500_matches_vllms_generation_error(faulty: RunningSimulator) -> None:
    faulty.arm(mode="error", count=1)
    with faulty.openai_client() as api, pytest.raises(openai.InternalServerError) as raised:
        api.completions.create(model=MODEL, prompt=COMPLETION_PROMPT, stream=True)
    assert raised.value.body == {
        "message": "Internal server error",
        "type": "InternalServerError",
        "param": None,
        "code": 500,
    }


def test_timeout_fault_hangs_until_the_client_gives_up(faulty: RunningSimulator) -> None:
    faulty.arm(mode="timeout", count=1)
    prompt_tokens = faulty.metric("vllm:prompt_tokens_total")
    started = time.monotonic()
    with faulty.openai_client(timeout=0.5) as api, pytest.raises(openai.APITimeoutError):
        api.chat.completions.create(model=MODEL, messages=CHAT_MESSAGES)
    assert time.monotonic() - started >= 0.5
    assert faulty.metric("vllm:prompt_tokens_total") == prompt_tokens  # never reached the engine

    with faulty.openai_client() as api:
        recovered = api.chat.completions.create(model=MODEL, messages=CHAT_MESSAGES)
    assert recovered.usage is not None and recovered.usage.prompt_tokens == CHAT_PROMPT_TOKENS


def test_drop_mid_stream_cuts_the_connection_after_n_tokens(faulty: RunningSimulator) -> None:
    faulty.arm(mode="drop_mid_stream", after_tokens=3, count=1)
    frames: list[str] = []
    with (
        pytest.raises(httpx.RemoteProtocolError),
        httpx.stream(
            "POST",
            f"{faulty.base_url}/v1/chat/completions",
            json={"messages": CHAT_MESSAGES, "stream": True, "stream_options": {"include_usage": True}},
        ) as response,
    ):
        assert response.status_code == 200
        frames.extend(line for line in response.iter_lines() if line)
    assert len(frames) == 1 + 3  # role chunk + three tokens, then nothing: no usage, no [DONE]
    assert "data: [DONE]" not in frames
    assert all('"finish_reason":null' in frame for frame in frames)


def test_drop_mid_stream_surfaces_as_a_connection_error_in_openai(faulty: RunningSimulator) -> None:
    faulty.arm(mode="drop_mid_stream", after_tokens=2, count=1)
    contents: list[str] = []
    with faulty.openai_client() as api, pytest.raises((openai.APIConnectionError, httpx.RemoteProtocolError)):
        for chunk in api.chat.completions.create(
            model=MODEL,
            messages=CHAT_MESSAGES,
            stream=True,
        ):
            contents.append(chunk.choices[0].delta.content or "")
    assert len(contents) == 1 + 2


def test_drop_without_stream_closes_before_any_response(faulty: RunningSimulator) -> None:
    faulty.arm(mode="drop_mid_stream", after_tokens=3, count=1)
    aborted = faulty.metric("vllm:request_success_total", finished_reason="abort")
    with pytest.raises(httpx.RemoteProtocolError, match="Server disconnected without sending a response"):
        httpx.post(f"{faulty.base_url}/v1/completions", json={"prompt": COMPLETION_PROMPT})
    assert faulty.metric("vllm:request_success_total", finished_reason="abort") == aborted + 1

    faulty.arm(mode="drop_mid_stream", after_tokens=0, count=1)
    with faulty.openai_client() as api, pytest.raises(openai.APIConnectionError):
        api.completions.create(model=MODEL, prompt=COMPLETION_PROMPT)


def test_faults_can_be_armed_at_start_up() -> None:
    server = RunningSimulator(
        SimulatorConfig(
            served_model_names=[MODEL],
            ttft_seconds=0,
            per_token_seconds=0,
            faults=FaultPlan(mode="error", status=429, count=1, message="slow down"),
        )
    )
    server.start()
    try:
        with server.openai_client() as api:
            with pytest.raises(openai.RateLimitError) as raised:
                api.completions.create(model=MODEL, prompt=COMPLETION_PROMPT)
            assert raised.value.body == {
                "message": "slow down",
                "type": "TooManyRequestsError",
                "param": None,
                "code": 429,
            }
            assert api.completions.create(model=MODEL, prompt=COMPLETION_PROMPT).choices
    finally:
        server.stop()


def test_fault_api_rejects_unknown_modes(sim: RunningSimulator) -> None:
    response = httpx.post(f"{sim.base_url}/sim/faults", json={"mode": "explode"})
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "body.mode"
