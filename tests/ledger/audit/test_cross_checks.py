"""The verifier's per-batch checks against independent implementations.

Every signature here is made and recovered by eth-account (EIP-712 through
`encode_typed_data`, `Account.sign_message` / `Account.recover_message`), every root and
proof by OpenZeppelin's `@openzeppelin/merkle-tree`; `ledger.audit.checks.check_batch` must
agree with them on each receipt, and be stricter exactly where Sluice means to be (low-s,
v in {27, 28, 0, 1}, as OpenZeppelin's ECDSA.recover).
"""

from __future__ import annotations

import copy
import dataclasses
import os
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import cache
from typing import Any

import orjson
import pytest
from eth_account import Account
from eth_account.messages import SignableMessage, encode_typed_data
from eth_account.signers.local import LocalAccount

from ledger.audit.checks import BatchContext, check_batch
from ledger.audit.history import Pair, SettledBatch
from ledger.domain import model_id, usage_cost
from ledger.protocol.eip712 import Domains
from ledger.protocol.secp256k1 import SECP256K1_N
from ledger.units import ONE_TOKEN
from tests.support.ledger import openzeppelin_tree

CHAIN_ID = 31337
SETTLEMENT = "0x5FbDB2315678afecb367f032d93F642f64180aa3"
DOMAINS = Domains(CHAIN_ID, SETTLEMENT)
MODEL = "meta-llama/Llama-3.1-8B-Instruct"
INPUT_RATE, OUTPUT_RATE = 20 * ONE_TOKEN, 60 * ONE_TOKEN
BLOCK = 40
REDEMPTION_FIELDS = [("payer", "address"), ("bodyHash", "bytes32"), ("maxCost", "uint256"), ("nonce", "uint256"),
                     ("deadline", "uint256")]
RECEIPT_FIELDS = [("jobId", "bytes32"), ("payer", "address"), ("spender", "address"), ("model", "bytes32"),
                  ("promptTokens", "uint256"), ("completionTokens", "uint256"), ("cost", "uint256"),
                  ("requestDigest", "bytes32")]
NODE = Account.create()


def typed(primary: str, fields: list[tuple[str, str]], domain_name: str, message: dict[str, Any],
          chain_id: int = CHAIN_ID) -> SignableMessage:
    """The EIP-712 message as eth-account encodes it, with nothing from ledger.protocol."""
    return encode_typed_data(full_message={
        "types": {
            "EIP712Domain": [{"name": "name", "type": "string"}, {"name": "version", "type": "string"},
                             {"name": "chainId", "type": "uint256"}, {"name": "verifyingContract", "type": "address"}],
            primary: [{"name": n, "type": t} for n, t in fields],
        },
        "primaryType": primary,
        "domain": {"name": domain_name, "version": "1", "chainId": chain_id, "verifyingContract": SETTLEMENT},
        "message": message,
    })


def request_message(payer: str, body_hash: bytes, max_cost: int, nonce: int, deadline: int,
                    chain_id: int = CHAIN_ID) -> SignableMessage:
    return typed("Redemption", REDEMPTION_FIELDS, "Sluice",
                 {"payer": payer, "bodyHash": body_hash, "maxCost": max_cost, "nonce": nonce, "deadline": deadline},
                 chain_id)


def receipt_message(job: bytes, payer: str, spender: str, prompt: int, completion: int, cost: int,
                    request_digest: bytes) -> SignableMessage:
    return typed("UsageReceipt", RECEIPT_FIELDS, "Sluice Node",
                 {"jobId": job, "payer": payer, "spender": spender, "model": model_id(MODEL), "promptTokens": prompt,
                  "completionTokens": completion, "cost": cost, "requestDigest": request_digest})


def eth_account_signer(message: SignableMessage, signature: bytes) -> str | None:
    """eth-account's recovery, or None where it refuses the signature."""
    try:
        return str(Account.recover_message(message, signature=signature))
    except Exception:  # eth-account raises ValueError, BadSignature or ValidationError by case
        return None


@dataclass
class Served:
    """One receipt as the audit API serves it, and the messages its two signatures are over."""

    json: dict[str, Any]
    request: SignableMessage
    receipt: SignableMessage
    spender: LocalAccount


def served_receipt(payer: LocalAccount, spender: LocalAccount, prompt: int, completion: int) -> Served:
    cost = usage_cost(prompt, completion, INPUT_RATE, OUTPUT_RATE)
    body_hash, job, deadline = os.urandom(32), os.urandom(32), 1_900_000_000
    nonce = int.from_bytes(os.urandom(16), "big")
    request = request_message(payer.address, body_hash, cost, nonce, deadline)
    signed_request = Account.sign_message(request, spender.key)
    request_digest = bytes(signed_request.message_hash)
    receipt = receipt_message(job, payer.address, spender.address, prompt, completion, cost, request_digest)
    return Served({
        "job_id": "0x" + job.hex(), "kind": "usage", "payer": payer.address, "spender": spender.address,
        "cost": str(cost), "model": MODEL, "prompt_tokens": prompt, "completion_tokens": completion,
        "node": NODE.address, "node_signature": "0x" + bytes(Account.sign_message(receipt, NODE.key).signature).hex(),
        "request": {"payer": payer.address, "body_hash": "0x" + body_hash.hex(), "max_cost": str(cost),
                    "nonce": str(nonce), "deadline": deadline, "digest": "0x" + request_digest.hex(),
                    "signature": "0x" + bytes(signed_request.signature).hex()},
    }, request, receipt, spender)


