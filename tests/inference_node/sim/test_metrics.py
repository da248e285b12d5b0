"""vLLM's Prometheus metrics: the same names and labels, counted exactly."""

from __future__ import annotations

import httpx
import openai

from tests.inference_node.sim.support import (
    CHAT_MESSAGES,
    CHAT_PROMPT_TOKENS,
    COMPLETION_PROMPT,
    COMPLETION_PROMPT_TOKENS,
    MODEL,
    RunningSimulator,
)

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
