"""Output bounds: how a request's own limit and its ticket's share set the ``max_tokens`` vLLM is sent."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from inference_node.agent.errors import InvalidRequestBody

# vLLM (like OpenAI) gives a completions call without `max_tokens` (or with null) 16 tokens; the clamp keeps it.
COMPLETIONS_DEFAULT_MAX_TOKENS = 16
_MAX_TOKENS_CAP = 2**31 - 1  # a ticket may allow more than any context; JSON for vLLM must stay in int64


@dataclass(frozen=True)
class Endpoint:
    """One generation route and how its request bounds output length."""

    name: str
    path: str
    limit_fields: tuple[str, ...]  # vLLM reads the first non-zero one

    @property
    def is_chat(self) -> bool:
        return self.name == "chat"


CHAT = Endpoint("chat", "/v1/chat/completions", ("max_completion_tokens", "max_tokens"))
COMPLETIONS = Endpoint("completions", "/v1/completions", ("max_tokens",))


def is_int(value: object) -> bool:
    # bool is an int subclass, and vLLM's lax pydantic would turn "9999" or 9999.0 into a bound we never clamped.
    return type(value) is int


def optional_int(body: dict[str, Any], field: str) -> int | None:
    value = body.get(field)
    if value is None:
        return None
    if not is_int(value):
        raise InvalidRequestBody(f"`{field}` must be an integer", param=field)
    number: int = value
    return number


def _prompt_count(prompt: object) -> int:
    """How many prompts a completions request carries (vLLM's four prompt shapes)."""
    if isinstance(prompt, list) and prompt and isinstance(prompt[0], (str, list)):
        return len(prompt)
    return 1


@dataclass(frozen=True)
class OutputBounds:
    """What bounds a request's output: the client's own limit (vLLM's reading) and the ticket's share."""

    requested: int | None  # None: the client set no limit, so vLLM would fill the context window
    per_choice: int  # the ticket's completion tokens split over the request's choices


def output_bounds(body: dict[str, Any], endpoint: Endpoint, budget: int) -> OutputBounds:
    """The ticket bounds the job's completion tokens, so each of n x prompts choices gets an equal share."""
    n = optional_int(body, "n")
    choices = max(n or 1, 1) * (1 if endpoint.is_chat else _prompt_count(body.get("prompt")))
    per_choice = min(budget // choices, _MAX_TOKENS_CAP)
    if per_choice < 1:
        raise InvalidRequestBody(
            f"the ticket allows {budget} completion tokens, fewer than the {choices} choices asked for", param="n"
        )
    values = [optional_int(body, field) for field in endpoint.limit_fields]
    if endpoint.is_chat:
        requested = values[0] or values[1]  # exactly vLLM's reading: max_completion_tokens or max_tokens
    else:
        requested = COMPLETIONS_DEFAULT_MAX_TOKENS if values[0] is None else values[0]
    return OutputBounds(requested, per_choice)


def write_output_limit(body: dict[str, Any], endpoint: Endpoint, limit: int) -> None:
    """Set the request's output limit in place, in every limit field the client used (else `max_tokens`)."""
    written = False
    for field in endpoint.limit_fields:
        if body.get(field) is not None:
            body[field] = limit
            written = True
    if not written:
        body["max_tokens"] = limit


class ContextLengths(Protocol):
    """What the clamp learns from vLLM: a model's context window, None when unknown."""

    async def context_length(self, model: str) -> int | None: ...


async def clamp_output(body: dict[str, Any], endpoint: Endpoint, model: str, budget: int, vllm: ContextLengths) -> None:
    """Bound the output by the ticket without making vLLM refuse a request it would have run.

    vLLM 0.32 refuses a limit over the context window, but answers a prompt and a limit that only
    overflow it together, cutting the limit to what the prompt leaves. So the limit written is the
    tightest of the client's, the ticket's share and the context; where the client set none and the
    ticket's share covers the context, vLLM's own default (the context left) is within the ticket.
    """
    bounds = output_bounds(body, endpoint, budget)
    limit = bounds.per_choice if bounds.requested is None else min(bounds.requested, bounds.per_choice)
    context = await vllm.context_length(model)
    if context is not None:
        if bounds.requested is None and bounds.per_choice >= context:
            return
        limit = min(limit, context)
    write_output_limit(body, endpoint, limit)
    min_tokens = body.get("min_tokens")
    if isinstance(min_tokens, int) and is_int(min_tokens) and min_tokens > limit:
        body["min_tokens"] = limit  # vLLM refuses min_tokens above max_tokens; the ticket's bound wins
