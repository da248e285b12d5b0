"""The signed-call headers: what eth-account signs for the same Redemption, in DESIGN.md's header names."""

from __future__ import annotations

import os

import pytest
from eth_account import Account
from eth_account.messages import SignableMessage, encode_typed_data
from eth_hash.auto import keccak

from ledger.protocol.eip712 import Domains
from ledger.protocol.signed_call import SIGNED_HEADERS, signed_call_headers

SETTLEMENT = "0x5FbDB2315678afecb367f032d93F642f64180aa3"
DOMAINS = Domains(31337, SETTLEMENT)


def eth_account_message(payer: str, body: bytes, max_cost: int, nonce: int, deadline: int) -> SignableMessage:
    return encode_typed_data(full_message={
        "types": {
            "EIP712Domain": [{"name": "name", "type": "string"}, {"name": "version", "type": "string"},
                             {"name": "chainId", "type": "uint256"}, {"name": "verifyingContract", "type": "address"}],
            "Redemption": [{"name": "payer", "type": "address"}, {"name": "bodyHash", "type": "bytes32"},
                           {"name": "maxCost", "type": "uint256"}, {"name": "nonce", "type": "uint256"},
                           {"name": "deadline", "type": "uint256"}],
        },
        "primaryType": "Redemption",
        "domain": {"name": "Sluice", "version": "1", "chainId": 31337, "verifyingContract": SETTLEMENT},
        "message": {"payer": payer, "bodyHash": keccak(body), "maxCost": max_cost, "nonce": nonce,
                    "deadline": deadline},
    })


@pytest.mark.parametrize("body", [b"", b'{"model": "m", "messages": []}', os.urandom(3000)])
def test_headers_carry_eth_accounts_signature_of_the_redemption(body: bytes) -> None:
    spender, payer = Account.create(), Account.create()
    headers = signed_call_headers(bytes(spender.key), DOMAINS.redemption, body, payer=payer.address,
                                  max_cost=10**17, nonce=2**128 - 1, deadline=1_900_000_000)
    assert tuple(headers) == SIGNED_HEADERS == (
        "Sluice-Payer", "Sluice-Max-Cost", "Sluice-Nonce", "Sluice-Deadline", "Sluice-Signature")
    assert headers["Sluice-Payer"] == payer.address
    assert (headers["Sluice-Max-Cost"], headers["Sluice-Nonce"], headers["Sluice-Deadline"]) == (
        "100000000000000000", str(2**128 - 1), "1900000000")
    message = eth_account_message(payer.address, body, 10**17, 2**128 - 1, 1_900_000_000)
    expected = Account.sign_message(message, spender.key)
    assert headers["Sluice-Signature"] == "0x" + bytes(expected.signature).hex()
    assert Account.recover_message(message, signature=bytes.fromhex(headers["Sluice-Signature"][2:])) == spender.address


def test_the_same_inputs_give_the_same_headers_and_bad_ones_a_value_error() -> None:
    key = os.urandom(32)
    payer = "0x" + "11" * 20
    first = signed_call_headers(key, DOMAINS.redemption, b"", payer=payer, max_cost=0, nonce=7, deadline=9)
    assert first == signed_call_headers(key, DOMAINS.redemption, b"", payer=payer, max_cost=0, nonce=7, deadline=9)
    with pytest.raises(ValueError, match="20-byte address"):
        signed_call_headers(key, DOMAINS.redemption, b"", payer="0x1234", max_cost=0, nonce=1, deadline=1)
    with pytest.raises(ValueError, match="uint256"):
        signed_call_headers(key, DOMAINS.redemption, b"", payer=payer, max_cost=2**256, nonce=1, deadline=1)
