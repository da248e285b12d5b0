"""Prompt-token bounds from the model's own tokenizer: what the service holds for before it dispatches.

A request's prompt tokens are counted with vLLM's ``/tokenize``, which renders chat messages through
the same chat template as generation, so the count is vLLM's ``usage.prompt_tokens`` exactly. Where
the prompt depends on something ``/tokenize`` does not render the way generation does (images and
other non-text parts, tool schemas, request-supplied chat templates or documents, prompt embeddings),
the bound is the model's context window instead: vLLM refuses any prompt longer than that, so the
bound still holds, just loosely.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from inference_node.agent.bounds import Endpoint, is_int
from inference_node.agent.errors import InvalidRequestBody, NodeNotReady
from inference_node.protocol import PromptTokenBound, uncounted_reason

# The chat fields /tokenize takes as generation does; vLLM's defaults apply when they are absent.
_CHAT_RENDER_FIELDS = ("add_generation_prompt", "continue_final_message", "add_special_tokens", "chat_template_kwargs")

Tokenize = Callable[[dict[str, Any]], Awaitable[int]]  # one /tokenize request -> vLLM's `count`
ContextLength = Callable[[str], Awaitable[int | None]]


def _check_chat(body: dict[str, Any]) -> None:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise InvalidRequestBody("`messages` must be a non-empty array", param="messages")
    for message in messages:
        if not isinstance(message, dict):
            raise InvalidRequestBody("each message must be an object", param="messages")
        content = message.get("content")
        if content is not None and not isinstance(content, (str, list)):
            raise InvalidRequestBody("message `content` must be a string or an array of parts", param="messages")


def _completion_prompts(body: dict[str, Any]) -> tuple[list[str], int] | str:
    """(text prompts to count, tokens already given as ids), or why the prompt cannot be counted."""
    reason = uncounted_reason(body, chat=False)
    if reason is not None:
        return reason
    prompt = body.get("prompt")
    if isinstance(prompt, str):
        return [prompt], 0
    if isinstance(prompt, list) and prompt:
        if all(isinstance(item, str) for item in prompt):
            return list(prompt), 0
        if all(is_int(item) for item in prompt):
            return [], len(prompt)
        if all(isinstance(item, list) and item and all(is_int(t) for t in item) for item in prompt):
            return [], sum(len(item) for item in prompt)
    raise InvalidRequestBody("`prompt` must be a string, an array of strings or an array of token ids", param="prompt")


def _prompt_count(body: dict[str, Any]) -> int:
    prompt = body.get("prompt")
    if isinstance(prompt, list) and prompt and isinstance(prompt[0], (str, list)):
        return len(prompt)
    return 1


async def prompt_token_bound(body: dict[str, Any], endpoint: Endpoint, tokenize: Tokenize,
                             context_length: ContextLength) -> PromptTokenBound:  # fmt: skip
    """The bound on `body`'s prompt tokens: vLLM's count where it renders like generation, else the context."""
    model = body.get("model")
    if not isinstance(model, str):
        raise InvalidRequestBody("`model` must be a string", param="model")
    if endpoint.is_chat:
        _check_chat(body)
        reason = uncounted_reason(body, chat=True)
        if reason is None:
            chat: dict[str, Any] = {"model": model, "messages": body["messages"]}
            chat.update({field: body[field] for field in _CHAT_RENDER_FIELDS if body.get(field) is not None})
            return PromptTokenBound(prompt_tokens=await tokenize(chat), exact=True)
        prompts = 1
    else:
        counted = _completion_prompts(body)
        if not isinstance(counted, str):
            texts, given = counted
            add_special = body.get("add_special_tokens")
            total = given
            for text in texts:
                completion: dict[str, Any] = {"model": model, "prompt": text}
                if isinstance(add_special, bool):
                    completion["add_special_tokens"] = add_special
                total += await tokenize(completion)
            return PromptTokenBound(prompt_tokens=total, exact=True)
        reason, prompts = counted, _prompt_count(body)
    context = await context_length(model)
    if context is None:
        raise NodeNotReady(f"the context length of {model!r} is unknown, so this prompt cannot be bounded ({reason})")
    return PromptTokenBound(prompt_tokens=context * prompts, exact=False, reason=reason)
