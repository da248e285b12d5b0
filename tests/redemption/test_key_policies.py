"""Key policies against the real stack: names, per-key limits and expiry set by the payer's signed request,
enforced inside the hold's transaction (so across service replicas), and every way to touch another's keys."""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections.abc import Iterator

import httpx
import pytest
from eth_account import Account
from eth_account.signers.local import LocalAccount

from redemption import sdk
from redemption.sdk import SluiceAuth, reader_auth
from tests.support.stack import SMALL_MODEL, Deployed, deployment

WINDOW = 3600  # long windows: a test's calls never straddle two of them (see `_fresh_window`)
ENV = {"SLUICE_RATE_WINDOW_SECONDS": str(WINDOW)}
CHAT = "/v1/chat/completions"


@pytest.fixture(scope="module")
def stack(postgres_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployed]:
    with deployment(postgres_url, tmp_path_factory.mktemp("keys"), service_env=ENV) as d:
        yield d


def _body(max_tokens: int = 3, stream: bool = False) -> bytes:
    return json.dumps({"model": SMALL_MODEL, "messages": [{"role": "user", "content": "hi"}],
                       "max_tokens": max_tokens, "stream": stream}).encode()


def _call(api: str, key: LocalAccount, payer: LocalAccount, body: bytes | None = None) -> httpx.Response:
    return httpx.post(api + CHAT, content=body or _body(), headers={"content-type": "application/json"},
                      auth=SluiceAuth(key, payer=payer.address, max_cost=10**17), timeout=60)


def _window(d: Deployed, payer: LocalAccount, spender: LocalAccount) -> list[tuple[int, int, int]]:
    return [(int(r[0]), int(r[1]), int(r[2])) for r in d.sql(
        "SELECT window_start, requests, tokens FROM key_rate_windows WHERE payer = %s AND spender = %s",
        bytes.fromhex(payer.address[2:]), bytes.fromhex(spender.address[2:]))]


def _fresh_window() -> None:
    """Start away from a window boundary, so a test's calls all fall in one window (waits for the clock only
    in the last 30 s of an hour)."""
    left = WINDOW - time.time() % WINDOW
    if left < 30:
        time.sleep(left + 0.5)


def _pair(d: Deployed) -> tuple[LocalAccount, LocalAccount]:
    enterprise = d.fund(10)
    dev = d.developer(enterprise, 10**18)
    d.wait_mirrored()
    return enterprise, dev


def test_three_requests_per_window_admit_exactly_three_then_429_with_retry_after(stack: Deployed) -> None:
    enterprise, dev = _pair(stack)
    policy = sdk.set_key_policy(stack.api, enterprise, dev.address, label="ci", requests_per_minute=3)
    assert policy["label"] == "ci" and policy["requests_per_minute"] == 3 and policy["tokens_per_minute"] is None
    _fresh_window()
    assert [_call(stack.api, dev, enterprise).status_code for _ in range(3)] == [200, 200, 200]
    reserved = stack.sql("SELECT reserved FROM reserved_payer WHERE payer = %s", bytes.fromhex(enterprise.address[2:]))
    before = time.time()
    refused = _call(stack.api, dev, enterprise)
    after = time.time()
    assert refused.status_code == 429
    error = refused.json()["error"]
    assert (error["code"], error["type"]) == ("rate_limited", "rate_limit_error")
    [(start, requests, _)] = _window(stack, enterprise, dev)
    assert requests == 3
    retry_after = int(refused.headers["Retry-After"])
    assert retry_after in {math.ceil(start + WINDOW - after), math.ceil(start + WINDOW - before)}
    assert f"{WINDOW} s window" in error["message"] and "3 calls" in error["message"]
    # the refusal undid the escrow reservation it had taken, and consumed nothing else
    assert stack.sql("SELECT reserved FROM reserved_payer WHERE payer = %s",
                     bytes.fromhex(enterprise.address[2:])) == reserved
    typed = sdk.error_from_response(refused)
    assert isinstance(typed, sdk.RateLimited) and typed.retry_after == int(refused.headers["Retry-After"])
    budget = sdk.fetch_budget(stack.api, dev, payer=enterprise.address)
    assert (budget.label, budget.requests_per_minute, budget.rate_window_seconds) == ("ci", 3, WINDOW)
    # the payer's own calls are never limited by its keys' policies
    assert _call(stack.api, enterprise, enterprise).status_code == 200


