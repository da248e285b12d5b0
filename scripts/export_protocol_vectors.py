"""Write the protocol test vectors the JavaScript client is checked against (clients/js/test/vectors.json).

Every value comes from the Python implementation of the wire protocol: EIP-712 domain separators, struct
hashes, digests and signatures of `Redemption` and `UsageReceipt` from fixed keys (`ledger.protocol.eip712`),
StandardMerkleTree leaves, roots and proofs (`ledger.protocol.merkle`), compute-token amounts formatted and
parsed (`ledger.units`), and one settled batch as the audit API serves it. The `eth_signTypedData_v4`
payloads are hashed by eth-account too, so a wallet given them signs the digest the service verifies.

    python scripts/export_protocol_vectors.py          # write the file
    python scripts/export_protocol_vectors.py --check  # exit 1 if the committed file is stale
"""

from __future__ import annotations

import argparse
import json
import sys
from decimal import localcontext
from pathlib import Path
from typing import Any

from eth_account import Account
from eth_account.messages import encode_typed_data

from ledger.protocol.eip712 import (
    DOMAIN_VERSION,
    RECEIPT_DOMAIN_NAME,
    REDEMPTION_DOMAIN_NAME,
    REDEMPTION_TYPE,
    Domains,
    Redemption,
    UsageReceipt,
    typed_digest,
)
from ledger.protocol.keccak import keccak256 as keccak
from ledger.protocol.merkle import build_tree, receipt_leaf, verify_proof
from ledger.protocol.secp256k1 import HALF_N, SECP256K1_N, SignatureError, recover_digest, sign_digest
from ledger.units import format_amount, parse_amount

ROOT = Path(__file__).resolve().parent.parent
OUTPUT = ROOT / "clients" / "js" / "test" / "vectors.json"
UINT256_MAX = 2**256 - 1

DOMAIN_FIELDS = [
    {"name": "name", "type": "string"},
    {"name": "version", "type": "string"},
    {"name": "chainId", "type": "uint256"},
    {"name": "verifyingContract", "type": "address"},
]
REDEMPTION_FIELDS = [
    {"name": "payer", "type": "address"},
    {"name": "bodyHash", "type": "bytes32"},
    {"name": "maxCost", "type": "uint256"},
    {"name": "nonce", "type": "uint256"},
    {"name": "deadline", "type": "uint256"},
]
RECEIPT_FIELDS = [
    {"name": "jobId", "type": "bytes32"},
    {"name": "payer", "type": "address"},
    {"name": "spender", "type": "address"},
    {"name": "model", "type": "bytes32"},
    {"name": "promptTokens", "type": "uint256"},
    {"name": "completionTokens", "type": "uint256"},
    {"name": "cost", "type": "uint256"},
    {"name": "requestDigest", "type": "bytes32"},
]


def hx(raw: bytes) -> str:
    return "0x" + raw.hex()


def fixed_key(name: str) -> bytes:
    """A private key that is the same on every run (never a key anyone uses)."""
    return keccak(f"sluice protocol vectors: {name}".encode())


KEYS = {name: fixed_key(name) for name in ("enterprise", "developer", "auditor", "node", "other-node")}
ADDRESS = {name: Account.from_key(key).address for name, key in KEYS.items()}

DOMAINS: list[dict[str, Any]] = [
    {"chainId": 31337, "verifyingContract": "0x5FbDB2315678afecb367f032d93F642f64180aa3"},
    {"chainId": 2026, "verifyingContract": "0xDc64a140Aa3E981100a9becA4E685f962f0cF6C9"},
]


def v4_payload(domain: dict[str, Any], fields: list[dict[str, str]], primary: str,
               message: dict[str, Any]) -> dict[str, Any]:
    """The JSON object a wallet's eth_signTypedData_v4 receives (uint256 values as decimal strings)."""
    return {"types": {"EIP712Domain": DOMAIN_FIELDS, primary: fields}, "primaryType": primary, "domain": domain,
            "message": message}


def wallet_digest(payload: dict[str, Any]) -> bytes:
    """The digest eth-account computes from the wallet payload, the reference a wallet follows."""
    signable = encode_typed_data(full_message=json.loads(json.dumps(payload)))
    return keccak(b"\x19" + signable.version + signable.header + signable.body)


def domain_vectors() -> list[dict[str, Any]]:
    out = []
    for d in DOMAINS:
        domains = Domains(d["chainId"], d["verifyingContract"])
        out.append({
            "chainId": d["chainId"], "verifyingContract": d["verifyingContract"],
            "redemption_separator": hx(domains.redemption), "receipt_separator": hx(domains.receipt),
        })
    return out


