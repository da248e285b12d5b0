"""Bad input to the signed-call API, end to end through the real service.

Every refusal answers its documented status with the OpenAI error envelope
`{"error": {"message", "type", "param", "code"}}` and a stable `code`, its message
says what to do, and it moves no money: no usage record, no hold, no reservation
and no change in the payer's budget.
"""

from __future__ import annotations

import json
import random
import secrets
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from eth_account.signers.local import LocalAccount
from eth_hash.auto import keccak

from ledger.domain import usage_cost
from ledger.polling import poll_until
from ledger.protocol.eip712 import Domains, Redemption, typed_digest
from ledger.protocol.secp256k1 import SECP256K1_N, sign_digest
from tests.support.stack import SMALL_MODEL, Deployed

CHAT = "/v1/chat/completions"
MAX_BODY = 1 << 20
HEADERS = ("Sluice-Payer", "Sluice-Max-Cost", "Sluice-Nonce", "Sluice-Deadline", "Sluice-Signature")
TYPES = {400: "invalid_request_error", 401: "authentication_error", 402: "insufficient_quota",
         403: "permission_error", 404: "invalid_request_error", 413: "invalid_request_error", 503: "server_error"}


def chat_body(**fields: Any) -> bytes:
    return json.dumps({"model": SMALL_MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4,
                       **fields}).encode()


def raw(address: str) -> bytes:
    return bytes.fromhex(address[2:])


def domains_of(deployed: Deployed, *, chain_id: int | None = None, contract: str | None = None) -> Domains:
    d = deployed.deployment
    return Domains(d.chain_id if chain_id is None else chain_id, contract or d.contracts["settlement"])


def signed(deployed: Deployed, key: LocalAccount, body: bytes, *, payer: str | None = None, max_cost: int = 10**16,
           nonce: int | None = None, deadline: int | None = None, domains: Domains | None = None,
           sign_body: bytes | None = None) -> dict[str, str]:
    """The five signed-call headers, built by hand so that each field can be wrong on purpose."""
    payer = payer or key.address
    nonce = secrets.randbits(128) if nonce is None else nonce
    deadline = int(time.time()) + 120 if deadline is None else deadline
    message = Redemption(payer, keccak(body if sign_body is None else sign_body), max_cost, nonce, deadline)
    digest = typed_digest((domains or domains_of(deployed)).redemption, message.struct_hash())
    return {"content-type": "application/json", "Sluice-Payer": payer, "Sluice-Max-Cost": str(max_cost),
            "Sluice-Nonce": str(nonce), "Sluice-Deadline": str(deadline),
            "Sluice-Signature": "0x" + sign_digest(bytes(key.key), digest).hex()}


def post(deployed: Deployed, body: Any, headers: dict[str, Any], path: str = CHAT) -> httpx.Response:
    return httpx.post(deployed.api + path, content=body, headers=headers, timeout=30)


@dataclass
class Payer:
    """An enterprise wallet and a developer key it approved."""

    enterprise: LocalAccount
    developer: LocalAccount

    @property
    def address(self) -> str:
        return self.enterprise.address


def money(deployed: Deployed, payer: str, spender: str) -> dict[str, Any]:
    """Everything a call could have charged or reserved for `payer`."""
    p = raw(payer)
    usage, holds, reserved, pairs = deployed.sql(
        "SELECT (SELECT count(*) FROM usage_records WHERE payer = %s), (SELECT count(*) FROM holds WHERE payer = %s),"
        " (SELECT coalesce(sum(reserved), 0) FROM reserved_payer WHERE payer = %s),"
        " (SELECT coalesce(sum(reserved), 0) FROM reserved_pair WHERE payer = %s)", p, p, p, p)[0]
    budget = deployed.budget(payer, spender)
    assert budget.status_code == 200, budget.text
    return {"usage_records": usage, "holds": holds, "reserved_payer": reserved, "reserved_pair": pairs,
            "budget": budget.json()}


