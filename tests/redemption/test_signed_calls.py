"""Signed calls end to end through the real service and nodes, with the real `openai` package."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import httpx
import pytest
from eth_account import Account
from eth_utils.address import to_checksum_address

from ledger.domain import usage_cost
from ledger.protocol.keccak import keccak256 as keccak
from redemption.sdk import SluiceAuth, async_openai_client, fetch_calls, openai_client, reader_auth
from tests.support.stack import LARGE_MODEL, SMALL_MODEL, Deployed


def rate(deployed: Deployed, model: str) -> tuple[int, int]:
    r = deployed.ledger.rate(model)
    return r.input_rate, r.output_rate


def test_discovery_document_is_exactly_the_design(deployed: Deployed) -> None:
    doc = httpx.get(deployed.api + "/.well-known/sluice.json").json()
    contracts = {k: to_checksum_address(v) for k, v in deployed.deployment.contracts.items()}
    assert set(contracts) == {"token", "sale", "rate_card", "settlement", "payment_token", "node_registry"}
    rpc_url = deployed.settings.effective_rpc_url
    assert doc == {
        "chain_id": 31337,
        "rpc_url": rpc_url,
        "contracts": contracts,
        "token": {"name": "Sluice Compute Token", "symbol": "SCT", "decimals": 18},
        "eip712_domain": {"name": "Sluice", "version": "1", "chainId": 31337,
                          "verifyingContract": contracts["settlement"]},
        "eip712_types": {
            "EIP712Domain": [{"name": "name", "type": "string"}, {"name": "version", "type": "string"},
                             {"name": "chainId", "type": "uint256"},
                             {"name": "verifyingContract", "type": "address"}],
            "Redemption": [{"name": "payer", "type": "address"}, {"name": "bodyHash", "type": "bytes32"},
                           {"name": "maxCost", "type": "uint256"}, {"name": "nonce", "type": "uint256"},
                           {"name": "deadline", "type": "uint256"}],
        },
        "primary_type": "Redemption",
        "unlock_period_seconds": deployed.ledger.unlock_period(),
        "max_deadline_seconds": 300,
        "wallet_add_ethereum_chain": {"chainId": "0x7a69", "chainName": "Sluice", "rpcUrls": [rpc_url],
                                      "nativeCurrency": {"name": "Ether", "symbol": "ETH", "decimals": 18}},
        "wallet_watch_asset": {"type": "ERC20",
                               "options": {"address": contracts["token"], "symbol": "SCT", "decimals": 18}},
    }


def test_discovery_is_all_a_wallet_needs_to_sign_a_call(deployed: Deployed) -> None:
    """eth-account's sign_typed_data given exactly discovery's domain, types and primary type makes a valid call."""
    enterprise = deployed.fund(10)
    deployed.wait_mirrored()
    doc = httpx.get(deployed.api + "/.well-known/sluice.json").json()
    body = json.dumps({"model": SMALL_MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3})
    message = {"payer": enterprise.address, "bodyHash": "0x" + keccak(body.encode()).hex(), "maxCost": 10**17,
               "nonce": 42, "deadline": int(time.time()) + 60}
    typed = {"types": doc["eip712_types"], "primaryType": doc["primary_type"], "domain": doc["eip712_domain"],
             "message": message}
    signed = Account.sign_typed_data(enterprise.key, full_message=typed)
    headers = {"Sluice-Payer": enterprise.address, "Sluice-Max-Cost": str(10**17), "Sluice-Nonce": "42",
               "Sluice-Deadline": str(message["deadline"]), "Sluice-Signature": "0x" + signed.signature.hex(),
               "content-type": "application/json"}
    r = httpx.post(deployed.api + "/v1/chat/completions", content=body, headers=headers, timeout=30)
    assert r.status_code == 200, r.text
    assert int(r.headers["Sluice-Cost"]) > 0


def test_models_list_rates_and_tiers_from_the_rate_card(deployed: Deployed) -> None:
    listing = httpx.get(deployed.api + "/v1/models").json()
    assert listing["object"] == "list"
    cards = {m["id"]: m["sluice"] for m in listing["data"]}
    assert cards[SMALL_MODEL]["input_rate"] == str(20 * 10**18)
    assert cards[SMALL_MODEL]["output_rate"] == str(60 * 10**18)
    assert cards[SMALL_MODEL]["tier"] == "edge"
    assert cards[LARGE_MODEL]["tier"] == "regional"


def test_non_streamed_chat_is_charged_from_usage(deployed: Deployed) -> None:
    enterprise = deployed.fund(10)
    developer = deployed.developer(enterprise, 10**17)
    deployed.wait_mirrored()
    client = openai_client(deployed.api, developer, payer=enterprise.address, max_cost=10**16)
    raw = client.chat.completions.with_raw_response.create(
        model=SMALL_MODEL, messages=[{"role": "user", "content": "How are tokens metered?"}], max_tokens=24)
    completion = raw.parse()
    usage = completion.usage
    assert usage is not None and usage.completion_tokens <= 24
    expected = usage_cost(usage.prompt_tokens, usage.completion_tokens, *rate(deployed, SMALL_MODEL))
    assert int(raw.headers["Sluice-Cost"]) == expected
    assert client.sluice_auth.last_cost == expected
    job = bytes.fromhex(raw.headers["Sluice-Job-Id"][2:])
    rows = deployed.sql("SELECT payer, spender, model, prompt_tokens, completion_tokens, cost, max_cost, status"
                        " FROM usage_records WHERE job_id = %s", job)
    assert rows == [(bytes.fromhex(enterprise.address[2:]), bytes.fromhex(developer.address[2:]), SMALL_MODEL,
                     usage.prompt_tokens, usage.completion_tokens, expected, 10**16, "metered")]
    assert deployed.sql("SELECT count(*) FROM settlement_outbox WHERE job_id = %s", job) == [(1,)]
    budget = httpx.get(deployed.api + "/v1/budget", params={"payer": enterprise.address, "spender": developer.address},
                       auth=reader_auth(developer)).json()
    assert int(budget["budget_available"]) == 10**17 - expected
    assert int(budget["escrow_available"]) == 10 * 10**18 - expected


def test_streamed_chat_reports_cost_in_the_final_usage_chunk(deployed: Deployed) -> None:
    enterprise = deployed.fund(10)
    deployed.wait_mirrored()
    client = openai_client(deployed.api, enterprise, max_cost=10**17)
    chunks = list(client.chat.completions.create(
        model=LARGE_MODEL, messages=[{"role": "user", "content": "stream this"}], max_tokens=12, stream=True))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    final = chunks[-1]
    assert final.choices == [] and final.usage is not None
    assert final.usage.completion_tokens <= 12 and text
    cost = int(final.model_extra["sluice"]["cost"])  # type: ignore[index]
    assert cost == usage_cost(final.usage.prompt_tokens, final.usage.completion_tokens, *rate(deployed, LARGE_MODEL))
    job = bytes.fromhex(final.model_extra["sluice"]["job_id"][2:])  # type: ignore[index]
    assert deployed.sql("SELECT cost FROM usage_records WHERE job_id = %s", job) == [(cost,)]


def test_completions_endpoint_and_async_client(deployed: Deployed) -> None:
    enterprise = deployed.fund(10)
    deployed.wait_mirrored()

    async def run() -> tuple[int, int, int]:
        client = async_openai_client(deployed.api, enterprise, max_cost=10**16)
        completion = await client.completions.create(model=SMALL_MODEL, prompt="Once upon a time", max_tokens=8)
        assert completion.usage is not None
        return completion.usage.prompt_tokens, completion.usage.completion_tokens, client.sluice_auth.last_cost

    prompt, done, cost = asyncio.run(run())
    assert done == 8
    assert cost == usage_cost(prompt, done, *rate(deployed, SMALL_MODEL))


def test_max_tokens_is_clamped_so_the_call_never_costs_more_than_signed(deployed: Deployed) -> None:
    enterprise = deployed.fund(10)
    deployed.wait_mirrored()
    input_rate, output_rate = rate(deployed, SMALL_MODEL)
    body = {"model": SMALL_MODEL, "messages": [{"role": "user", "content": "write a long story"}],
            "max_tokens": 5000}
    raw = json.dumps(body).encode()
    # Room for the prompt bound plus exactly 7 completion tokens.
    max_cost = -(-((len(raw) + 32) * input_rate + 7 * output_rate) // 10**6)
    auth = SluiceAuth(enterprise, max_cost=max_cost)
    response = httpx.post(deployed.api + "/v1/chat/completions", content=raw, auth=auth,
                          headers={"content-type": "application/json"}, timeout=30)
    assert response.status_code == 200, response.text
    usage = response.json()["usage"]
    assert usage["completion_tokens"] == 7
    assert int(response.headers["Sluice-Cost"]) <= max_cost


def test_no_overspend_under_concurrency(deployed: Deployed) -> None:
    """200 concurrent calls against a budget covering 50 calls: exactly 50 served, 150 refused with 402."""
    from ledger.domain import Tier

    enterprise = deployed.fund(10)
    input_rate, output_rate = rate(deployed, SMALL_MODEL)
    # With a zero input rate every call costs exactly its hold (4 completion tokens, no prompt charge),
    # so calls that finish free nothing and the count cannot depend on timing.
    deployed.ledger.set_rate(deployed.operator, SMALL_MODEL, 0, output_rate, Tier.EDGE)
    try:
        body = json.dumps({"model": SMALL_MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4})
        cost = -(-4 * output_rate // 10**6)
        developer = deployed.developer(enterprise, 50 * cost)
        deployed.wait_mirrored()
        deployed.wait_rates(SMALL_MODEL, "0")
        auth = SluiceAuth(developer, payer=enterprise.address, max_cost=cost)

        async def one(client: httpx.AsyncClient) -> tuple[int, str | None]:
            r = await client.post("/v1/chat/completions", content=body,
                                  headers={"content-type": "application/json"})
            return r.status_code, (r.json()["error"]["code"] if r.status_code != 200 else None)

        async def run() -> list[tuple[int, str | None]]:
            limits = httpx.Limits(max_connections=200)
            async with httpx.AsyncClient(base_url=deployed.api, auth=auth, timeout=60, limits=limits) as client:
                await client.get("/health")  # one discovery round trip before the burst
                return await asyncio.gather(*(one(client) for _ in range(200)))

        results = asyncio.run(run())
    finally:
        deployed.ledger.set_rate(deployed.operator, SMALL_MODEL, input_rate, output_rate, Tier.EDGE)
    assert results.count((200, None)) == 50
    assert [r for r in results if r[0] != 200] == [(402, "insufficient_budget")] * 150
    assert deployed.sql("SELECT count(*) FROM holds") == [(0,)]
    spent = deployed.sql("SELECT coalesce(sum(cost), 0), count(*) FROM usage_records WHERE spender = %s",
                         bytes.fromhex(developer.address[2:]))[0]
    assert spent == (50 * cost, 50)
    reserved = deployed.sql("SELECT reserved FROM reserved_pair WHERE payer = %s AND spender = %s",
                            bytes.fromhex(enterprise.address[2:]), bytes.fromhex(developer.address[2:]))
    assert reserved == [(50 * cost,)]  # holds released; only the metered, unsettled usage stays reserved
    deployed.wait_rates(SMALL_MODEL, str(input_rate))


def test_a_key_without_a_budget_gets_403_no_budget(deployed: Deployed) -> None:
    enterprise = deployed.fund(10)
    cut = deployed.developer(enterprise, 10**17)
    deployed.ledger.set_budget(enterprise, cut.address, 0)  # cut to zero: pending on chain, counted at once
    deployed.wait_mirrored()
    for key in (Account.create(), cut):
        client = httpx.Client(auth=SluiceAuth(key, payer=enterprise.address, max_cost=10**17), timeout=30)
        r = client.post(deployed.api + "/v1/chat/completions",
                        json={"model": SMALL_MODEL, "messages": [{"role": "user", "content": "hi"}]})
        assert r.status_code == 403, r.text
        error = r.json()["error"]
        assert error["code"] == "no_budget" and error["type"] == "permission_error"
        assert "gave the signing key no budget" in error["message"]


def test_a_small_budget_admits_a_one_token_call_and_names_the_figures_when_short(deployed: Deployed) -> None:
    """The hold is the call's worst case, not Sluice-Max-Cost: max_tokens 1 fits a budget far below max_cost."""
    enterprise = deployed.fund(10)
    input_rate, output_rate = rate(deployed, SMALL_MODEL)
    body = json.dumps({"model": SMALL_MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1})
    hold = -(-((len(body) + 32) * input_rate + output_rate) // 10**6)
    developer = deployed.developer(enterprise, hold)
    deployed.wait_mirrored()
    auth = SluiceAuth(developer, payer=enterprise.address, max_cost=10**17)  # the README's example max_cost
    first = httpx.post(deployed.api + "/v1/chat/completions", content=body, auth=auth,
                       headers={"content-type": "application/json"}, timeout=30)
    assert first.status_code == 200, first.text
    spent = int(first.headers["Sluice-Cost"])
    second = httpx.post(deployed.api + "/v1/chat/completions", content=body, auth=auth,
                        headers={"content-type": "application/json"}, timeout=30)
    assert second.status_code == 402
    error = second.json()["error"]
    assert error["code"] == "insufficient_budget"
    assert f"needs a hold of {hold} base units" in error["message"]
    assert f"has {hold - spent};" in error["message"]


def test_recent_calls_list_each_call_with_its_cost_to_its_payer_and_spender_only(deployed: Deployed) -> None:
    enterprise, rival = deployed.fund(10), deployed.fund(10)
    developer, rivals_developer = deployed.developer(enterprise, 10**17), deployed.developer(rival, 10**17)
    deployed.wait_mirrored()
    made = []
    for key, payer, tokens in ((developer, enterprise, 5), (developer, enterprise, 9), (rivals_developer, rival, 4)):
        raw = openai_client(deployed.api, key, payer=payer.address, max_cost=10**16).chat.completions \
            .with_raw_response.create(model=SMALL_MODEL, max_tokens=tokens,
                                      messages=[{"role": "user", "content": f"call {len(made)}"}])
        usage = raw.parse().usage
        assert usage is not None
        made.append((raw.headers["Sluice-Job-Id"], usage.prompt_tokens, usage.completion_tokens,
                     raw.headers["Sluice-Cost"]))
    finished = dict(deployed.sql("SELECT '0x' || encode(job_id, 'hex'), extract(epoch FROM finished_at)::bigint"
                                 " FROM usage_records WHERE spender = %s", bytes.fromhex(developer.address[2:])))
    expected = [{"job_id": job, "spender": developer.address, "model": SMALL_MODEL, "prompt_tokens": prompt,
                 "completion_tokens": completion, "cost": cost, "finished_at": finished[job], "status": "metered",
                 "settled": False, "batch_id": None}
                for job, prompt, completion, cost in reversed(made[:2])]  # newest first
    assert len(finished) == 2 and int(made[0][3]) > 0 and made[0][0] != made[1][0]

    def read(key: Any, **params: Any) -> httpx.Response:
        return httpx.get(deployed.api + "/v1/calls", params=params, auth=reader_auth(key), timeout=30)

    mine = read(developer, payer=enterprise.address, spender=developer.address)
    assert mine.status_code == 200, mine.text
    assert mine.json() == {"payer": enterprise.address, "spender": developer.address, "calls": expected}
    assert read(enterprise, payer=enterprise.address).json() == {"payer": enterprise.address, "spender": None,
                                                                 "calls": expected}  # not the rival's call
    assert read(enterprise, payer=enterprise.address, limit=1).json()["calls"] == expected[:1]
    assert fetch_calls(deployed.api, developer, payer=enterprise.address) == expected
    assert fetch_calls(deployed.api, enterprise) == expected
    rivals = read(rival, payer=rival.address).json()["calls"]
    assert [(c["job_id"], c["spender"], c["cost"]) for c in rivals] == [(made[2][0], rivals_developer.address,
                                                                        made[2][3])]
    # another payer's developer, another payer, a stranger, and the developer asking for every key: refused
    for key, params in ((rivals_developer, {"payer": enterprise.address, "spender": developer.address}),
                        (rival, {"payer": enterprise.address}),
                        (Account.create(), {"payer": enterprise.address, "spender": developer.address}),
                        (developer, {"payer": enterprise.address})):
        refused = read(key, **params)
        assert refused.status_code == 403, (key.address, refused.text)
        assert refused.json()["error"]["code"] == "not_account_holder"
    # a spender naming itself under a payer it never spent for sees nothing of that payer's
    assert read(rivals_developer, payer=enterprise.address, spender=rivals_developer.address).json()["calls"] == []
    for params, param in (({"payer": enterprise.address, "limit": 0}, "limit"),
                          ({"payer": enterprise.address, "limit": 501}, "limit"),
                          ({"payer": "0x12"}, "payer"), ({"payer": enterprise.address, "spender": "me"}, "spender")):
        bad = read(enterprise, **params)
        assert bad.status_code == 400 and bad.json()["error"]["param"] == param, bad.text
    batch = bytes(range(32))
    deployed.sql("UPDATE usage_records SET status = 'settled', batch_id = %s WHERE job_id = %s RETURNING 1", batch,
                 bytes.fromhex(made[0][0][2:]))
    oldest = read(developer, payer=enterprise.address, spender=developer.address).json()["calls"][-1]
    assert oldest == {**expected[-1], "status": "settled", "settled": True, "batch_id": "0x" + batch.hex()}


@pytest.fixture(autouse=True)
def _no_faults(deployed: Deployed) -> None:
    deployed.clear_faults()
