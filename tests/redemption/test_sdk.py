"""The light client against the real service: streamed cost (sync and async), typed errors, discovery, budgets."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest
from eth_account import Account

from ledger.domain import usage_cost
from redemption import sdk
from redemption.sdk import SluiceAuth
from tests.support.stack import LARGE_MODEL, SMALL_MODEL, Deployed

CHAT = {"model": SMALL_MODEL, "messages": [{"role": "user", "content": "count to three"}], "max_tokens": 6}


def _final_usage(lines: list[str]) -> dict[str, object]:
    chunks = [json.loads(line[6:]) for line in lines if line.startswith("data: {")]
    return chunks[-1]


def test_a_streamed_call_sets_last_cost_from_the_final_usage_chunk(deployed: Deployed) -> None:
    enterprise = deployed.fund(10)
    deployed.wait_mirrored()
    auth = SluiceAuth(enterprise, max_cost=10**17)
    with httpx.Client(base_url=deployed.api, auth=auth, timeout=30) as client, client.stream(
            "POST", "/v1/chat/completions", json={**CHAT, "model": LARGE_MODEL, "stream": True}) as response:
        assert response.status_code == 200
        assert auth.last_cost is None  # nothing is known before the usage chunk
        lines = list(response.iter_lines())
    final = _final_usage(lines)
    usage, charged = final["usage"], final["sluice"]
    assert isinstance(usage, dict) and isinstance(charged, dict)
    rates = deployed.ledger.rate(LARGE_MODEL)
    assert auth.last_cost == int(charged["cost"]) == usage_cost(
        usage["prompt_tokens"], usage["completion_tokens"], rates.input_rate, rates.output_rate)
    assert auth.last_job_id == charged["job_id"]
    assert auth.total_cost == auth.last_cost


def test_the_async_client_tracks_plain_and_streamed_costs(deployed: Deployed) -> None:
    enterprise = deployed.fund(10)
    deployed.wait_mirrored()
    auth = SluiceAuth(enterprise, max_cost=10**17)

    async def run() -> tuple[int, int, list[str]]:
        async with httpx.AsyncClient(base_url=deployed.api, auth=auth, timeout=30) as client:
            plain = await client.post("/v1/chat/completions", json=CHAT)
            assert plain.status_code == 200, plain.text
            plain_cost = auth.last_cost
            assert plain_cost == int(plain.headers["Sluice-Cost"])
            async with client.stream("POST", "/v1/chat/completions", json={**CHAT, "stream": True}) as streamed:
                lines = [line async for line in streamed.aiter_lines()]
            return plain_cost, auth.last_cost or 0, lines

    plain_cost, streamed_cost, lines = asyncio.run(run())
    charged = _final_usage(lines)["sluice"]
    assert isinstance(charged, dict)
    assert streamed_cost == int(charged["cost"]) > 0
    assert auth.last_job_id == charged["job_id"]
    assert auth.total_cost == plain_cost + streamed_cost


def test_refusals_are_typed_by_their_code(deployed: Deployed) -> None:
    enterprise = deployed.fund(10)
    deployed.wait_mirrored()
    stranger = Account.create()
    # A key never given a budget: 403 no_budget, raised from the auth flow itself.
    auth = SluiceAuth(stranger, payer=enterprise.address, raise_errors=True)
    with httpx.Client(base_url=deployed.api, auth=auth, timeout=30) as client, pytest.raises(sdk.NoBudget) as refused:
        client.post("/v1/chat/completions", json=CHAT)
    error = refused.value
    assert isinstance(error, sdk.PermissionDenied) and isinstance(error, httpx.HTTPStatusError)
    assert (error.status_code, error.error_code, error.error_type) == (403, "no_budget", "permission_error")
    # A budget far below the call's worst case: 402 insufficient_budget, from a plain response.
    developer = deployed.developer(enterprise, 1)
    deployed.wait_mirrored()
    response = httpx.post(deployed.api + "/v1/chat/completions", json=CHAT, timeout=30,
                          auth=SluiceAuth(developer, payer=enterprise.address, max_cost=10**17))
    short = sdk.error_from_response(response)
    assert type(short) is sdk.InsufficientBudget and short.error_code == "insufficient_budget"
    assert "needs a hold of" in short.message
    with pytest.raises(sdk.InsufficientBudget):
        sdk.raise_for_error(response)


def test_unknown_codes_stay_generic_by_status() -> None:
    request = httpx.Request("POST", "http://sluice.invalid/v1/chat/completions")

    def answer(status: int, code: str) -> sdk.SluiceError:
        body = {"error": {"message": "m", "type": "t", "param": None, "code": code}}
        return sdk.error_from_response(httpx.Response(status, json=body, request=request))

    assert type(answer(402, "some_new_code")) is sdk.PaymentRequired
    assert type(answer(403, "some_new_code")) is sdk.PermissionDenied
    assert type(answer(401, "nonce_replayed")) is sdk.AuthenticationError
    assert type(answer(503, "no_capacity")) is sdk.Unavailable
    assert type(answer(403, "insufficient_escrow")) is sdk.PermissionDenied  # the status wins over the code
    assert type(answer(402, "insufficient_escrow")) is sdk.InsufficientEscrow
    limited = sdk.error_from_response(httpx.Response(
        429, json={"error": {"message": "slow down", "type": "rate_limit", "param": None, "code": "rate_limited"}},
        headers={"Retry-After": "7"}, request=request))
    assert isinstance(limited, sdk.RateLimited) and limited.retry_after == 7.0
    garbled = sdk.error_from_response(httpx.Response(400, text="not json", request=request))
    assert type(garbled) is sdk.SluiceError and garbled.error_code is None and garbled.message == "not json"


def test_discovery_and_budget_helpers(deployed: Deployed) -> None:
    enterprise = deployed.fund(10)
    developer = deployed.developer(enterprise, 10**17)
    deployed.wait_mirrored()
    document = sdk.fetch_discovery(deployed.api)
    assert sdk.domains_of(document).verifying_contract == document["contracts"]["settlement"]
    budget = sdk.fetch_budget(deployed.api, developer, payer=enterprise.address)
    assert budget == sdk.Budget(enterprise.address, developer.address, 10 * 10**18, 10**17)
    own = sdk.fetch_budget(deployed.api, enterprise)
    assert own == sdk.Budget(enterprise.address, enterprise.address, 10 * 10**18, None)

    async def run() -> tuple[dict[str, object], sdk.Budget]:
        async with httpx.AsyncClient(timeout=30) as client:
            return (await sdk.async_fetch_discovery(deployed.api, client),
                    await sdk.async_fetch_budget(deployed.api, developer, client, payer=enterprise.address))

    assert asyncio.run(run()) == (document, budget)


def test_keys_as_hex_bytes_or_accounts_sign_alike() -> None:
    account = Account.create()
    for key in (account, account.key.hex(), "0x" + account.key.hex(), bytes(account.key)):
        assert SluiceAuth(key).address == account.address
    with pytest.raises(ValueError, match="32 bytes"):
        SluiceAuth(b"short")


def test_the_async_client_raises_typed_errors_too(deployed: Deployed) -> None:
    enterprise = deployed.fund(10)
    deployed.wait_mirrored()
    auth = SluiceAuth(Account.create(), payer=enterprise.address, raise_errors=True)

    async def run() -> None:
        async with httpx.AsyncClient(base_url=deployed.api, auth=auth, timeout=30) as client:
            await client.post("/v1/chat/completions", json=CHAT)

    with pytest.raises(sdk.NoBudget) as refused:
        asyncio.run(run())
    assert refused.value.status_code == 403 and "no budget" in refused.value.message
    assert auth.last_cost is None and auth.total_cost == 0


def test_every_403_code_of_the_error_table_has_its_type() -> None:
    request = httpx.Request("GET", "http://sluice.invalid/v1/budget")
    expected = {"no_budget": sdk.NoBudget, "not_allowlisted": sdk.NotAllowlisted, "paused": sdk.Paused,
                "suspended": sdk.Suspended, "not_auditor": sdk.NotAuditor, "not_account_holder": sdk.NotAccountHolder,
                "node_retired": sdk.NodeRetired, "node_not_registered": sdk.NodeNotRegistered,
                "endpoint_mismatch": sdk.EndpointMismatch}
    for code, cls in expected.items():
        body = {"error": {"message": "m", "type": "permission_error", "param": None, "code": code}}
        error = sdk.error_from_response(httpx.Response(403, json=body, request=request))
        assert type(error) is cls and isinstance(error, sdk.PermissionDenied) and error.error_code == code
        assert cls.code == code


def test_reading_someone_elses_account_is_not_account_holder(deployed: Deployed) -> None:
    enterprise = deployed.fund(10)
    deployed.wait_mirrored()
    nosy = Account.create()
    with pytest.raises(sdk.NotAccountHolder) as refused:
        sdk.raise_for_error(httpx.get(deployed.api + "/v1/usage", params={"payer": enterprise.address},
                                      auth=sdk.reader_auth(nosy), timeout=10))
    assert (refused.value.status_code, refused.value.error_code) == (403, "not_account_holder")


def test_a_heartbeat_from_an_unregistered_key_is_node_not_registered(deployed: Deployed) -> None:
    from tests.redemption.test_rogue_nodes import heartbeat

    stranger = Account.create()
    refused = sdk.error_from_response(heartbeat(deployed, stranger, "http://127.0.0.1:1"))
    assert type(refused) is sdk.NodeNotRegistered and refused.error_code == "node_not_registered"
