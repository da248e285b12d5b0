"""What a call may cost before it runs: the prompt-token bound, the clamped `max_tokens`, the hold.

The hold is the worst case at the model's on-chain rates and never exceeds the
signed `Sluice-Max-Cost`: `max_tokens` is lowered until it fits.
"""

from __future__ import annotations

from dataclasses import dataclass

from ledger.domain import RATE_DENOMINATOR, usage_cost
from redemption import errors

# Every prompt token is at least one byte of the JSON body, and each message's JSON
# framing (`{"role":"user","content":""}`, 27 bytes) outweighs its chat-template tokens;
# a small constant covers the template's BOS and generation prompt.
TEMPLATE_ALLOWANCE = 32


@dataclass(frozen=True, slots=True)
class CostPlan:
    prompt_bound: int
    max_tokens: int
    hold: int


def prompt_token_bound(body: bytes) -> int:
    """An upper bound on the prompt tokens of a request, with no tokenizer at hand."""
    return len(body) + TEMPLATE_ALLOWANCE


def plan_cost(body: bytes, requested_max_tokens: int | None, default_max_tokens: int, max_cost: int,
              input_rate: int, output_rate: int, *, prompt_bound: int | None = None) -> CostPlan:
    """Clamp `max_tokens` so the worst case fits `max_cost`; 402 max_cost_too_low when not even one fits.

    `prompt_bound` is the prompt-token bound when a node counted it (`redemption.prompts`), else the body's size.
    """
    if prompt_bound is None:
        prompt_bound = prompt_token_bound(body)
    wanted = default_max_tokens if requested_max_tokens is None else requested_max_tokens
    budget = max_cost * RATE_DENOMINATOR - prompt_bound * input_rate
    fit = wanted if output_rate == 0 else budget // output_rate
    max_tokens = min(wanted, fit)
    if budget < 0 or max_tokens < 1:
        cheapest = usage_cost(prompt_bound, 1, input_rate, output_rate)
        raise errors.MaxCostTooLow(
            f"Sluice-Max-Cost {max_cost} does not cover the prompt and one completion token at this model's rates "
            f"(at least {cheapest} base units for this body)",
            "Sluice-Max-Cost",
        )
    hold = usage_cost(prompt_bound, max_tokens, input_rate, output_rate)
    return CostPlan(prompt_bound, max_tokens, max(hold, 1))
