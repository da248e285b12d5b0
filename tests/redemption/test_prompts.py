"""redemption.prompts against nodes that fail: absent, refusing connections, slow, answering garbage or inflating
a count. Text prompts fall back to their size bound (which a node cannot raise); prompts their size cannot bound
are refused with 503 and nothing held."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web

from ledger.stack.probes import free_port
from redemption import errors
from redemption.pricing import prompt_token_bound
from redemption.prompts import CHAT_PATH, prompt_bound
from redemption.routing import NodeRegistry

MODEL = "m"
TEXT = {"model": MODEL, "messages": [{"role": "user", "content": "x " * 2000}]}
IMAGE = {"model": MODEL, "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "u"}}]}]}
SMALL = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def registry_at(url: str | None) -> NodeRegistry:
    registry = NodeRegistry(stale_seconds=10)
    if url is not None:
        registry.heartbeat("0x" + "11" * 20, url, [MODEL], "edge", "r", 4, 0, 0)
    return registry


class Node:
    def __init__(self, handler: Handler) -> None:
        self.handler, self.hits = handler, 0
        self.url = f"http://127.0.0.1:{free_port()}"

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.hits += 1
        return await self.handler(request)


async def bound(registry: NodeRegistry, payload: dict[str, Any]) -> int:
    async with aiohttp.ClientSession() as client:
        return await prompt_bound(client, registry, CHAT_PATH, payload, orjson.dumps(payload), None, None,
                                  min_bytes=2048, timeout=0.3)  # fmt: skip


def with_node(handler: Handler, run: Callable[[Node], Awaitable[None]]) -> None:
    asyncio.run(_with_node(handler, run))


async def _with_node(handler: Handler, run: Callable[[Node], Awaitable[None]]) -> None:
    node = Node(handler)
    app = web.Application()
    app.router.add_post("/sluice/prompt-tokens/v1/chat/completions", node.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", int(node.url.rsplit(":", 1)[1])).start()
    try:
        await run(node)
    finally:
        await runner.cleanup()


def answering(prompt_tokens: int, exact: bool = True, delay: float = 0.0) -> Handler:
    async def handler(request: web.Request) -> web.StreamResponse:
        await asyncio.sleep(delay)
        return web.json_response({"prompt_tokens": prompt_tokens, "exact": exact, "reason": None})
    return handler


def test_a_counted_text_prompt_is_held_for_its_count() -> None:
    async def run(node: Node) -> None:
        assert await bound(registry_at(node.url), TEXT) == 2012
        assert node.hits == 1
    with_node(answering(2012), run)


def test_a_node_cannot_raise_a_text_prompt_over_its_size() -> None:
    async def run(node: Node) -> None:
        assert await bound(registry_at(node.url), TEXT) == prompt_token_bound(orjson.dumps(TEXT))
    with_node(answering(10**9), run)


def test_a_small_text_prompt_asks_no_node() -> None:
    async def run(node: Node) -> None:
        assert await bound(registry_at(node.url), SMALL) == prompt_token_bound(orjson.dumps(SMALL))
        assert node.hits == 0
    with_node(answering(1), run)


def test_an_image_is_held_for_what_the_node_says() -> None:
    async def run(node: Node) -> None:
        assert await bound(registry_at(node.url), IMAGE) == 4096
    with_node(answering(4096, exact=False), run)


async def garbage(request: web.Request) -> web.StreamResponse:
    return web.Response(body=b'{"prompt_tokens": -1}', content_type="application/json")


async def refusing(request: web.Request) -> web.StreamResponse:
    return web.json_response({"error": {"message": "no"}}, status=404)


@pytest.mark.parametrize("failure", ["no-node", "dead-port", "slow", "garbage", "refusing"])
def test_without_a_count_text_falls_back_to_size_and_images_are_refused(failure: str) -> None:
    async def check(url: str | None) -> None:
        registry = registry_at(url)
        assert await bound(registry, TEXT) == prompt_token_bound(orjson.dumps(TEXT))
        with pytest.raises(errors.NoCapacity) as refused:
            await bound(registry, IMAGE)
        assert refused.value.status == 503 and refused.value.param == "messages"
        assert str(refused.value).startswith(
            "no node could bound the prompt tokens of this request in time (a message part of type 'image_url' is"
            " not text); nothing was charged, retry later")

    if failure == "no-node":
        asyncio.run(check(None))
    elif failure == "dead-port":
        asyncio.run(check(f"http://127.0.0.1:{free_port()}"))
    else:
        handler = {"slow": answering(5, delay=2.0), "garbage": garbage, "refusing": refusing}[failure]

        async def run(node: Node) -> None:
            await check(node.url)
        with_node(handler, run)