def test_an_expired_key_gets_403_key_expired_and_clearing_the_expiry_admits_it(stack: Deployed) -> None:
    enterprise, dev = _pair(stack)
    sdk.set_key_policy(stack.api, enterprise, dev.address, expires_at=int(time.time()) - 1)
    refused = _call(stack.api, dev, enterprise)
    assert refused.status_code == 403
    assert (refused.json()["error"]["code"], refused.json()["error"]["type"]) == ("key_expired", "permission_error")
    assert isinstance(sdk.error_from_response(refused), sdk.KeyExpired)
    later = int(time.time()) + 600
    assert sdk.set_key_policy(stack.api, enterprise, dev.address, expires_at=later)["expires_at"] == later
    assert _call(stack.api, dev, enterprise).status_code == 200


def test_tokens_per_window_count_the_worst_case_then_the_metered_tokens(stack: Deployed) -> None:
    enterprise, dev = _pair(stack)
    body = _body(max_tokens=8)
    worst = len(body) + 32 + 8  # the prompt bound of a small body (its size + the template allowance) + max_tokens
    _fresh_window()
    # admission counts the worst case: one token under it is refused, and takes nothing from the window
    sdk.set_key_policy(stack.api, enterprise, dev.address, tokens_per_minute=worst - 1)
    refused = _call(stack.api, dev, enterprise, body)
    assert refused.status_code == 429 and refused.json()["error"]["code"] == "token_rate_limited"
    assert f"up to {worst} model tokens" in refused.json()["error"]["message"]
    assert [w[1:] for w in _window(stack, enterprise, dev)] == [(0, 0)]
    sdk.set_key_policy(stack.api, enterprise, dev.address, tokens_per_minute=2 * worst - 1)
    first = _call(stack.api, dev, enterprise, body)
    assert first.status_code == 200
    [(prompt, completion)] = stack.sql("SELECT prompt_tokens, completion_tokens FROM usage_records WHERE job_id = %s",
                                       bytes.fromhex(first.headers["Sluice-Job-Id"][2:]))
    assert prompt + completion < worst
    [(start, _, _)] = _window(stack, enterprise, dev)
    assert _window(stack, enterprise, dev) == [(start, 1, prompt + completion)]  # trued at metering
    # the second worst case fits only because the first was trued (worst + worst > 2 * worst - 1)
    assert _call(stack.api, dev, enterprise, body).status_code == 200
    used = _window(stack, enterprise, dev)[0][2]
    limit = used + worst - 1
    sdk.set_key_policy(stack.api, enterprise, dev.address, tokens_per_minute=limit)
    refused = _call(stack.api, dev, enterprise, body)
    assert refused.status_code == 429 and refused.json()["error"]["code"] == "token_rate_limited"
    assert f"up to {worst} model tokens" in refused.json()["error"]["message"]
    assert f"has {worst - 1} of its {limit} tokens" in refused.json()["error"]["message"]
    assert _window(stack, enterprise, dev)[0][1:] == (2, used)  # the refusal took nothing from the window
    assert isinstance(sdk.error_from_response(refused), sdk.TokenRateLimited)


def test_the_limit_holds_across_two_service_replicas(stack: Deployed) -> None:
    enterprise, dev = _pair(stack)
    replica = stack.add_replica(**ENV)
    sdk.set_key_policy(stack.api, enterprise, dev.address, requests_per_minute=5)
    _fresh_window()
    body = _body()

    async def run() -> list[int]:
        clients = [httpx.AsyncClient(base_url=api, timeout=60,
                                     auth=SluiceAuth(dev, payer=enterprise.address, max_cost=10**17))
                   for api in (stack.api, replica)]
        try:
            answers = await asyncio.gather(*(clients[i % 2].post(CHAT, content=body,
                                                                 headers={"content-type": "application/json"})
                                             for i in range(16)))
        finally:
            for client in clients:
                await client.aclose()
        return [a.status_code for a in answers]

    statuses = asyncio.run(run())
    assert sorted(statuses) == [200] * 5 + [429] * 11
    assert [r[1] for r in _window(stack, enterprise, dev)] == [5]


