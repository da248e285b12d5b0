"""RateCard behaviour: published rates and their events, the rounded-up quote, listing and delisting."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest
from eth_utils import keccak
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ledger.chain.client import Ledger, Rate, role_id
from ledger.chain.deploy import parse_models
from ledger.chain.sender import TxResult
from ledger.config import Settings
from ledger.domain import Tier, model_id, usage_cost
from ledger.units import ONE_TOKEN
from tests.support.assertions import events, reverts

if TYPE_CHECKING:
    from tests.support.ledger import Actors

MODEL = "sluice-test/tiny-1B"






def delist(ledger: Ledger, signer: Any, model: str) -> TxResult:
    return ledger._transact(signer, ledger.rate_card.functions.delist(model_id(model)))


def test_model_id_is_keccak_of_the_utf8_name() -> None:
    assert model_id("Qwen/Qwen2.5-72B-Instruct") == keccak(b"Qwen/Qwen2.5-72B-Instruct")
    assert model_id("modèle") == keccak("modèle".encode())


def test_deployment_publishes_the_configured_models(ledger: Ledger, ledger_settings: Settings) -> None:
    configured = parse_models(ledger_settings.models)
    assert ledger.rates() == [Rate(name, i, o, tier) for name, i, o, tier in configured]
    assert ledger.rate_card.functions.models().call() == [model_id(name) for name, *_ in configured]
    for name, *_ in configured:
        assert ledger.rate_card.functions.nameOf(model_id(name)).call() == name


def test_set_rate_lists_a_new_model(ledger: Ledger, actors: Actors) -> None:
    models_before = ledger.rate_card.functions.models().call()

    tx = ledger.set_rate(actors.operator, MODEL, 3 * ONE_TOKEN, 9 * ONE_TOKEN, Tier.EDGE)

    mid = keccak(MODEL.encode())
    assert events(ledger.rate_card.events.ModelListed, tx) == [{"model": mid, "name": MODEL, "tier": int(Tier.EDGE)}]
    assert events(ledger.rate_card.events.RateSet, tx) == [
        {"model": mid, "inputRate": 3 * ONE_TOKEN, "outputRate": 9 * ONE_TOKEN}
    ]
    # The DESIGN signature, with the model id as the indexed topic auditors filter on.
    topic = keccak(b"RateSet(bytes32,uint256,uint256)")
    assert [bytes(log["topics"][1]) for log in tx.receipt["logs"] if bytes(log["topics"][0]) == topic] == [mid]
    assert ledger.rate(MODEL) == Rate(MODEL, 3 * ONE_TOKEN, 9 * ONE_TOKEN, Tier.EDGE)
    assert ledger.rate_card.functions.models().call() == [*models_before, mid]
    assert ledger.rate_card.functions.nameOf(mid).call() == MODEL


def test_set_rate_again_only_reprices(ledger: Ledger, actors: Actors) -> None:
    ledger.set_rate(actors.operator, MODEL, 3, 9, Tier.EDGE)
    models_before = ledger.rate_card.functions.models().call()

    tx = ledger.set_rate(actors.operator, MODEL, 4, 11, Tier.EDGE)

    assert events(ledger.rate_card.events.ModelListed, tx) == []
    assert events(ledger.rate_card.events.RateSet, tx) == [{"model": model_id(MODEL), "inputRate": 4, "outputRate": 11}]
    assert ledger.rate(MODEL) == Rate(MODEL, 4, 11, Tier.EDGE)
    assert ledger.rate_card.functions.models().call() == models_before


def test_set_rate_with_a_new_tier_relists(ledger: Ledger, actors: Actors) -> None:
    ledger.set_rate(actors.operator, MODEL, 3, 9, Tier.EDGE)
    models_before = ledger.rate_card.functions.models().call()

    tx = ledger.set_rate(actors.operator, MODEL, 3, 9, Tier.CLOUD)

    assert events(ledger.rate_card.events.ModelListed, tx) == [
        {"model": model_id(MODEL), "name": MODEL, "tier": int(Tier.CLOUD)}
    ]
    assert events(ledger.rate_card.events.RateSet, tx) == [{"model": model_id(MODEL), "inputRate": 3, "outputRate": 9}]
    assert ledger.rate(MODEL).tier == Tier.CLOUD
    assert ledger.rate_card.functions.models().call() == models_before


@pytest.mark.parametrize("name", ["", "x" * 129, "é" * 65])
def test_set_rate_refuses_bad_names(ledger: Ledger, actors: Actors, name: str) -> None:
    with reverts("RateCardInvalidName", length=len(name.encode())):
        ledger.set_rate(actors.operator, name, 1, 1, Tier.EDGE)


def test_set_rate_accepts_a_128_byte_name(ledger: Ledger, actors: Actors) -> None:
    name = "é" * 64
    ledger.set_rate(actors.operator, name, 1, 2, Tier.REGIONAL)
    assert ledger.rate(name) == Rate(name, 1, 2, Tier.REGIONAL)


def test_only_rate_setter_role_sets_rates(ledger: Ledger, actors: Actors) -> None:
    with reverts(
        "AccessControlUnauthorizedAccount", account=actors.other.address, neededRole=role_id("RATE_SETTER_ROLE")
    ):
        ledger.set_rate(actors.other, MODEL, 1, 1, Tier.EDGE)
    with reverts("RateCardUnknownModel", model=model_id(MODEL)):
        ledger.rate(MODEL)

    ledger.grant_role(actors.operator, "RATE_SETTER_ROLE", actors.other.address)
    ledger.set_rate(actors.other, MODEL, 1, 1, Tier.EDGE)
    assert ledger.rate(MODEL) == Rate(MODEL, 1, 1, Tier.EDGE)


# -- quote -----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("prompt", "completion", "cost"),
    [
        (0, 0, 0),
        (1, 0, 1),  # 3 -> rounds up to one base unit
        (333_333, 0, 1),  # 999_999
        (0, 142_857, 1),  # 999_999
        (333_334, 0, 2),  # 1_000_002
        (1_000_000, 0, 3),  # exactly 3e6
        (0, 1_000_000, 7),  # exactly 7e6
        (1_000_000, 1_000_000, 10),  # exactly 10e6
        (2_000_000, 1, 7),  # 6e6 + 7
        (1, 1_000_000, 8),  # 7e6 + 3
    ],
)
def test_quote_rounds_up(ledger: Ledger, actors: Actors, prompt: int, completion: int, cost: int) -> None:
    ledger.set_rate(actors.operator, MODEL, 3, 7, Tier.EDGE)
    assert ledger.quote_usage(MODEL, prompt, completion) == cost
    assert usage_cost(prompt, completion, 3, 7) == cost


def test_quote_at_an_exact_multiple_and_one_above(ledger: Ledger, actors: Actors) -> None:
    # Rates of one base unit per 1M model tokens make the numerator the token count itself.
    ledger.set_rate(actors.operator, MODEL, 1, 1, Tier.EDGE)
    for n in (1, 2, 1_000):
        assert ledger.quote_usage(MODEL, n * 1_000_000, 0) == n
        assert ledger.quote_usage(MODEL, n * 1_000_000, 1) == n + 1
        assert ledger.quote_usage(MODEL, n * 1_000_000 - 1, 0) == n


def test_quote_with_production_sized_rates(ledger: Ledger, actors: Actors) -> None:
    ledger.set_rate(actors.operator, MODEL, 20 * ONE_TOKEN, 60 * ONE_TOKEN, Tier.EDGE)
    # 20 tokens per 1M prompt tokens: one prompt token costs exactly 20e12 base units.
    assert ledger.quote_usage(MODEL, 1, 0) == 20 * 10**12
    assert ledger.quote_usage(MODEL, 1_234, 567) == 1_234 * 20 * 10**12 + 567 * 60 * 10**12


def test_quote_overflow_panics(ledger: Ledger, actors: Actors) -> None:
    ledger.set_rate(actors.operator, MODEL, 2**255, 0, Tier.EDGE)
    with reverts("Panic", code=0x11):
        ledger.quote_usage(MODEL, 2, 0)


def test_quote_of_unknown_model_is_refused(ledger: Ledger) -> None:
    with reverts("RateCardUnknownModel", model=keccak(b"no-such-model")):
        ledger.quote_usage("no-such-model", 1, 1)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    prompt=st.integers(0, 10**9),
    completion=st.integers(0, 10**9),
    input_rate=st.sampled_from([0, 1, 3, 999_999, 1_000_000, 1_000_001, 20 * ONE_TOKEN, 120 * ONE_TOKEN + 7]),
    output_rate=st.sampled_from([0, 1, 7, 1_000_000, 60 * ONE_TOKEN, 360 * ONE_TOKEN + 13]),
)
def test_quote_matches_python_formula(
    ledger: Ledger, prompt: int, completion: int, input_rate: int, output_rate: int
) -> None:
    # Read-only: eth_call with a state override, so examples share nothing and need no revert.
    slot_base = _rate_slot(ledger, model_id("fuzz"))
    state = {
        ledger.rate_card.address: {
            "stateDiff": {
                _hex32(slot_base): _hex32(input_rate),
                _hex32(slot_base + 1): _hex32(output_rate),
                _hex32(slot_base + 2): _hex32(1 << 8),  # tier Edge (0) in byte 0, listed = true in byte 1
            }
        }
    }
    data = ledger.rate_card.functions.quote(model_id("fuzz"), prompt, completion)._encode_transaction_data()
    raw = ledger.w3.eth.call({"to": ledger.rate_card.address, "data": data}, "latest", state)
    expected = -(-(prompt * input_rate + completion * output_rate) // 1_000_000)
    assert int.from_bytes(raw, "big") == expected == usage_cost(prompt, completion, input_rate, output_rate)


def _hex32(value: int) -> str:
    return "0x" + value.to_bytes(32, "big").hex()


def _rate_slot(ledger: Ledger, model: bytes) -> int:
    """Storage slot of `_rates[model]` (the mapping is the first state variable after AccessControl's)."""
    # AccessControl keeps `_roles` at slot 0; RateCard's `_rates` follows at slot 1.
    return int.from_bytes(keccak(model + (1).to_bytes(32, "big")), "big")


def test_rate_slot_layout_matches_the_contract(ledger: Ledger, actors: Actors) -> None:
    """Guards the state-override fuzz test above: the slot it writes is where setRate writes."""
    ledger.set_rate(actors.operator, "fuzz", 11, 13, Tier.REGIONAL)
    slot = _rate_slot(ledger, model_id("fuzz"))
    read = [int.from_bytes(ledger.w3.eth.get_storage_at(ledger.rate_card.address, slot + i), "big") for i in range(3)]
    assert read == [11, 13, int(Tier.REGIONAL) | (1 << 8)]


# -- delisting -------------------------------------------------------------------------------
def test_delist_withdraws_a_model(ledger: Ledger, actors: Actors) -> None:
    ledger.set_rate(actors.operator, MODEL, 3, 9, Tier.EDGE)
    models_before = ledger.rate_card.functions.models().call()

    tx = delist(ledger, actors.operator, MODEL)

    assert events(ledger.rate_card.events.ModelDelisted, tx) == [{"model": model_id(MODEL)}]
    with reverts("RateCardUnknownModel", model=model_id(MODEL)):
        ledger.quote_usage(MODEL, 1, 1)
    with reverts("RateCardUnknownModel", model=model_id(MODEL)):
        ledger.rate(MODEL)
    assert MODEL not in [r.model for r in ledger.rates()]
    # models() is the history: a delisted model stays in it.
    assert ledger.rate_card.functions.models().call() == models_before


def test_delist_twice_or_unknown_is_refused(ledger: Ledger, actors: Actors) -> None:
    with reverts("RateCardUnknownModel", model=model_id(MODEL)):
        delist(ledger, actors.operator, MODEL)
    ledger.set_rate(actors.operator, MODEL, 3, 9, Tier.EDGE)
    delist(ledger, actors.operator, MODEL)
    with reverts("RateCardUnknownModel", model=model_id(MODEL)):
        delist(ledger, actors.operator, MODEL)


def test_only_rate_setter_role_delists(ledger: Ledger, actors: Actors) -> None:
    ledger.set_rate(actors.operator, MODEL, 3, 9, Tier.EDGE)
    with reverts(
        "AccessControlUnauthorizedAccount", account=actors.other.address, neededRole=role_id("RATE_SETTER_ROLE")
    ):
        delist(ledger, actors.other, MODEL)
    assert ledger.quote_usage(MODEL, 1_000_000, 0) == 3


def test_relisting_restores_the_model_once(ledger: Ledger, actors: Actors) -> None:
    ledger.set_rate(actors.operator, MODEL, 3, 9, Tier.EDGE)
    delist(ledger, actors.operator, MODEL)
    models_before = ledger.rate_card.functions.models().call()

    tx = ledger.set_rate(actors.operator, MODEL, 5, 10, Tier.EDGE)

    assert events(ledger.rate_card.events.ModelListed, tx) == [
        {"model": model_id(MODEL), "name": MODEL, "tier": int(Tier.EDGE)}
    ]
    assert ledger.quote_usage(MODEL, 1_000_000, 1_000_000) == 15
    assert ledger.rate_card.functions.models().call() == models_before
    assert [r for r in ledger.rates() if r.model == MODEL] == [Rate(MODEL, 5, 10, Tier.EDGE)]
