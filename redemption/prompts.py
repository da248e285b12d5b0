"""The prompt-token bound a call is held for: the body's size where that is safe and small, else the node's count.

Every prompt token of a text-only request is at least one byte of its JSON body, so ``len(body) + 32``
bounds it with no tokenizer (`pricing.prompt_token_bound`); for a large prompt that bound is several
times the real count and the hold ties up funds the call will never spend. Where the body is large, or
its prompt is not bounded by its size at all (images, tool schemas, request-supplied chat templates,
prompt embeddings: `inference_node.protocol.uncounted_reason`), the service asks a node that serves the
model to count it with the model's own tokenizer (``PROMPT_TOKENS_PATH``), waiting at most
``prompt_count_timeout_seconds``. A text-only request takes the smaller of the count and its size bound;
one whose size bounds nothing is refused (503, nothing held) when no node can bound it.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import aiohttp
import orjson
from pydantic import ValidationError

from inference_node.protocol import PROMPT_TOKENS_PATH, PromptTokenBound, uncounted_reason
from redemption import errors
from redemption.pricing import prompt_token_bound
from redemption.routing import NodeRegistry

log = logging.getLogger(__name__)

CHAT_PATH = "/v1/chat/completions"


async def node_count(client: aiohttp.ClientSession, registry: NodeRegistry, path: str, payload: dict[str, Any],
                     tier: str | None, region: str | None, timeout: float) -> PromptTokenBound | None:  # fmt: skip
    """The best live node's bound on the prompt's tokens, or None when it cannot give one in time."""
    candidates = registry.candidates(str(payload.get("model")), tier, region)
    if not candidates:
        return None
    node = candidates[0]
    url = node.url.rstrip("/") + PROMPT_TOKENS_PATH + path
    try:
        async with asyncio.timeout(timeout):
            async with client.post(url, data=orjson.dumps(payload),
                                   headers={"content-type": "application/json"}) as response:  # fmt: skip
                status, content = response.status, await response.read()
    except (aiohttp.ClientError, TimeoutError) as exc:
        log.info("node %s did not count a prompt: %r", node.node, exc)
        return None
    if status != 200:
        log.info("node %s did not count a prompt: HTTP %d %s", node.node, status, content[:200])
        return None
    try:
        return PromptTokenBound.model_validate_json(content)
    except ValidationError:
        log.warning("node %s answered a prompt count the service cannot read: %s", node.node, content[:200])
        return None


async def prompt_bound(client: aiohttp.ClientSession, registry: NodeRegistry, path: str, payload: dict[str, Any],
                       body: bytes, tier: str | None, region: str | None, *, min_bytes: int,
                       timeout: float) -> int:  # fmt: skip
    """An upper bound on the prompt tokens vLLM will bill for this request."""
    size_bound = prompt_token_bound(body)
    reason = uncounted_reason(payload, chat=path == CHAT_PATH)
    if reason is None and len(body) < min_bytes:
        return size_bound
    counted = await node_count(client, registry, path, payload, tier, region, timeout)
    if reason is None:
        return size_bound if counted is None else min(counted.prompt_tokens, size_bound)
    if counted is None:
        raise errors.NoCapacity(
            f"no node could bound the prompt tokens of this request in time ({reason}); nothing was charged, "
            "retry later",
            "messages" if path == CHAT_PATH else "prompt",
        )
    return counted.prompt_tokens