REDEMPTION_CASES: list[dict[str, Any]] = [
    {"name": "chat completion paid from an enterprise's escrow", "domain": 0, "signer": "developer",
     "payer": "enterprise",
     "body": b'{"model":"tiny-chat","messages":[{"role":"user","content":"Hello"}],"max_tokens":16}',
     "max_cost": 10**17, "nonce": 0x8E1F5D3C2B4A69788796A5B4C3D2E1F0, "deadline": 1_800_000_000},
    {"name": "signed GET of audit data: empty body, maxCost 0", "domain": 0, "signer": "auditor", "payer": "auditor",
     "body": b"", "max_cost": 0, "nonce": 1, "deadline": 1_800_000_060},
    {"name": "UTF-8 body, largest nonce and a far deadline", "domain": 1, "signer": "developer",
     "payer": "enterprise", "body": '{"prompt":"héllo ✓ 日本"}'.encode(), "max_cost": UINT256_MAX,
     "nonce": UINT256_MAX, "deadline": 2**64},
    {"name": "bytes that are not UTF-8", "domain": 1, "signer": "enterprise", "payer": "enterprise",
     "body": bytes(range(256)), "max_cost": 12_345_678_901_234_567_890, "nonce": 2**127 + 3,
     "deadline": 1_700_000_000},
]


def redemption_vectors() -> list[dict[str, Any]]:
    out = []
    for case in REDEMPTION_CASES:
        d = DOMAINS[case["domain"]]
        domains = Domains(d["chainId"], d["verifyingContract"])
        payer = ADDRESS[case["payer"]]
        body_hash = keccak(case["body"])
        message = Redemption(payer, body_hash, case["max_cost"], case["nonce"], case["deadline"])
        digest = typed_digest(domains.redemption, message.struct_hash())
        signature = sign_digest(KEYS[case["signer"]], digest)
        assert recover_digest(digest, signature) == ADDRESS[case["signer"]]
        payload = v4_payload(
            {"name": REDEMPTION_DOMAIN_NAME, "version": DOMAIN_VERSION, **d}, REDEMPTION_FIELDS, "Redemption",
            {"payer": payer, "bodyHash": hx(body_hash), "maxCost": str(case["max_cost"]),
             "nonce": str(case["nonce"]), "deadline": str(case["deadline"])},
        )
        assert wallet_digest(payload) == digest, case["name"]
        out.append({
            "name": case["name"], "domain": case["domain"], "signer_key": hx(KEYS[case["signer"]]),
            "signer": ADDRESS[case["signer"]], "payer": payer, "body": hx(case["body"]),
            "body_hash": hx(body_hash), "max_cost": str(case["max_cost"]), "nonce": str(case["nonce"]),
            "deadline": str(case["deadline"]), "struct_hash": hx(message.struct_hash()), "digest": hx(digest),
            "signature": hx(signature), "typed_data_v4": payload,
            "headers": {"Sluice-Payer": payer, "Sluice-Max-Cost": str(case["max_cost"]),
                        "Sluice-Nonce": str(case["nonce"]), "Sluice-Deadline": str(case["deadline"]),
                        "Sluice-Signature": hx(signature)},
        })
    return out


def usage_receipt(index: int, request_digest: bytes, model: str = "tiny-chat") -> dict[str, Any]:
    prompt, completion = 7 + 3 * index, 16 + index
    return {
        "job_id": keccak(f"job {index}".encode()), "payer": ADDRESS["enterprise"], "spender": ADDRESS["developer"],
        "model": model, "prompt_tokens": prompt, "completion_tokens": completion,
        "cost": prompt * 20 + completion * 60 + index, "request_digest": request_digest,
    }


def signed_receipt(domains: Domains, r: dict[str, Any], node: str) -> dict[str, Any]:
    receipt = UsageReceipt(r["job_id"], r["payer"], r["spender"], keccak(r["model"].encode()), r["prompt_tokens"],
                           r["completion_tokens"], r["cost"], r["request_digest"])
    digest = typed_digest(domains.receipt, receipt.struct_hash())
    signature = sign_digest(KEYS[node], digest)
    assert recover_digest(digest, signature) == ADDRESS[node]
    return {"struct_hash": hx(receipt.struct_hash()), "digest": hx(digest), "signature": hx(signature),
            "model_id": hx(receipt.model)}


