"""Our fast EIP-712 hashing must equal eth-account's reference implementation, and recovery must be strict."""

from __future__ import annotations

import os

import pytest
from eth_account import Account
from hypothesis import given, settings
from hypothesis import strategies as st

from ledger.protocol.eip712 import DispatchTicket, Domains, Redemption, UsageReceipt, typed_digest
from ledger.protocol.secp256k1 import HALF_N, SECP256K1_N, SignatureError, recover_digest, sign_digest

SETTLEMENT = "0xDc64a140Aa3E981100a9becA4E685f962f0cF6C9"
DOMAINS = Domains(31337, SETTLEMENT)
uint = st.integers(min_value=0, max_value=2**256 - 1)


@settings(max_examples=30, deadline=None)
@given(max_cost=uint, nonce=uint, deadline=uint, body=st.binary(max_size=64))
def test_redemption_digest_matches_eth_account(max_cost: int, nonce: int, deadline: int, body: bytes) -> None:
    signer = Account.create()
    from eth_hash.auto import keccak

    message = Redemption(signer.address, keccak(body), max_cost, nonce, deadline)
    reference = signer.sign_typed_data(
        DOMAINS.eth_account_domain(),
        {"Redemption": [{"name": "payer", "type": "address"}, {"name": "bodyHash", "type": "bytes32"},
                        {"name": "maxCost", "type": "uint256"}, {"name": "nonce", "type": "uint256"},
                        {"name": "deadline", "type": "uint256"}]},
        {"payer": signer.address, "bodyHash": message.body_hash, "maxCost": max_cost, "nonce": nonce,
         "deadline": deadline},
    )
    digest = typed_digest(DOMAINS.redemption, message.struct_hash())
    assert digest == bytes(reference.message_hash)
    assert recover_digest(digest, bytes(reference.signature)) == signer.address
    assert sign_digest(bytes(signer.key), digest) == bytes(reference.signature)


def test_ticket_and_receipt_digests_match_eth_account() -> None:
    node, payer, spender = Account.create(), Account.create(), Account.create()
    job, model, request = os.urandom(32), os.urandom(32), os.urandom(32)
    ticket = DispatchTicket(job, node.address, payer.address, spender.address, model, 256, 20, 60, request,
                            1_900_000_000)
    ref = node.sign_typed_data(
        DOMAINS.eth_account_domain("Sluice Dispatch"),
        {"DispatchTicket": [{"name": n, "type": t} for n, t in (
            ("jobId", "bytes32"), ("node", "address"), ("payer", "address"), ("spender", "address"),
            ("model", "bytes32"), ("maxTokens", "uint256"), ("inputRate", "uint256"), ("outputRate", "uint256"),
            ("requestDigest", "bytes32"), ("expires", "uint256"))]},
        {"jobId": job, "node": node.address, "payer": payer.address, "spender": spender.address, "model": model,
         "maxTokens": 256, "inputRate": 20, "outputRate": 60, "requestDigest": request, "expires": 1_900_000_000},
    )
    assert typed_digest(DOMAINS.ticket, ticket.struct_hash()) == bytes(ref.message_hash)
    receipt = UsageReceipt(job, payer.address, spender.address, model, 12, 34, 5678, request)
    ref = node.sign_typed_data(
        DOMAINS.eth_account_domain("Sluice Node"),
        {"UsageReceipt": [{"name": n, "type": t} for n, t in (
            ("jobId", "bytes32"), ("payer", "address"), ("spender", "address"), ("model", "bytes32"),
            ("promptTokens", "uint256"), ("completionTokens", "uint256"), ("cost", "uint256"),
            ("requestDigest", "bytes32"))]},
        {"jobId": job, "payer": payer.address, "spender": spender.address, "model": model, "promptTokens": 12,
         "completionTokens": 34, "cost": 5678, "requestDigest": request},
    )
    assert typed_digest(DOMAINS.receipt, receipt.struct_hash()) == bytes(ref.message_hash)


def test_domains_differ_by_chain_and_contract() -> None:
    other_chain = Domains(1, SETTLEMENT)
    other_contract = Domains(31337, "0x" + "11" * 20)
    assert len({DOMAINS.redemption, other_chain.redemption, other_contract.redemption}) == 3
    assert len({DOMAINS.redemption, DOMAINS.ticket, DOMAINS.receipt}) == 3


def test_high_s_signature_is_refused() -> None:
    signer = Account.create()
    digest = os.urandom(32)
    sig = sign_digest(bytes(signer.key), digest)
    s = int.from_bytes(sig[32:64], "big")
    assert s <= HALF_N
    flipped = sig[:32] + (SECP256K1_N - s).to_bytes(32, "big") + bytes([55 - sig[64]])
    with pytest.raises(SignatureError, match="low-s"):
        recover_digest(digest, flipped)


@pytest.mark.parametrize("bad", [b"", b"\x00" * 64, b"\x00" * 66, b"\x01" * 64 + b"\x1d"])
def test_malformed_signatures_are_refused(bad: bytes) -> None:
    with pytest.raises(SignatureError):
        recover_digest(os.urandom(32), bad)


def test_recovery_of_another_digest_gives_another_signer() -> None:
    signer = Account.create()
    sig = sign_digest(bytes(signer.key), b"\x01" * 32)
    assert recover_digest(b"\x02" * 32, sig) != signer.address


def test_the_direct_binding_and_coincurves_public_api_recover_the_same_keys() -> None:
    from ledger.protocol.secp256k1 import _public_api, _recover_public

    for _ in range(50):
        digest = os.urandom(32)
        sig = sign_digest(os.urandom(32), digest)
        assert _recover_public(digest, sig[:64], sig[64] - 27) == _public_api(digest, sig[:64], sig[64] - 27)
    # x = 5 is not on secp256k1 (5**3 + 7 = 132 is no square mod p): neither recovers a key from it.
    r_off_curve = (5).to_bytes(32, "big") + sig[32:64]
    assert _recover_public(digest, r_off_curve, 0) is None
    assert _public_api(digest, r_off_curve, 0) is None
    with pytest.raises(SignatureError, match="does not recover"):
        recover_digest(digest, r_off_curve + b"\x1b")