def _signed(method: str, api: str, signer: LocalAccount, payer: str, spender: str,
            body: dict[str, object] | None) -> httpx.Request:
    """A signed key-policy request, as built (so a test can send it elsewhere)."""
    content = b"" if body is None else json.dumps(body).encode()
    request = httpx.Request(method, f"{api}/v1/keys/{spender}", content=content,
                            headers={} if body is None else {"content-type": "application/json"})
    domains = sdk.domains_of(httpx.get(api + sdk.DISCOVERY_PATH, timeout=30).json())
    SluiceAuth(signer, payer=payer, max_cost=0).sign(request, domains)
    return request


def _send(request: httpx.Request, method: str | None = None, url: str | None = None) -> httpx.Response:
    """Send `request`'s signed headers and body, optionally as another method or to another url."""
    headers = {k: v for k, v in request.headers.items() if k.lower() not in {"host", "content-length"}}
    return httpx.request(method or request.method, url or str(request.url), content=request.content,
                         headers=headers, timeout=30)


def _put(api: str, signer: LocalAccount, payer: str, spender: str, body: dict[str, object]) -> httpx.Response:
    return _send(_signed("PUT", api, signer, payer, spender, {"spender": spender, **body}))


def test_nobody_but_the_payer_sets_or_reads_its_key_policies(stack: Deployed) -> None:
    enterprise, dev = _pair(stack)
    other = stack.fund(1)
    stranger: LocalAccount = Account.create()
    stack.wait_mirrored()
    sdk.set_key_policy(stack.api, enterprise, dev.address, label="prod", requests_per_minute=100)
    # the developer key lifting its own limit, signing for its payer
    own = _put(stack.api, dev, enterprise.address, dev.address, {"requests_per_minute": None})
    assert own.status_code == 403 and own.json()["error"]["code"] == "not_account_holder"
    # another payer signing as my payer
    forged = _put(stack.api, other, enterprise.address, dev.address, {"label": "mine"})
    assert forged.status_code == 403 and forged.json()["error"]["code"] == "not_account_holder"
    # another payer's policy for my key is its own: it changes nothing of mine
    assert _put(stack.api, other, other.address, dev.address, {"requests_per_minute": 1}).status_code == 200
    # a key that is nobody's payer, and the developer as a payer of itself
    alien = _put(stack.api, stranger, stranger.address, dev.address, {"label": "x"})
    assert alien.status_code == 403 and alien.json()["error"]["code"] == "not_allowlisted"
    self_policy = _put(stack.api, enterprise, enterprise.address, enterprise.address, {"label": "me"})
    assert self_policy.status_code == 400 and self_policy.json()["error"]["param"] == "spender"
    # reads: another payer, a stranger, no signature; deletes by another payer
    for reader in (other, stranger, dev):
        r = httpx.get(stack.api + "/v1/keys", params={"payer": enterprise.address}, auth=reader_auth(reader))
        assert r.status_code == 403 and r.json()["error"]["code"] == "not_account_holder"
    unsigned = httpx.get(stack.api + "/v1/keys", params={"payer": enterprise.address})
    assert unsigned.status_code == 401 and unsigned.json()["error"]["code"] == "missing_signature"
    gone = _send(_signed("DELETE", stack.api, other, enterprise.address, dev.address, {"spender": dev.address}))
    assert gone.status_code == 403 and gone.json()["error"]["code"] == "not_account_holder"
    mine = sdk.fetch_keys(stack.api, enterprise)
    assert [(k["spender"], k["label"], k["requests_per_minute"]) for k in mine["keys"]] == [
        (dev.address, "prod", 100)]
    assert mine["keys"][0]["budget"] == {"effective": str(10**18), "reserved": "0", "available": str(10**18),
                                         "pending_cut": None}
    assert [_call(stack.api, dev, enterprise).status_code for _ in range(2)] == [200, 200]


