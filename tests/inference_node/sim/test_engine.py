"""The simulated engine: the ``max_num_seqs`` queue, the latency timeline, aborts."""

from __future__ import annotations

import threading
import time

import httpx

from tests.inference_node.sim.support import CHAT_MESSAGES, CHAT_PROMPT_TOKENS, MODEL, RunningSimulator, wait_until


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
                extra_body={"ignore_eos": True},  # exactly max_tokens, not the simulator's natural length
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
    # The first request holds the only slot for 0.1 s + 199 x 0.02 s, long enough to queue behind it even on a
    # loaded machine (a new client thread can take a second to send).
    launched = time.monotonic()
    first = threading.Thread(target=stream, args=("first", 200))
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

    assert chunks_received == {"first": 1 + 200, "second": 1 + 5}
    idle = slow_sim.metrics()
    assert (idle.value("vllm:num_requests_running"), idle.value("vllm:num_requests_waiting")) == (0, 0)
    # The server shares this process's monotonic clock: the first arrived after `launched` and held
    # its slot >= 4.08 s; the second arrived before `queued_by`, so it waited at least the difference.
    queue_count, queue_sum, prefill_sum, inference_sum = (a - b for a, b in zip(after, before, strict=True))
    assert queue_count == 2
    assert queue_sum >= launched + 0.1 + 199 * 0.02 - queued_by
    assert prefill_sum >= 2 * 0.1
    assert inference_sum >= 2 * 0.1 + (199 + 4) * 0.02  # token deadlines count from admission


def test_client_leaving_mid_stream_aborts_the_request(slow_sim: RunningSimulator) -> None:
    before = slow_sim.metrics()
    with httpx.stream(
        "POST",
        f"{slow_sim.base_url}/v1/chat/completions",
        json={"messages": CHAT_MESSAGES, "stream": True, "max_tokens": 50, "ignore_eos": True},
    ) as response:
        lines = response.iter_lines()
        assert next(lines).startswith("data: ")
    wait_until(lambda: slow_sim.metric("vllm:num_requests_running") == 0)
    after = slow_sim.metrics()
    # As in vLLM 0.32: a request its client left is counted as finished by no reason, abort included; only
    # its prompt and the tokens it made before the abort are (about 1 s of generation was cut short).
    assert after.total("vllm:request_success_total") == before.total("vllm:request_success_total")
    assert after.value("vllm:request_success_total", finished_reason="abort") == 0
    assert after.value("vllm:prompt_tokens_total") - before.value("vllm:prompt_tokens_total") == CHAT_PROMPT_TOKENS
    assert 1 <= after.value("vllm:generation_tokens_total") - before.value("vllm:generation_tokens_total") < 50
