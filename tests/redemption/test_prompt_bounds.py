"""Holds for large or non-text prompts come from the node's tokenizer (redemption.prompts), through the real
service, node agents and simulators: a call whose prompt the node counted is admitted where its size alone would
not fit Sluice-Max-Cost, and a prompt its size cannot bound is held for the model's whole context."""

from __future__ import annotations

from typing import Any

import httpx

from ledger.domain import usage_cost
from redemption.pricing import TEMPLATE_ALLOWANCE
from redemption.sdk import SluiceAuth
from tests.support.stack import SMALL_MODEL, Deployed

LONG_TEXT = " ".join(f"word{i % 97}" for i in range(600))  # ~4.8 KB of JSON, well over the count threshold
IMAGE = {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}


def rates(deployed: Deployed) -> tuple[int, int]:
    rate = deployed.ledger.rate(SMALL_MODEL)
    return rate.input_rate, rate.output_rate


def call(deployed: Deployed, key: Any, body: dict[str, Any], max_cost: int) -> httpx.Response:
    with httpx.Client(base_url=deployed.api, auth=SluiceAuth(key, max_cost=max_cost), timeout=30) as client:
        return client.post("/v1/chat/completions", json=body)


def counted_by_the_model(deployed: Deployed, messages: list[dict[str, Any]]) -> int:
    answer = httpx.post(deployed.sim_url("edge-1") + "/tokenize", json={"model": SMALL_MODEL, "messages": messages})
    count: int = answer.json()["count"]
    return count


def test_a_long_prompt_is_held_for_its_counted_tokens_not_its_size(deployed: Deployed) -> None:
    enterprise = deployed.fund(10)
    deployed.wait_mirrored()
    messages = [{"role": "user", "content": LONG_TEXT}]
    body = {"model": SMALL_MODEL, "messages": messages, "max_tokens": 1}
    size = len(httpx.Request("POST", "http://x", json=body).content)
    prompt_tokens = counted_by_the_model(deployed, messages)
    assert prompt_tokens < size // 3  # the size bound would hold more than three times what the call can cost
    cheapest = usage_cost(prompt_tokens, 1, *rates(deployed))
    assert usage_cost(size + TEMPLATE_ALLOWANCE, 1, *rates(deployed)) > 3 * cheapest

    refused = call(deployed, enterprise, body, cheapest - 1)
    assert refused.status_code == 402, refused.text
    error = refused.json()["error"]
    assert error["code"] == "max_cost_too_low"
    assert f"(at least {cheapest} base units for this body)" in error["message"]

    admitted = call(deployed, enterprise, body, cheapest)
    assert admitted.status_code == 200, admitted.text
    assert admitted.json()["usage"]["prompt_tokens"] == prompt_tokens
    assert int(admitted.headers["Sluice-Cost"]) == cheapest


def test_a_short_prompt_is_held_for_its_size_without_asking_a_node(deployed: Deployed) -> None:
    enterprise = deployed.fund(10)
    deployed.wait_mirrored()
    body = {"model": SMALL_MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}
    size = len(httpx.Request("POST", "http://x", json=body).content)
    cheapest = usage_cost(size + TEMPLATE_ALLOWANCE, 1, *rates(deployed))
    refused = call(deployed, enterprise, body, cheapest - 1)
    assert refused.status_code == 402 and f"(at least {cheapest} base units" in refused.json()["error"]["message"]


def test_an_image_is_held_for_the_whole_context(deployed: Deployed) -> None:
    enterprise = deployed.fund(10)
    deployed.wait_mirrored()
    context = httpx.get(deployed.sim_url("edge-1") + "/v1/models").json()["data"][0]["max_model_len"]
    body = {"model": SMALL_MODEL, "max_tokens": 1,
            "messages": [{"role": "user", "content": [{"type": "text", "text": "what is this?"}, IMAGE]}]}
    cheapest = usage_cost(context, 1, *rates(deployed))
    refused = call(deployed, enterprise, body, cheapest - 1)
    assert refused.status_code == 402, refused.text
    assert f"(at least {cheapest} base units for this body)" in refused.json()["error"]["message"]
