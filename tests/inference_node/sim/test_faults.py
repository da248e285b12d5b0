"""Fault injection (``/sim/faults``): errors, hangs, dropped connections, faults armed at start-up."""

from __future__ import annotations

import time

import httpx
import openai
import pytest

from inference_node.sim.config import SimulatorConfig
from inference_node.sim.faults import FaultPlan
from tests.inference_node.sim.support import (
    CHAT_MESSAGES,
    CHAT_PROMPT_TOKENS,
    COMPLETION_PROMPT,
    MODEL,
    RunningSimulator,
)


def test_error_fault_answers_with_the_status_for_count_requests(faulty: RunningSimulator) -> None:
    state = faulty.arm(mode="error", status=503, count=2)
    assert state == {
        "mode": "error",
        "status": 503,
        "after_tokens": 3,
        "count": 2,
        "message": None,
        "delay_seconds": 1.0,
    }

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
    finished = faulty.metrics().total("vllm:request_success_total")
    with pytest.raises(httpx.RemoteProtocolError, match="Server disconnected without sending a response"):
        httpx.post(f"{faulty.base_url}/v1/completions", json={"prompt": COMPLETION_PROMPT})
    # The engine aborted the request: counted as finished by no reason, as vLLM 0.32 counts its aborts
    assert faulty.metrics().total("vllm:request_success_total") == finished
    assert faulty.metric("vllm:request_success_total", finished_reason="abort") == 0

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
