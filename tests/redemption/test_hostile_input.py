"""Hostile input against the real service: every malformed call, heartbeat, receipt and audit parameter is a
4xx in the OpenAI envelope with a stable code — never a 5xx or a traceback — and changes nothing: no hold,
no usage, no nonce, no reservation. A signature from a key the payer never authorized records no nonce.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from eth_account import Account
from eth_account.signers.local import LocalAccount
from eth_hash.auto import keccak

from inference_node.protocol import HEARTBEAT_PATH, RECEIPTS_PATH
from ledger.protocol.eip712 import Domains, Redemption, typed_digest
from ledger.protocol.secp256k1 import sign_digest
from redemption.sdk import SluiceAuth, reader_auth
from tests.support.stack import SMALL_MODEL, Deployed

CHAT = "/v1/chat/completions"
GOOD_BODY = json.dumps({"model": SMALL_MODEL, "messages": [{"role": "user", "content": "hi"}],
                        "max_tokens": 4}).encode()


def snapshot(deployed: Deployed) -> tuple[Any, ...]:
    """Everything a refused request must leave as it was."""
    [row] = deployed.sql("SELECT (SELECT count(*) FROM holds), (SELECT count(*) FROM usage_records),"
                         " (SELECT count(*) FROM call_nonces), (SELECT coalesce(sum(reserved), 0) FROM reserved_payer),"
                         " (SELECT coalesce(sum(reserved), 0) FROM reserved_pair)")
    return row


def assert_refused(response: httpx.Response, statuses: tuple[int, ...] = (400,)) -> str:
    assert response.status_code in statuses, (response.status_code, response.text[:300])
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    assert "Traceback" not in response.text
    code: str = error["code"]
    return code


class Signer:
    def __init__(self, deployed: Deployed, enterprise: LocalAccount, developer: LocalAccount) -> None:
        self.domains = Domains(deployed.deployment.chain_id, deployed.deployment.contracts["settlement"])
        self.enterprise, self.developer = enterprise, developer

    def headers(self, body: bytes, *, key: LocalAccount | None = None, **override: str) -> dict[str, str]:
        nonce, deadline, max_cost = secrets.randbits(128), int(time.time()) + 120, 10**16
        message = Redemption(self.enterprise.address, keccak(body), max_cost, nonce, deadline)
        digest = typed_digest(self.domains.redemption, message.struct_hash())
        signature = sign_digest(bytes((key or self.developer).key), digest)
        return {"content-type": "application/json", "Sluice-Payer": self.enterprise.address,
                "Sluice-Max-Cost": str(max_cost), "Sluice-Nonce": str(nonce), "Sluice-Deadline": str(deadline),
                "Sluice-Signature": "0x" + signature.hex(), **override}


@pytest.fixture(scope="module")
def signer(deployed: Deployed) -> Signer:
    enterprise = deployed.fund(10)
    developer = deployed.developer(enterprise, 10**18)
    deployed.wait_mirrored()
    return Signer(deployed, enterprise, developer)


def nested(depth: int) -> bytes:
    return b'{"model": "m", "messages": ' + b"[" * depth + b"]" * depth + b"}"


HEADER_CASES: dict[str, dict[str, str]] = {
    "nonce over uint256": {"Sluice-Nonce": "1" * 100},
    "nonce negative": {"Sluice-Nonce": "-1"},
    "nonce not decimal": {"Sluice-Nonce": "0x10"},
    "nonce superscript digit": {"Sluice-Nonce": "\u00b2"},
    "max cost over uint256": {"Sluice-Max-Cost": str(2**256)},
    "max cost not a number": {"Sluice-Max-Cost": "lots"},
    "deadline huge": {"Sluice-Deadline": str(2**255)},
    "deadline past": {"Sluice-Deadline": "1"},
    "payer short": {"Sluice-Payer": "0x12"},
    "payer no 0x": {"Sluice-Payer": "ab" * 20},
    "signature empty": {"Sluice-Signature": "0x"},
    "signature short": {"Sluice-Signature": "0x00"},
    "signature zero": {"Sluice-Signature": "0x" + "00" * 65},
    "signature high bytes": {"Sluice-Signature": "0x" + "ff" * 65},
    "signature bad v": {"Sluice-Signature": "0x" + "11" * 64 + "05"},
    "signature not hex": {"Sluice-Signature": "0xzz"},
    "signature huge": {"Sluice-Signature": "0x" + "ab" * 5000},
    "tier unknown": {"Sluice-Tier": "gpu"},
}


@pytest.mark.parametrize("case", sorted(HEADER_CASES))
def test_malformed_signed_call_headers_are_refused_and_change_nothing(deployed: Deployed, signer: Signer,
                                                                      case: str) -> None:
    before = snapshot(deployed)
    headers: dict[str, Any] = signer.headers(GOOD_BODY, **HEADER_CASES[case])
    headers = {k: v if v.isascii() else v.encode() for k, v in headers.items()}  # raw bytes on the wire
    response = httpx.post(deployed.api + CHAT, content=GOOD_BODY, headers=headers, timeout=10)
    assert_refused(response, (400, 401))
    assert snapshot(deployed) == before


BODY_CASES: dict[str, bytes] = {
    "not json": b"{model",
    "array": b"[1, 2]",
    "string": b'"hello"',
    "nested 5000 deep": nested(5000),
    "nested 100 deep": nested(100),
    "max_tokens 2**70": json.dumps({"model": SMALL_MODEL, "messages": [{"role": "user", "content": "x"}],
                                    "max_tokens": 2**70}).encode(),
    "max_tokens negative": json.dumps({"model": SMALL_MODEL, "messages": [{"role": "user", "content": "x"}],
                                       "max_tokens": -5}).encode(),
    "messages not a list": json.dumps({"model": SMALL_MODEL, "messages": {"a": 1}}).encode(),
    "model missing": json.dumps({"messages": [{"role": "user", "content": "x"}]}).encode(),
    "invalid utf-8": b'{"model": "\xff\xfe", "messages": []}',
    "float max_tokens": json.dumps({"model": SMALL_MODEL, "messages": [{"role": "user", "content": "x"}],
                                    "max_tokens": 1e308}).encode(),
}


@pytest.mark.parametrize("case", sorted(BODY_CASES))
def test_malformed_bodies_are_refused_and_change_nothing(deployed: Deployed, signer: Signer, case: str) -> None:
    before = snapshot(deployed)
    content = BODY_CASES[case]
    response = httpx.post(deployed.api + CHAT, content=content, headers=signer.headers(content), timeout=10)
    assert_refused(response, (400, 404))
    assert snapshot(deployed) == before


def test_more_choices_than_the_ticket_allows_is_refused_by_the_node_and_costs_nothing(deployed: Deployed,
                                                                                     signer: Signer) -> None:
    content = json.dumps({"model": SMALL_MODEL, "messages": [{"role": "user", "content": "x"}], "max_tokens": 4,
                          "n": 10**12}).encode()
    holds, usage, nonces, reserved, pair = snapshot(deployed)
    response = httpx.post(deployed.api + CHAT, content=content, headers=signer.headers(content), timeout=30)
    assert assert_refused(response) == "invalid_request" and response.json()["error"]["param"] == "n"
    # A signed, authorized call: its nonce is spent (no replay), nothing else moved.
    assert snapshot(deployed) == (holds, usage, nonces + 1, reserved, pair)


def test_a_signature_from_a_key_the_payer_never_authorized_records_no_nonce(deployed: Deployed,
                                                                           signer: Signer) -> None:
    before = snapshot(deployed)
    for _ in range(5):  # garbage that recovers to some key, and a real key with no budget
        stranger = Account.create()
        response = httpx.post(deployed.api + CHAT, content=GOOD_BODY, timeout=10,
                              headers=signer.headers(GOOD_BODY, key=stranger))
        assert assert_refused(response, (403,)) == "no_budget"
    assert snapshot(deployed) == before
    good = httpx.post(deployed.api + CHAT, content=GOOD_BODY, headers=signer.headers(GOOD_BODY), timeout=30)
    assert good.status_code == 200
    assert snapshot(deployed)[2] == before[2] + 1  # the authorized key's nonce, once


def heartbeat_cases() -> dict[str, Any]:
    beat = {"node": "0x" + "11" * 20, "url": "http://127.0.0.1:9", "models": ["m"], "tier": "edge", "region": "r",
            "capacity": 1, "running": 0, "waiting": 0, "timestamp": int(time.time()), "signature": "0x" + "00" * 65}
    return {
        "not json": b"{", "array": b"[]", "deep": b"[" * 10000 + b"]" * 10000,
        "short signature": {**beat, "signature": "0x1234"}, "zero signature": beat,
        "capacity 2**70": {**beat, "capacity": 2**70}, "waiting -1": {**beat, "waiting": -1},
        "timestamp 2**80": {**beat, "timestamp": 2**80}, "no models": {**beat, "models": []},
        "url 5 KiB": {**beat, "url": "http://" + "a" * 5000}, "node bad": {**beat, "node": "0xnothex"},
        "string capacity": {**beat, "capacity": "many"},
    }


@pytest.mark.parametrize("case", sorted(heartbeat_cases()))
def test_malformed_heartbeats_are_refused(deployed: Deployed, case: str) -> None:
    value = heartbeat_cases()[case]
    content = value if isinstance(value, bytes) else json.dumps(value).encode()
    before = httpx.get(deployed.api + "/health", timeout=5).json()["nodes"]
    response = httpx.post(deployed.api + HEARTBEAT_PATH, content=content,
                          headers={"content-type": "application/json"}, timeout=10)
    assert_refused(response, (400, 401))
    assert httpx.get(deployed.api + "/health", timeout=5).json()["nodes"] == before


@pytest.mark.parametrize("content", [b"", b"{", b"[]", b'{"job_id": "0x12"}', b"[" * 5000 + b"]" * 5000,
                                     b'{"job_id": "0x' + b"0" * 64 + b'", "payer": 5}'],
                         ids=["empty", "open brace", "array", "short job", "deep", "bad payer"])
def test_malformed_receipts_are_400_invalid_receipt(deployed: Deployed, content: bytes) -> None:
    before = snapshot(deployed)
    response = httpx.post(deployed.api + RECEIPTS_PATH, content=content, timeout=10)
    assert assert_refused(response) == "invalid_receipt"
    assert snapshot(deployed) == before


@pytest.fixture(scope="module")
def auditor(deployed: Deployed) -> LocalAccount:
    key: LocalAccount = Account.create()
    deployed.ledger.grant_role(deployed.operator, "AUDITOR_ROLE", key.address)
    return key


def encode_cursor(block: int, log_index: int, order: str) -> str:
    """A cursor in the API's own encoding, with any integers (the API's encoder refuses huge ones)."""
    raw = json.dumps({"b": block, "i": log_index, "o": order}).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


AUDIT_CASES: dict[str, tuple[str, dict[str, Any]]] = {
    "from_block 2**70": ("/audit/transactions", {"from_block": 2**70}),
    "to_block negative": ("/audit/transactions", {"to_block": -1}),
    "from_block text": ("/audit/transactions", {"from_block": "one"}),
    "cursor huge ints": ("/audit/transactions", {"cursor": encode_cursor(2**80, 2**90, "asc")}),
    "cursor past bigint": ("/audit/transactions", {"cursor": encode_cursor(2**63, 0, "asc")}),
    "cursor negative": ("/audit/transactions", {"cursor": encode_cursor(-1, 0, "asc")}),
    "cursor garbage": ("/audit/transactions", {"cursor": "%%%not-base64"}),
    "cursor long": ("/audit/transactions", {"cursor": "A" * 5000}),
    "cursor other order": ("/audit/transactions", {"cursor": encode_cursor(1, 0, "desc")}),
    "limit zero": ("/audit/transactions", {"limit": 0}),
    "limit 2**70": ("/audit/transactions", {"limit": 2**70}),
    "since 1e30": ("/audit/transactions", {"since": "1" + "0" * 30}),
    "until nonsense": ("/audit/transactions", {"until": "yesterday"}),
    "account short": ("/audit/transactions", {"account": "0x12"}),
    "kind unknown": ("/audit/transactions", {"kind": "everything"}),
    "batch id short": ("/audit/batches/0x12", {}),
    "job id not hex": ("/audit/receipts/0x" + "zz" * 32, {}),
    "reconciliation account": ("/audit/reconciliation", {"account": "nobody"}),
    "usage payer short": ("/v1/usage", {"payer": "0x12"}),
    "usage payer 5 KiB": ("/v1/usage", {"payer": "0x" + "a" * 5000}),
    "budget spender bad": ("/v1/budget", {"payer": "0x" + "11" * 20, "spender": "x"}),
}


@pytest.mark.parametrize("case", sorted(AUDIT_CASES))
def test_malformed_audit_and_account_parameters_are_400s_and_burn_no_nonce(deployed: Deployed, auditor: LocalAccount,
                                                                           case: str) -> None:
    path, params = AUDIT_CASES[case]
    before = snapshot(deployed)
    response = httpx.get(deployed.api + path, params=params, auth=reader_auth(auditor), timeout=10)
    assert_refused(response)
    assert snapshot(deployed) == before


def test_account_reads_are_for_the_holders_and_auditors(deployed: Deployed, signer: Signer,
                                                        auditor: LocalAccount) -> None:
    payer, developer = signer.enterprise.address, signer.developer.address
    reads: list[tuple[str, dict[str, str], LocalAccount | None, int]] = [
        ("/v1/usage", {"payer": payer}, signer.enterprise, 200),
        ("/v1/usage", {"payer": payer}, auditor, 200),
        ("/v1/usage", {"payer": payer}, signer.developer, 403),
        ("/v1/usage", {"payer": payer}, Account.create(), 403),
        ("/v1/usage", {"payer": payer}, None, 401),
        ("/v1/budget", {"payer": payer, "spender": developer}, signer.developer, 200),
        ("/v1/budget", {"payer": payer, "spender": developer}, signer.enterprise, 200),
        ("/v1/budget", {"payer": payer, "spender": developer}, auditor, 200),
        ("/v1/budget", {"payer": payer, "spender": developer}, Account.create(), 403),
        ("/v1/budget", {"payer": payer}, signer.developer, 403),  # the payer's own account is the payer's
    ]
    for path, params, key, status in reads:
        nonces = snapshot(deployed)[2]
        response = httpx.get(deployed.api + path, params=params, timeout=10,
                             auth=None if key is None else reader_auth(key))
        assert response.status_code == status, (path, params, response.text)
        if status == 403:
            assert response.json()["error"]["code"] == "not_account_holder"
        assert snapshot(deployed)[2] == nonces + (1 if status == 200 else 0)  # refused reads burn no nonce
    billable = httpx.get(deployed.api + "/v1/usage", params={"payer": payer}, timeout=10,
                         auth=SluiceAuth(signer.enterprise, max_cost=5))
    assert billable.status_code == 400 and billable.json()["error"]["param"] == "Sluice-Max-Cost"


def test_no_request_path_answers_500(deployed: Deployed, signer: Signer) -> None:
    """A quick sweep of odd methods, paths and headers."""
    probes: list[Callable[[], httpx.Response]] = [
        lambda: httpx.request("DELETE", deployed.api + CHAT, timeout=5),
        lambda: httpx.get(deployed.api + "/v1/models/../../etc/passwd", timeout=5),
        lambda: httpx.post(deployed.api + CHAT, content=os.urandom(2048), timeout=5,
                           headers={"content-type": "application/json"}),
        lambda: httpx.post(deployed.api + CHAT, content=b"x" * (2 << 20), timeout=10,
                           headers=signer.headers(b"x")),
        lambda: httpx.post(deployed.api + HEARTBEAT_PATH, content=b"\x00" * 100, timeout=5),
    ]
    before = snapshot(deployed)
    for probe in probes:
        response = probe()
        assert 400 <= response.status_code < 500, response.text[:200]
    assert snapshot(deployed) == before
