"""What a call may cost before it runs (`redemption.pricing.plan_cost`): the prompt bound, `max_tokens`
clamped so the worst case fits `Sluice-Max-Cost`, the hold, and 402 max_cost_too_low below one token."""

from __future__ import annotations

import pytest

from ledger.domain import usage_cost
from redemption.errors import MaxCostTooLow
from redemption.pricing import TEMPLATE_ALLOWANCE, CostPlan, plan_cost, prompt_token_bound

# 2 and 3 base units per model token: a 68-byte body bounds the prompt at 100 tokens, worth 200.
INPUT_RATE, OUTPUT_RATE = 2_000_000, 3_000_000
BODY = b"x" * 68


def test_the_prompt_bound_is_the_body_length_plus_the_template_allowance() -> None:
    assert TEMPLATE_ALLOWANCE == 32
    assert prompt_token_bound(b"") == 32
    assert prompt_token_bound(BODY) == 100
    assert prompt_token_bound("é".encode()) == 34  # bytes, not characters


def test_a_max_cost_with_room_keeps_the_requested_max_tokens() -> None:
    plan = plan_cost(BODY, 10, 16, 10**6, INPUT_RATE, OUTPUT_RATE)
    assert plan == CostPlan(prompt_bound=100, max_tokens=10, hold=230)
    assert plan.hold == usage_cost(100, 10, INPUT_RATE, OUTPUT_RATE)


def test_no_requested_max_tokens_takes_the_endpoint_default() -> None:
    assert plan_cost(BODY, None, 16, 10**6, INPUT_RATE, OUTPUT_RATE) == CostPlan(100, 16, 248)
    assert plan_cost(BODY, None, 32_768, 10**6, INPUT_RATE, OUTPUT_RATE) == CostPlan(100, 32_768, 98_504)


@pytest.mark.parametrize(("max_cost", "max_tokens", "hold"), [
    (230, 10, 230),  # exactly the requested worst case: nothing clamped
    (229, 9, 227),
    (216, 5, 215),   # 5.33 tokens fit: rounded down, the hold is under max_cost
    (215, 5, 215),   # the hold is exactly max_cost
    (204, 1, 203),
])
def test_max_tokens_is_clamped_until_the_worst_case_fits(max_cost: int, max_tokens: int, hold: int) -> None:
    plan = plan_cost(BODY, 10, 16, max_cost, INPUT_RATE, OUTPUT_RATE)
    assert plan == CostPlan(prompt_bound=100, max_tokens=max_tokens, hold=hold)
    assert plan.hold <= max_cost


def test_the_hold_rounds_up_like_the_rate_card_and_still_fits() -> None:
    # 1.5 and 2.5 per token: a 1-byte body is 33 prompt tokens = 49.5; 4 completion tokens = 10 more.
    plan = plan_cost(b"x", None, 16, 60, 1_500_000, 2_500_000)
    assert plan == CostPlan(prompt_bound=33, max_tokens=4, hold=60)  # ceil(59.5); 5 tokens would cost 62
    assert usage_cost(33, 5, 1_500_000, 2_500_000) == 62


def test_one_completion_token_is_the_boundary_of_max_cost_too_low() -> None:
    cheapest = usage_cost(100, 1, INPUT_RATE, OUTPUT_RATE)
    assert cheapest == 203
    assert plan_cost(BODY, 10, 16, 203, INPUT_RATE, OUTPUT_RATE) == CostPlan(100, 1, 203)
    with pytest.raises(MaxCostTooLow) as refused:
        plan_cost(BODY, 10, 16, 202, INPUT_RATE, OUTPUT_RATE)
    error = refused.value
    assert (error.status, error.code, error.param) == (402, "max_cost_too_low", "Sluice-Max-Cost")
    assert error.message == ("Sluice-Max-Cost 202 does not cover the prompt and one completion token at this "
                             "model's rates (at least 203 base units for this body)")
    assert error.body() == {"error": {"message": error.message, "type": "insufficient_quota",
                                      "param": "Sluice-Max-Cost", "code": "max_cost_too_low"}}


def test_a_max_cost_below_the_prompt_alone_is_too_low() -> None:
    with pytest.raises(MaxCostTooLow, match=r"^Sluice-Max-Cost 199 does not cover .* \(at least 203 base units"):
        plan_cost(BODY, 10, 16, 199, INPUT_RATE, OUTPUT_RATE)
    with pytest.raises(MaxCostTooLow, match=r"^Sluice-Max-Cost 0 does not cover .* \(at least 203 base units"):
        plan_cost(BODY, 10, 16, 0, INPUT_RATE, OUTPUT_RATE)


def test_a_zero_output_rate_never_clamps_max_tokens() -> None:
    # Completion tokens are free: any number fits once the prompt does.
    assert plan_cost(BODY, 10_000, 16, 200, INPUT_RATE, 0) == CostPlan(100, 10_000, 200)
    assert plan_cost(BODY, None, 16, 200, INPUT_RATE, 0) == CostPlan(100, 16, 200)
    with pytest.raises(MaxCostTooLow, match=r"^Sluice-Max-Cost 199 .* \(at least 200 base units for this body\)$"):
        plan_cost(BODY, 10_000, 16, 199, INPUT_RATE, 0)


def test_a_hold_is_never_below_one_base_unit() -> None:
    # A fraction of a base unit rounds up to 1; a free model still holds 1.
    assert plan_cost(BODY, 10, 16, 1, 1, 1) == CostPlan(100, 10, 1)
    assert plan_cost(BODY, 10, 16, 1, 0, 0) == CostPlan(100, 10, 1)