def raw(address: str) -> bytes:
    return bytes.fromhex(address[2:])


@cache
def oz_tree(rows: tuple[tuple[str, str, str, str], ...]) -> tuple[str, tuple[tuple[str, ...], ...]]:
    """OpenZeppelin's root and proofs of `rows` (one node process per distinct set of rows)."""
    tree = openzeppelin_tree([list(row) for row in rows])
    proofs = tree["proofs"]
    assert isinstance(proofs, list)
    return str(tree["root"]), tuple(tuple(p) for p in proofs)


def settled(receipts: list[Served], root: str | None = None) -> tuple[BatchContext, bytes]:
    """The batch as the chain would record it, rooted and proved by OpenZeppelin; and the API's JSON of it."""
    oz_root, proofs = oz_tree(tuple((r.json["job_id"], r.json["payer"], r.json["spender"], r.json["cost"])
                                    for r in receipts))
    for served, proof in zip(receipts, proofs, strict=True):
        served.json.setdefault("merkle_proof", list(proof))
    redeemed: dict[Pair, int] = defaultdict(int)
    for r in receipts:
        redeemed[(raw(r.json["payer"]), raw(r.json["spender"]))] += int(r.json["cost"])
    batch = SettledBatch(os.urandom(32), bytes.fromhex((root or oz_root)[2:]), len(receipts),
                         sum(redeemed.values()), os.urandom(32), BLOCK)
    context = BatchContext(batch, dict(redeemed), {}, (DOMAINS.redemption, DOMAINS.receipt),
                           {raw(NODE.address): (0, None)}, {model_id(MODEL): [(1, INPUT_RATE, OUTPUT_RATE)]})
    return context, orjson.dumps({"receipts": [r.json for r in receipts]})


def history(count: int) -> list[Served]:
    payers = [Account.create() for _ in range(3)]
    developers = [Account.create() for _ in range(3)]
    pairs = [(p, p) for p in payers] + list(zip(payers, developers, strict=True))
    return [served_receipt(*pairs[i % len(pairs)], 10 + 37 * i, 1 + 11 * i) for i in range(count)]


@pytest.mark.parametrize("count", [1, 2, 3, 7, 33])
def test_a_batch_signed_by_eth_account_and_rooted_by_openzeppelin_verifies(count: int) -> None:
    receipts = history(count)
    for r in receipts:
        assert eth_account_signer(r.request, bytes.fromhex(r.json["request"]["signature"][2:])) == r.json["spender"]
        assert eth_account_signer(r.receipt, bytes.fromhex(r.json["node_signature"][2:])) == NODE.address
    found = check_batch(*settled(receipts))
    assert found.problems == []
    assert found.signatures == 2 * count
    assert len(found.usage) == count


@pytest.fixture(scope="module")
def signed_batch() -> list[Served]:
    return history(3)


def high_s(sig: bytes) -> bytes:
    s = int.from_bytes(sig[32:64], "big")
    return sig[:32] + (SECP256K1_N - s).to_bytes(32, "big") + bytes([55 - sig[64]])


# (variant, how the signature is changed, whether eth-account recovers the signer, whether the verifier accepts it)
VARIANTS: list[tuple[str, Callable[[bytes], bytes], bool, bool]] = [
    ("as signed (v 27/28)", lambda sig: sig, True, True),
    ("v as 0/1", lambda sig: sig[:64] + bytes([sig[64] - 27]), True, True),
    ("high-s twin", high_s, True, False),  # a valid curve signature; low-s makes each signature unique
    ("v 29", lambda sig: sig[:64] + bytes([29]), False, False),
    ("v 26", lambda sig: sig[:64] + bytes([26]), False, False),
    ("v 37 (EIP-155 style)", lambda sig: sig[:64] + bytes([sig[64] + 10]), True, False),
    ("r = 0", lambda sig: bytes(32) + sig[32:], False, False),
    ("r = n", lambda sig: SECP256K1_N.to_bytes(32, "big") + sig[32:], False, False),
    ("s = 0", lambda sig: sig[:32] + bytes(32) + sig[64:], False, False),
    ("s = n", lambda sig: sig[:32] + SECP256K1_N.to_bytes(32, "big") + sig[64:], False, False),
    ("64 bytes", lambda sig: sig[:64], False, False),
    ("66 bytes", lambda sig: sig + b"\x00", False, False),
    ("another r", lambda sig: bytes([sig[0] ^ 1]) + sig[1:], False, False),
]