def test_bad_policies_get_400_with_the_field(stack: Deployed) -> None:
    enterprise, dev = _pair(stack)
    for body, param in (({"requests_per_minute": 0}, "requests_per_minute"),
                        ({"tokens_per_minute": "5"}, "tokens_per_minute"),
                        ({"label": "x" * 65}, "label"), ({"label": "a\x1b[2Jb"}, "label"),
                        ({"expires_at": True}, "expires_at"), ({"colour": "red"}, "colour")):
        r = _put(stack.api, enterprise, enterprise.address, dev.address, body)
        assert r.status_code == 400 and r.json()["error"]["param"] == param, (body, r.text)
    nonzero = httpx.put(f"{stack.api}/v1/keys/{dev.address}", json={"spender": dev.address},
                        auth=SluiceAuth(enterprise, max_cost=1))
    assert nonzero.status_code == 400 and nonzero.json()["error"]["code"] == "invalid_header"


def test_a_policy_survives_a_restart_and_delete_drops_it(stack: Deployed) -> None:
    enterprise, dev = _pair(stack)
    expires = int(time.time()) + 3 * 86400
    sdk.set_key_policy(stack.api, enterprise, dev.address, label="batch", requests_per_minute=1,
                       tokens_per_minute=10**6, expires_at=expires)
    sdk.set_key_policy(stack.api, enterprise, dev.address, tokens_per_minute=None)  # absent fields stay
    _fresh_window()
    assert _call(stack.api, dev, enterprise).status_code == 200
    stack.restart_api()
    [key] = sdk.fetch_keys(stack.api, enterprise)["keys"]
    assert (key["label"], key["requests_per_minute"], key["tokens_per_minute"], key["expires_at"]) == (
        "batch", 1, None, expires)
    assert _call(stack.api, dev, enterprise).status_code == 429
    assert sdk.delete_key_policy(stack.api, enterprise, dev.address) is True
    assert sdk.delete_key_policy(stack.api, enterprise, dev.address) is False
    [key] = sdk.fetch_keys(stack.api, enterprise)["keys"]
    assert (key["label"], key["updated_at"]) == (None, None)  # still listed: it has a budget
    assert _call(stack.api, dev, enterprise).status_code == 200


def _policies(d: Deployed, payer: LocalAccount) -> list[tuple[str, str | None, int | None]]:
    return [(k["spender"], k["label"], k["expires_at"]) for k in sdk.fetch_keys(d.api, payer)["keys"]]


def test_a_signed_delete_or_put_for_one_key_sent_to_another_keys_path_is_refused(stack: Deployed) -> None:
    enterprise = stack.fund(10)
    dev_a, dev_b = stack.developer(enterprise, 10**18), stack.developer(enterprise, 10**18)
    stack.wait_mirrored()
    expires = int(time.time()) + 86400
    sdk.set_key_policy(stack.api, enterprise, dev_a.address, label="a", expires_at=expires)
    sdk.set_key_policy(stack.api, enterprise, dev_b.address, label="b", expires_at=expires)
    before = sorted(_policies(stack, enterprise))
    assert before == sorted([(dev_a.address, "a", expires), (dev_b.address, "b", expires)])
    b_path = f"{stack.api}/v1/keys/{dev_b.address}"
    # the payer's signed DELETE of key A, sent as a DELETE of key B
    delete_a = _signed("DELETE", stack.api, enterprise, enterprise.address, dev_a.address, {"spender": dev_a.address})
    redirected = _send(delete_a, url=b_path)
    assert redirected.status_code == 400
    error = redirected.json()["error"]
    assert (error["code"], error["param"]) == ("invalid_request", "spender")
    assert f"is not the key in the path ({dev_b.address})" in error["message"]
    # the payer's signed PUT for key A (clearing its expiry), sent to key B's path
    put_a = _signed("PUT", stack.api, enterprise, enterprise.address, dev_a.address,
                    {"spender": dev_a.address, "expires_at": None, "label": "moved"})
    moved = _send(put_a, url=b_path)
    assert moved.status_code == 400 and moved.json()["error"]["param"] == "spender"
    assert sorted(_policies(stack, enterprise)) == before
    # a PUT without the spender in its body is refused with what to add
    bare = _send(_signed("PUT", stack.api, enterprise, enterprise.address, dev_b.address, {"label": "x"}))
    assert bare.status_code == 400 and bare.json()["error"]["param"] == "spender"
    assert f'add "spender": "{dev_b.address}" to the body' in bare.json()["error"]["message"]
    # refused before the signature was checked: the nonces were not spent, and the requests still do what was
    # signed at their own paths (the lowercase address names the same key)
    assert _send(put_a).status_code == 200
    assert _send(delete_a).json() == {"deleted": True}
    lower = _send(_signed("PUT", stack.api, enterprise, enterprise.address, dev_b.address,
                          {"spender": dev_b.address.lower(), "label": "b2"}))
    assert lower.status_code == 200 and lower.json()["label"] == "b2"
    assert sorted(_policies(stack, enterprise)) == sorted([(dev_a.address, None, None), (dev_b.address, "b2",
                                                                                          expires)])