def assert_refused(response: httpx.Response, status: int, code: str, param: str | None, *hints: str) -> None:
    """The exact envelope; the message names what to do (each hint, case-insensitively)."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}, body
    error = body["error"]
    assert (error["type"], error["param"], error["code"]) == (TYPES[status], param, code), error
    assert isinstance(error["message"], str) and error["message"]
    for hint in hints:
        assert hint.lower() in error["message"].lower(), (hint, error["message"])
    assert "Sluice-Job-Id" not in response.headers and "Sluice-Cost" not in response.headers


@pytest.fixture(scope="module")
def payer(deployed: Deployed) -> Payer:
    enterprise = deployed.fund(10)
    developer = deployed.developer(enterprise, 10**17)
    deployed.wait_mirrored()
    return Payer(enterprise, developer)


@pytest.fixture
def unchanged(deployed: Deployed, payer: Payer) -> Iterator[None]:
    """The test's calls leave the shared payer's money exactly as it was."""
    before = money(deployed, payer.address, payer.developer.address)
    yield
    assert money(deployed, payer.address, payer.developer.address) == before


# -- the signature -------------------------------------------------------------------------------------------


def _high_s(signature: bytes) -> bytes:
    """The malleable twin of a valid signature: s -> n - s with the recovery id flipped."""
    s = int.from_bytes(signature[32:64], "big")
    return signature[:32] + (SECP256K1_N - s).to_bytes(32, "big") + bytes([55 - signature[64]])


STRANGER = bytes(range(1, 33))  # a private key nobody approved


def _stranger(signature: bytes, digest: bytes) -> bytes:
    return sign_digest(STRANGER, digest)


# name -> (the bad signature from the good one and its digest, the `param` of the refusal)
BAD_SIGNATURES: dict[str, tuple[Callable[[bytes, bytes], bytes], str | None]] = {
    "random 65 bytes": (lambda sig, digest: random.Random(7).randbytes(65), "Sluice-Signature"),
    "high-s": (lambda sig, digest: _high_s(sig), "Sluice-Signature"),
    "r of zero": (lambda sig, digest: bytes(32) + sig[32:], "Sluice-Signature"),
    "64 bytes": (lambda sig, digest: sig[:64], "Sluice-Signature"),
    "v of 29": (lambda sig, digest: sig[:64] + b"\x1d", "Sluice-Signature"),
    "empty": (lambda sig, digest: b"", "Sluice-Signature"),
    # Well-formed, but it recovers to a key the payer never approved.
    "by a stranger": (_stranger, None),
}


@pytest.mark.parametrize("mangle", list(BAD_SIGNATURES))
def test_bad_signature_is_refused(deployed: Deployed, payer: Payer, unchanged: None, mangle: str) -> None:
    body = chat_body()
    headers = signed(deployed, payer.developer, body, payer=payer.address)
    good = bytes.fromhex(headers["Sluice-Signature"][2:])
    message = Redemption(payer.address, keccak(body), 10**16, int(headers["Sluice-Nonce"]),
                         int(headers["Sluice-Deadline"]))
    digest = typed_digest(domains_of(deployed).redemption, message.struct_hash())
    make, param = BAD_SIGNATURES[mangle]
    headers["Sluice-Signature"] = "0x" + make(good, digest).hex()
    if param is None:  # it recovers to a key the payer gave no budget: 403, naming what to check
        assert_refused(post(deployed, body, headers), 403, "no_budget", None, "/.well-known/sluice.json")
    else:
        assert_refused(post(deployed, body, headers), 401, "invalid_signature", param, "/.well-known/sluice.json")


def test_high_s_message_names_low_s(deployed: Deployed, payer: Payer, unchanged: None) -> None:
    body = chat_body()
    headers = signed(deployed, payer.developer, body, payer=payer.address)
    headers["Sluice-Signature"] = "0x" + _high_s(bytes.fromhex(headers["Sluice-Signature"][2:])).hex()
    assert_refused(post(deployed, body, headers), 401, "invalid_signature", "Sluice-Signature", "low-s")


def test_signature_that_is_not_hex_is_401(deployed: Deployed, payer: Payer, unchanged: None) -> None:
    body = chat_body()
    headers = {**signed(deployed, payer.developer, body, payer=payer.address), "Sluice-Signature": "0xnothex"}
    assert_refused(post(deployed, body, headers), 401, "invalid_signature", "Sluice-Signature", "65-byte")


@pytest.mark.parametrize("wrong", ["chain id", "verifying contract", "body"])
def test_signature_for_another_domain_or_body_is_403_no_budget(deployed: Deployed, payer: Payer, unchanged: None,
                                                     wrong: str) -> None:
    body = chat_body()
    domains = {"chain id": domains_of(deployed, chain_id=1),
               "verifying contract": domains_of(deployed, contract=deployed.deployment.contracts["token"])}.get(wrong)
    signed_body = chat_body(max_tokens=5) if wrong == "body" else None
    for key in (payer.developer, payer.enterprise):  # a spender for the payer, and the payer itself
        headers = signed(deployed, key, body, payer=payer.address, domains=domains, sign_body=signed_body)
        # Another domain or body recovers another key, one the payer gave no budget.
        assert_refused(post(deployed, body, headers), 403, "no_budget", None,
                       "the signing key, the body and the chain id and verifying contract")


def test_replayed_nonce_is_401(deployed: Deployed, payer: Payer) -> None:
    body = chat_body()
    headers = signed(deployed, payer.developer, body, payer=payer.address)
    first = post(deployed, body, headers)
    assert first.status_code == 200, first.text
    before = money(deployed, payer.address, payer.developer.address)
    assert_refused(post(deployed, body, headers), 401, "nonce_replayed", None, "fresh nonce")
    # The same nonce for another body is the same (signer, nonce): refused too.
    other = chat_body(max_tokens=3)
    again = signed(deployed, payer.developer, other, payer=payer.address, nonce=int(headers["Sluice-Nonce"]))
    assert_refused(post(deployed, other, again), 401, "nonce_replayed", None, "fresh nonce")
    assert money(deployed, payer.address, payer.developer.address) == before


# -- the deadline and the headers ---------------------------------------------------------------------------


def test_expired_deadline_is_401(deployed: Deployed, payer: Payer, unchanged: None) -> None:
    body = chat_body()
    headers = signed(deployed, payer.developer, body, payer=payer.address, deadline=int(time.time()) - 1)
    assert_refused(post(deployed, body, headers), 401, "signature_expired", "Sluice-Deadline", "sign the call again")


def test_deadline_too_far_ahead_is_401(deployed: Deployed, payer: Payer, unchanged: None) -> None:
    body = chat_body()
    headers = signed(deployed, payer.developer, body, payer=payer.address, deadline=int(time.time()) + 300 + 30)
    assert_refused(post(deployed, body, headers), 401, "deadline_too_far", "Sluice-Deadline", "nearer deadline",
                   "300")


@pytest.mark.parametrize("header", HEADERS)
def test_each_missing_header_is_401(deployed: Deployed, payer: Payer, unchanged: None, header: str) -> None:
    body = chat_body()
    headers = signed(deployed, payer.developer, body, payer=payer.address)
    del headers[header]
    assert_refused(post(deployed, body, headers), 401, "missing_signature", header, header, ", ".join(HEADERS))


def test_unsigned_call_is_401(deployed: Deployed) -> None:
    response = post(deployed, chat_body(), {"content-type": "application/json"})
    assert_refused(response, 401, "missing_signature", "Sluice-Payer", ", ".join(HEADERS))


NOT_DECIMAL: list[tuple[str, str | bytes]] = [
    ("Sluice-Max-Cost", "1e16"),
    ("Sluice-Max-Cost", "-5"),
    ("Sluice-Max-Cost", ""),
    ("Sluice-Nonce", "0x2a"),
    ("Sluice-Nonce", "1_000"),
    ("Sluice-Nonce", "\u00b2".encode("latin-1")),  # a superscript two: str.isdigit() says yes, int() says no
    ("Sluice-Nonce", str(2**256)),
    ("Sluice-Deadline", "12.5"),
    ("Sluice-Deadline", "tomorrow"),
]


@pytest.mark.parametrize(("header", "value"), NOT_DECIMAL, ids=[f"{h}={v!r}" for h, v in NOT_DECIMAL])
def test_non_decimal_header_is_400(deployed: Deployed, payer: Payer, unchanged: None, header: str,
                                   value: str | bytes) -> None:
    body = chat_body()
    headers: dict[str, Any] = signed(deployed, payer.developer, body, payer=payer.address)
    headers[header] = value
    assert_refused(post(deployed, body, headers), 400, "invalid_header", header, header, "decimal")


@pytest.mark.parametrize("value", ["0x1234", "alice", "", "no 0x", "0x and 41 digits"])
def test_payer_that_is_not_an_address_is_400(deployed: Deployed, payer: Payer, unchanged: None, value: str) -> None:
    value = {"no 0x": payer.address[2:], "0x and 41 digits": payer.address + "0"}.get(value, value)
    body = chat_body()
    headers = {**signed(deployed, payer.developer, body, payer=payer.address), "Sluice-Payer": value}
    assert_refused(post(deployed, body, headers), 400, "invalid_header", "Sluice-Payer", "0x address")


def test_bad_tier_is_400(deployed: Deployed, payer: Payer, unchanged: None) -> None:
    body = chat_body()
    headers = {**signed(deployed, payer.developer, body, payer=payer.address), "Sluice-Tier": "moon"}
    assert_refused(post(deployed, body, headers), 400, "invalid_header", "Sluice-Tier", "edge, regional, cloud")


# -- the body ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("body", "code", "param", "hint", "path"), [
    (b'{"model": "x", "messages": [', "invalid_json", None, "JSON object", CHAT),
    (b"\xff\xfe not utf-8", "invalid_json", None, "JSON object", CHAT),
    (b"", "invalid_json", None, "JSON object", CHAT),
    (json.dumps([{"model": SMALL_MODEL}]).encode(), "invalid_json", None, "JSON object", CHAT),
    (json.dumps({"model": SMALL_MODEL}).encode(), "invalid_request", "messages", "messages", CHAT),
    (json.dumps({"model": SMALL_MODEL, "messages": []}).encode(), "invalid_request", "messages", "messages", CHAT),
    (json.dumps({"model": SMALL_MODEL, "messages": "hi"}).encode(), "invalid_request", "messages", "messages", CHAT),
    (chat_body(max_tokens=0), "invalid_request", "max_tokens", "max_tokens", CHAT),
    (json.dumps({"messages": [{"role": "user", "content": "hi"}]}).encode(), "invalid_request", "model", "model",
     CHAT),
    (json.dumps({"model": SMALL_MODEL}).encode(), "invalid_request", "prompt", "prompt", "/v1/completions"),
], ids=["truncated", "not utf-8", "empty", "array", "no messages", "empty messages", "messages not a list",
        "max_tokens 0", "no model", "completion without prompt"])
def test_malformed_body_is_400(deployed: Deployed, payer: Payer, unchanged: None, body: bytes, code: str,
                               param: str | None, hint: str, path: str) -> None:
    headers = signed(deployed, payer.developer, body, payer=payer.address)
    assert_refused(post(deployed, body, headers, path), 400, code, param, hint)


def test_unknown_model_is_404(deployed: Deployed, payer: Payer, unchanged: None) -> None:
    body = json.dumps({"model": "gpt-5", "messages": [{"role": "user", "content": "hi"}]}).encode()
    headers = signed(deployed, payer.developer, body, payer=payer.address)
    assert_refused(post(deployed, body, headers), 404, "model_not_found", "model", "gpt-5", SMALL_MODEL)


LONG_PROMPT = [{"role": "user", "content": " ".join(["sluice"] * 9000)}]  # 9,000 tokens: over the 8,192 context


@pytest.mark.parametrize(("fields", "code", "param", "hints"), [
    ({"messages": LONG_PROMPT}, "context_length_exceeded", "messages", ("8192", "reduce the length")),
    ({"messages": LONG_PROMPT, "stream": True}, "context_length_exceeded", "messages", ("8192", "reduce the length")),
    ({"n": 0}, "invalid_request", None, ("n must be at least 1",)),  # vLLM 0.32 names no parameter for it
], ids=["prompt over the context", "streamed", "n of 0"])
def test_request_the_node_refuses_is_400(deployed: Deployed, payer: Payer, unchanged: None, fields: dict[str, Any],
                                         code: str, param: str | None, hints: tuple[str, ...]) -> None:
    """vLLM's own refusals reach the client in the service's envelope, with a stable code, uncharged."""
    body = chat_body(**fields)
    headers = signed(deployed, payer.enterprise, body, max_cost=2 * 10**18)
    assert_refused(post(deployed, body, headers), 400, code, param, *hints, "nothing was charged")


def test_prompt_and_max_tokens_over_the_context_are_answered_with_what_fits(deployed: Deployed,
                                                                             payer: Payer) -> None:  # fmt: skip
    """vLLM 0.32 answers a prompt and a limit that only overflow the context together, cutting the limit."""
    body = chat_body(messages=[{"role": "user", "content": "hi " * 8180}], max_tokens=8000)  # 8,184 prompt tokens
    headers = signed(deployed, payer.enterprise, body, max_cost=2 * 10**18)
    response = post(deployed, body, headers)
    assert response.status_code == 200, response.text
    assert response.json()["choices"][0]["finish_reason"] == "length"
    usage = response.json()["usage"]
    assert (usage["prompt_tokens"], usage["completion_tokens"]) == (8184, 8192 - 8184)
    assert int(response.headers["Sluice-Cost"]) == usage_cost(8184, 8, 20 * 10**18, 60 * 10**18)


def _oversized() -> bytes:
    filler = "x" * (MAX_BODY + 1 - len(chat_body()) + len('"hi"') - 2)
    body = chat_body(messages=[{"role": "user", "content": filler}])
    assert len(body) == MAX_BODY + 1
    return body


def test_body_over_1_mib_is_413(deployed: Deployed, payer: Payer, unchanged: None) -> None:
    body = _oversized()
    headers = signed(deployed, payer.developer, body, payer=payer.address)
    assert_refused(post(deployed, body, headers), 413, "body_too_large", None, str(MAX_BODY), "smaller")
    # Exactly at the limit the body is read, and refused only for what it is.
    at_limit = body[:MAX_BODY]
    headers = signed(deployed, payer.developer, at_limit, payer=payer.address)
    assert_refused(post(deployed, at_limit, headers), 400, "invalid_json", None, "JSON object")


def test_chunked_body_over_1_mib_is_413(deployed: Deployed, payer: Payer, unchanged: None) -> None:
    """No Content-Length to go by: the service counts the bytes as they arrive."""
    body = _oversized()
    headers = signed(deployed, payer.developer, body, payer=payer.address)

    def chunks() -> Iterator[bytes]:
        for i in range(0, len(body), 64 * 1024):
            yield body[i:i + 64 * 1024]

    response = httpx.post(deployed.api + CHAT, content=chunks(), headers=headers, timeout=30)
    assert response.request.headers.get("transfer-encoding") == "chunked"
    assert "content-length" not in response.request.headers
    assert_refused(response, 413, "body_too_large", None, str(MAX_BODY), "smaller")


def test_content_length_lying_about_a_chunked_body_is_refused(deployed: Deployed, payer: Payer,
                                                              unchanged: None) -> None:
    """Content-Length: 10 on a chunked 1 MiB body: the HTTP server refuses the conflicting framing (request
    smuggling) from the head alone, with a bare 400, and closes the connection before the service sees the call."""
    body = _oversized()
    headers = signed(deployed, payer.developer, body, payer=payer.address)
    url = urlsplit(deployed.api)
    assert url.hostname is not None and url.port is not None
    head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    answer = b""
    with socket.create_connection((url.hostname, url.port), timeout=30) as conn:
        conn.sendall(f"POST {CHAT} HTTP/1.1\r\nHost: {url.netloc}\r\n{head}Content-Length: 10\r\n"
                     f"Transfer-Encoding: chunked\r\n\r\n{MAX_BODY + 1:x}\r\n".encode())
        while piece := conn.recv(65536):  # the server closes the connection after its answer
            answer += piece
    head_lines = answer.partition(b"\r\n\r\n")[0].lower().split(b"\r\n")
    assert head_lines[0] == b"http/1.1 400 bad request" and b"connection: close" in head_lines, answer[:500]


# -- permissions and money -----------------------------------------------------------------------------------


def test_payer_not_allowlisted_is_403(deployed: Deployed) -> None:
    stranger = deployed.fund(0, allowlist=False)
    body = chat_body()
    before = money(deployed, stranger.address, stranger.address)
    assert_refused(post(deployed, body, signed(deployed, stranger, body)), 403, "not_allowlisted", None,
                   "ask the operator to allowlist")
    assert money(deployed, stranger.address, stranger.address) == before


def test_payer_removed_from_allowlist_is_403(deployed: Deployed) -> None:
    enterprise = deployed.fund(10)
    developer = deployed.developer(enterprise, 10**17)
    deployed.ledger.set_allowlisted(deployed.operator, enterprise.address, False)
    deployed.wait_mirrored()
    before = money(deployed, enterprise.address, developer.address)
    body = chat_body()
    for key in (enterprise, developer):
        assert_refused(post(deployed, body, signed(deployed, key, body, payer=enterprise.address)), 403,
                       "not_allowlisted", None, "ask the operator to allowlist")
    assert money(deployed, enterprise.address, developer.address) == before


def test_paused_token_is_403(deployed: Deployed, payer: Payer, unchanged: None) -> None:
    deployed.ledger.pause(deployed.operator)
    try:
        deployed.wait_mirrored()
        body = chat_body()
        headers = signed(deployed, payer.developer, body, payer=payer.address)
        assert_refused(post(deployed, body, headers), 403, "paused", None, "try again later")
    finally:
        deployed.ledger.unpause(deployed.operator)
        deployed.wait_mirrored()


@pytest.mark.parametrize("who", ["payer", "spender"])
def test_suspended_account_is_403(deployed: Deployed, payer: Payer, unchanged: None, who: str) -> None:
    account = raw(payer.address if who == "payer" else payer.developer.address)
    deployed.sql("INSERT INTO suspended_accounts (account, reason) VALUES (%s, 'test: unpaid usage') RETURNING 1",
                 account)
    try:
        body = chat_body()
        headers = signed(deployed, payer.developer, body, payer=payer.address)
        assert_refused(post(deployed, body, headers), 403, "suspended", None, "top up", "operator")
    finally:
        deployed.sql("DELETE FROM suspended_accounts WHERE account = %s RETURNING 1", account)


def test_max_cost_too_low_is_402(deployed: Deployed, payer: Payer, unchanged: None) -> None:
    body = chat_body()
    rate = deployed.ledger.rate(SMALL_MODEL)
    cheapest = usage_cost(len(body) + 32, 1, rate.input_rate, rate.output_rate)  # the service's prompt bound
    for max_cost in (0, 1, cheapest - 1):
        headers = signed(deployed, payer.developer, body, payer=payer.address, max_cost=max_cost)
        assert_refused(post(deployed, body, headers), 402, "max_cost_too_low", "Sluice-Max-Cost",
                       f"at least {cheapest} base units")


def test_insufficient_escrow_is_402(deployed: Deployed) -> None:
    enterprise = deployed.fund(1)
    developer = deployed.developer(enterprise, 10 * 10**18)
    deployed.wait_mirrored()
    before = money(deployed, enterprise.address, developer.address)
    # 20,000 completion tokens at 60 tokens per 1M are 1.2 compute tokens: more than the payer's escrow.
    body = chat_body(max_tokens=20_000)
    for key in (enterprise, developer):
        headers = signed(deployed, key, body, payer=enterprise.address, max_cost=2 * 10**18)
        assert_refused(post(deployed, body, headers), 402, "insufficient_escrow", None, "deposit more")
    assert money(deployed, enterprise.address, developer.address) == before


def test_insufficient_budget_is_402(deployed: Deployed, payer: Payer, unchanged: None) -> None:
    # The developer may spend 0.1 tokens; 2,000 completion tokens at 60 per 1M are 0.12.
    body = chat_body(max_tokens=2_000)
    headers = signed(deployed, payer.developer, body, payer=payer.address, max_cost=10**18)
    assert_refused(post(deployed, body, headers), 402, "insufficient_budget", None, "ask the payer to raise it")


# -- last: the service restarts -------------------------------------------------------------------------------


def test_replayed_nonce_after_restart_is_401(deployed: Deployed, payer: Payer) -> None:
    body = chat_body()
    deadline = int(time.time()) + 290  # near the 300 s limit, and still ahead after the restart
    headers = signed(deployed, payer.developer, body, payer=payer.address, deadline=deadline)
    first = post(deployed, body, headers)
    assert first.status_code == 200, first.text
    deployed.restart_api()

    def serving() -> bool:  # the nodes' heartbeats went stale while the service was down
        probe = chat_body(max_tokens=1)
        return post(deployed, probe, signed(deployed, payer.developer, probe, payer=payer.address)).status_code == 200

    poll_until(serving, 30, "the restarted service serving calls")
    before = money(deployed, payer.address, payer.developer.address)
    assert deadline > time.time()
    assert_refused(post(deployed, body, headers), 401, "nonce_replayed", None, "fresh nonce")
    assert money(deployed, payer.address, payer.developer.address) == before


def test_a_good_call_still_works(deployed: Deployed, payer: Payer) -> None:
    """The control: the payer used above was refused only for the bad input."""
    body = chat_body()
    response = post(deployed, body, signed(deployed, payer.developer, body, payer=payer.address))
    assert response.status_code == 200, response.text
    assert int(response.headers["Sluice-Cost"]) > 0