@pytest.mark.parametrize(("variant", "change", "eth_account_recovers", "accepted"), VARIANTS,
                         ids=[v[0] for v in VARIANTS])
@pytest.mark.parametrize("which", ["request", "node"])
def test_signature_checks_agree_with_eth_account(signed_batch: list[Served], which: str, variant: str,
                                                 change: Callable[[bytes], bytes], eth_account_recovers: bool,
                                                 accepted: bool) -> None:
    receipts = [replace(r, json=copy.deepcopy(r.json)) for r in signed_batch]
    target = receipts[1]
    if which == "request":
        message, signer = target.request, target.json["spender"]
        signature = change(bytes.fromhex(target.json["request"]["signature"][2:]))
        target.json["request"]["signature"] = "0x" + signature.hex()
    else:
        message, signer = target.receipt, NODE.address
        signature = change(bytes.fromhex(target.json["node_signature"][2:]))
        target.json["node_signature"] = "0x" + signature.hex()
    recovered = eth_account_signer(message, signature)
    assert (recovered == signer) is eth_account_recovers
    found = check_batch(*settled(receipts))
    if accepted:
        assert found.problems == []
        return
    # Where eth-account recovers another key, the verifier names that same key; where either refuses, nothing.
    who = "nothing" if recovered is None or recovered == signer else recovered
    detail = (f"the request signature recovers to {who}, not the spender" if which == "request"
              else f"the node receipt signature recovers to {who}, not the node {NODE.address}")
    check = "request_signature" if which == "request" else "node_signature"
    assert found.problems == [(check, target.json["job_id"], detail)]


def test_a_signature_for_another_chain_recovers_to_another_key_in_both() -> None:
    receipts = history(2)
    target = receipts[0]
    r = target.json["request"]
    other_chain = request_message(target.json["payer"], bytes.fromhex(r["body_hash"][2:]), int(r["max_cost"]),
                                  int(r["nonce"]), int(r["deadline"]), chain_id=1)
    signature = bytes(Account.sign_message(other_chain, target.spender.key).signature)
    r["signature"] = "0x" + signature.hex()
    recovered = eth_account_signer(target.request, signature)
    assert recovered is not None and recovered != target.json["spender"]
    found = check_batch(*settled(receipts))
    assert found.problems == [
        ("request_signature", target.json["job_id"],
         f"the request signature recovers to {recovered}, not the spender")]


def test_a_proof_openzeppelin_would_refuse_is_flagged_for_its_receipt_only() -> None:
    receipts = history(7)
    other = history(7)
    settled(other)  # OpenZeppelin proofs of another tree
    receipts[4].json["merkle_proof"] = other[4].json["merkle_proof"]
    receipts[2].json["merkle_proof"] = []
    found = check_batch(*settled(receipts))
    assert found.problems == [
        ("merkle_proof", receipts[2].json["job_id"], "the served proof does not lead from this receipt to the "
                                                     "on-chain receiptsRoot"),
        ("merkle_proof", receipts[4].json["job_id"], "the served proof does not lead from this receipt to the "
                                                     "on-chain receiptsRoot"),
    ]


def test_receipts_that_are_not_the_committed_tree_fail_the_root() -> None:
    receipts = history(5)
    committed, _proofs = oz_tree(tuple((r.json["job_id"], r.json["payer"], r.json["spender"], r.json["cost"])
                                       for r in receipts[:4]))
    context, body = settled(receipts, root=committed)
    found = check_batch(context, body)
    checks = [check for check, _job, _detail in found.problems]
    assert checks[0] == "merkle_root" and set(checks[1:]) == {"merkle_proof"} and len(checks) == 6
    assert found.problems[0][2].endswith(f"BatchSettled commits to {committed}")


@pytest.mark.parametrize(("registered", "retired", "flagged"), [
    (0, None, []), (BLOCK, None, []), (0, BLOCK + 1, []),
    (0, BLOCK, ["inactive_node"]), (0, 3, ["inactive_node"]), (BLOCK + 1, None, ["inactive_node"]),
])
def test_a_receipt_counts_only_if_its_node_was_active_when_the_batch_settled(
    registered: int, retired: int | None, flagged: list[str]
) -> None:
    context, body = settled(history(2))
    context = dataclasses.replace(context, nodes={raw(NODE.address): (registered, retired)})
    assert sorted({p[0] for p in check_batch(context, body).problems}) == flagged


def test_a_receipt_from_a_key_not_in_node_registry_is_flagged() -> None:
    context, body = settled(history(2))
    problems = check_batch(dataclasses.replace(context, nodes={}), body).problems
    assert [p[0] for p in problems] == ["unregistered_node", "unregistered_node"]


def test_unreceipted_usage_is_its_own_class_not_a_signature_failure() -> None:
    served = history(2)
    served[0].json["node_signature"] = "0x"
    served[0].json["unreceipted"] = "receipt_refused:over_max_tokens"
    context, body = settled(served)
    found = check_batch(context, body)
    assert found.problems == []
    assert found.unreceipted == [(served[0].json["job_id"], "receipt_refused:over_max_tokens")]