def test_a_payers_signed_read_sent_as_a_delete_is_refused_and_the_expiry_stays(stack: Deployed) -> None:
    enterprise, dev = _pair(stack)
    sdk.set_key_policy(stack.api, enterprise, dev.address, label="revoked", expires_at=int(time.time()) - 1)
    assert _call(stack.api, dev, enterprise).status_code == 403
    # a signed read of the payer (empty body, Sluice-Max-Cost 0), as an intermediary holds it
    read = httpx.Request("GET", f"{stack.api}/v1/usage", params={"payer": enterprise.address})
    reader_auth(enterprise).sign(read, sdk.domains_of(httpx.get(stack.api + sdk.DISCOVERY_PATH).json()))
    replayed = _send(read, method="DELETE", url=f"{stack.api}/v1/keys/{dev.address}")
    assert replayed.status_code == 400
    error = replayed.json()["error"]
    assert (error["code"], error["param"]) == ("invalid_request", "spender")
    assert f'carries the body {{"spender": "{dev.address}"}}: send and sign that body' in error["message"]
    [(spender, label, expires_at)] = _policies(stack, enterprise)
    assert (spender, label) == (dev.address, "revoked") and expires_at is not None
    refused = _call(stack.api, dev, enterprise)
    assert refused.status_code == 403 and refused.json()["error"]["code"] == "key_expired", refused.text
    # the read itself still works where it was meant to go
    usage = _send(read)
    assert usage.status_code == 200 and usage.json()["payer"] == enterprise.address
    # a DELETE body naming another field, or nothing but junk, is refused with the field
    extra = _send(_signed("DELETE", stack.api, enterprise, enterprise.address, dev.address,
                          {"spender": dev.address, "label": None}))
    assert extra.status_code == 400 and extra.json()["error"]["param"] == "label"
    assert sdk.delete_key_policy(stack.api, enterprise, dev.address) is True
    assert _call(stack.api, dev, enterprise).status_code == 200


def test_the_openapi_document_has_the_spender_in_both_bodies(stack: Deployed) -> None:
    doc = httpx.get(stack.api + "/openapi.json", timeout=30).json()
    item = doc["paths"]["/v1/keys/{spender}"]
    assert item["put"]["requestBody"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/KeyPolicyUpdate"}
    assert item["delete"]["requestBody"] == {"required": True, "content": {"application/json": {
        "schema": {"$ref": "#/components/schemas/KeyPolicyDelete"}}}}
    schemas = doc["components"]["schemas"]
    assert schemas["KeyPolicyUpdate"]["required"] == ["spender"]
    assert schemas["KeyPolicyDelete"]["required"] == ["spender"]
    assert set(schemas["KeyPolicyDelete"]["properties"]) == {"spender"}
    assert schemas["KeyPolicyDelete"]["properties"]["spender"]["pattern"] == "^0x[0-9a-fA-F]{40}$"