def receipt_vectors(requests: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for i, request in enumerate(requests[:2]):
        d = DOMAINS[request["domain"]]
        domains = Domains(d["chainId"], d["verifyingContract"])
        r = usage_receipt(i, bytes.fromhex(request["digest"][2:]), model="tiny-chat" if i == 0 else "Llama 3 ✓")
        signed = signed_receipt(domains, r, "node")
        payload = v4_payload(
            {"name": RECEIPT_DOMAIN_NAME, "version": DOMAIN_VERSION, **d}, RECEIPT_FIELDS, "UsageReceipt",
            {"jobId": hx(r["job_id"]), "payer": r["payer"], "spender": r["spender"], "model": signed["model_id"],
             "promptTokens": str(r["prompt_tokens"]), "completionTokens": str(r["completion_tokens"]),
             "cost": str(r["cost"]), "requestDigest": hx(r["request_digest"])},
        )
        assert hx(wallet_digest(payload)) == signed["digest"]
        out.append({
            "domain": request["domain"], "node_key": hx(KEYS["node"]), "node": ADDRESS["node"],
            "job_id": hx(r["job_id"]), "payer": r["payer"], "spender": r["spender"], "model": r["model"],
            "prompt_tokens": r["prompt_tokens"], "completion_tokens": r["completion_tokens"], "cost": str(r["cost"]),
            "request_digest": hx(r["request_digest"]), **signed, "typed_data_v4": payload,
        })
    return out


def rejected_signatures(request: dict[str, Any]) -> list[dict[str, Any]]:
    """Signatures the service refuses, each with the reason Python's recovery gives."""
    good = bytes.fromhex(request["signature"][2:])
    r, s, v = good[:32], int.from_bytes(good[32:64], "big"), good[64]
    assert s <= HALF_N
    cases = {
        "high-s twin of a valid signature": r + (SECP256K1_N - s).to_bytes(32, "big") + bytes([55 - v]),
        "v = 29": good[:64] + bytes([29]),
        "64 bytes": good[:64],
        "66 bytes": good + b"\x00",
        "r = 0": b"\x00" * 32 + good[32:],
        "s = 0": good[:32] + b"\x00" * 32 + good[64:],
    }
    out = []
    for name, signature in cases.items():
        try:
            recover_digest(bytes.fromhex(request["digest"][2:]), signature)
        except SignatureError as exc:
            out.append({"name": name, "digest": request["digest"], "signature": hx(signature), "reason": str(exc)})
        else:
            raise AssertionError(f"the service would accept the {name} signature")
    return out


def merkle_vectors() -> list[dict[str, Any]]:
    out = []
    for size in (1, 2, 3, 4, 5, 7, 8, 13):
        fields = [{"job_id": hx(keccak(f"merkle {size} job {i}".encode())),
                   "payer": ADDRESS["enterprise"], "spender": ADDRESS["developer" if i % 2 else "enterprise"],
                   "cost": str(i * 10**15 + size if i else UINT256_MAX if size == 13 else 0)} for i in range(size)]
        leaves = [receipt_leaf(bytes.fromhex(f["job_id"][2:]), f["payer"], f["spender"], int(f["cost"]))
                  for f in fields]
        tree = build_tree(leaves)
        proofs = [[hx(p) for p in tree.proof(leaf)] for leaf in leaves]
        assert all(verify_proof(leaf, tree.proof(leaf), tree.root) for leaf in leaves)
        out.append({"receipts": [{**f, "leaf": hx(leaf), "proof": proof}
                                 for f, leaf, proof in zip(fields, leaves, proofs, strict=True)],
                    "tree": [hx(node) for node in tree.tree], "root": hx(tree.root), "batch_id": hx(keccak(tree.root))})
    return out


def audit_batch() -> dict[str, Any]:
    """A settled batch as `GET /audit/batches/{id}` serves its receipts: three metered jobs and one debt leaf."""
    d = DOMAINS[0]
    domains = Domains(d["chainId"], d["verifyingContract"])
    receipts = []
    for i in range(3):
        body = json.dumps({"model": "tiny-chat", "messages": [{"role": "user", "content": f"call {i}"}]}).encode()
        max_cost = 10**16
        nonce, deadline = 1000 + i, 1_800_000_000 + i
        message = Redemption(ADDRESS["enterprise"], keccak(body), max_cost, nonce, deadline)
        digest = typed_digest(domains.redemption, message.struct_hash())
        r = usage_receipt(10 + i, digest)
        signed = signed_receipt(domains, r, "node")
        receipts.append({
            "kind": "usage", "job_id": hx(r["job_id"]), "batch_id": None, "payer": r["payer"],
            "spender": r["spender"], "cost": str(r["cost"]), "merkle_proof": None, "model": r["model"],
            "prompt_tokens": r["prompt_tokens"], "completion_tokens": r["completion_tokens"],
            "max_cost": str(max_cost),
            "request": {"payer": ADDRESS["enterprise"], "body_hash": hx(keccak(body)), "max_cost": str(max_cost),
                        "nonce": str(nonce), "deadline": deadline,
                        "signature": hx(sign_digest(KEYS["developer"], digest)), "digest": hx(digest)},
            "node": ADDRESS["node"], "node_signature": signed["signature"], "status": "settled",
        })
    receipts.append({"kind": "debt", "job_id": hx(keccak(b"an earlier batch")), "batch_id": None,
                     "payer": ADDRESS["enterprise"], "spender": ADDRESS["developer"], "cost": "5000",
                     "merkle_proof": None, "debt": {"batch_id": hx(keccak(b"an earlier batch")), "owed": "9000",
                                                    "paid": "4000"}})
    leaves = [receipt_leaf(bytes.fromhex(r["job_id"][2:]), r["payer"], r["spender"], int(r["cost"]))
              for r in receipts]
    tree = build_tree(leaves)
    for receipt, leaf in zip(receipts, leaves, strict=True):
        receipt["merkle_proof"] = [hx(p) for p in tree.proof(leaf)]
        receipt["batch_id"] = hx(keccak(tree.root))
    return {"domain": 0, "receipts_root": hx(tree.root), "batch_id": hx(keccak(tree.root)), "items": len(receipts),
            "node_keys": [ADDRESS["node"]], "receipts": receipts}


FORMAT_CASES = [0, 1, 10**17, 10**18, 10**18 + 1, 12 * 10**18 + 5 * 10**17, 123_456_789 * 10**18, 10**36,
                UINT256_MAX, -1, -(25 * 10**17)]
PARSE_CASES = [
    "0", "1", "12.5", "0.000000000000000001", "1_000", "  7 ", "+5", "-0", ".5", "5.", "1e3", "1E-18",
    "2.5e-17", "1.000000000000000000000", "00012.50", "123456789.123456789123456789", "1e59",
    "12345678901.123456789012345678",
    "115792089237316195423570985008687907853269984665640564039457.584007913129639935",
    "0.0000000000000000001", "1e-19", "-1", "-0.5", "abc", "", " ", "1.5.5", "NaN", "Infinity", "1,5", "0x10",
    "1 000", "e5", "1e", "--1",
]


def amount_vectors() -> dict[str, Any]:
    formats = [{"units": str(u), "text": format_amount(u)} for u in FORMAT_CASES]
    parses: list[dict[str, Any]] = []
    rounded: list[dict[str, Any]] = []
    for text in PARSE_CASES:
        try:
            units: int | None = parse_amount(text)
        except ValueError as exc:
            parses.append({"text": text, "error": str(exc)})
            continue
        with localcontext() as ctx:  # Decimal's default 28 digits round some amounts; 200 are exact
            ctx.prec = 200
            exact = parse_amount(text)
        if units == exact:
            parses.append({"text": text, "units": str(units)})
        else:
            rounded.append({"text": text, "python_units": str(units), "units": str(exact)})
    return {"decimals": 18, "format": formats, "parse": parses, "parse_rounded_by_python": rounded}


def build() -> dict[str, Any]:
    requests = redemption_vectors()
    return {
        "about": "Generated by scripts/export_protocol_vectors.py from the Python protocol code; do not edit.",
        "types": {"redemption": REDEMPTION_TYPE, "EIP712Domain": DOMAIN_FIELDS, "Redemption": REDEMPTION_FIELDS,
                  "UsageReceipt": RECEIPT_FIELDS},
        "keys": {name: {"private_key": hx(key), "address": ADDRESS[name]} for name, key in KEYS.items()},
        "domains": domain_vectors(),
        "redemptions": requests,
        "receipts": receipt_vectors(requests),
        "rejected_signatures": rejected_signatures(requests[0]),
        "merkle": merkle_vectors(),
        "audit_batch": audit_batch(),
        "amounts": amount_vectors(),
    }


def render() -> str:
    return json.dumps(build(), indent=1, ensure_ascii=False) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if the committed vectors are stale")
    args = parser.parse_args()
    text = render()
    if args.check:
        if not OUTPUT.exists() or OUTPUT.read_text(encoding="utf-8") != text:
            print(f"{OUTPUT.relative_to(ROOT)} is stale: run python scripts/export_protocol_vectors.py",
                  file=sys.stderr)
            return 1
        print(f"{OUTPUT.relative_to(ROOT)} is up to date")
        return 0
    OUTPUT.parent.mkdir(parents=True, exist_ok=True)
    OUTPUT.write_text(text, encoding="utf-8")
    print(f"wrote {OUTPUT.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
