"""The five headers of a signed call (DESIGN.md "The signed call"), built for one request body.

Every billable call, account query and audit query carries them. The signer is the
spender; it signs the EIP-712 `Redemption(payer, keccak256(body), maxCost, nonce, deadline)`
under the deployment's "Sluice" domain. Pure: the caller picks the nonce (random 128-bit is
fine) and the deadline (unix seconds), so the same inputs always give the same headers.
"""

from __future__ import annotations

from ledger.protocol.eip712 import Redemption, typed_digest
from ledger.protocol.keccak import keccak256
from ledger.protocol.secp256k1 import sign_digest

PAYER_HEADER = "Sluice-Payer"
MAX_COST_HEADER = "Sluice-Max-Cost"
NONCE_HEADER = "Sluice-Nonce"
DEADLINE_HEADER = "Sluice-Deadline"
SIGNATURE_HEADER = "Sluice-Signature"
SIGNED_HEADERS = (PAYER_HEADER, MAX_COST_HEADER, NONCE_HEADER, DEADLINE_HEADER, SIGNATURE_HEADER)


def signed_call_headers(private_key: bytes, separator: bytes, body: bytes, *, payer: str, max_cost: int,
                        nonce: int, deadline: int) -> dict[str, str]:
    """The `Sluice-*` headers signing `body` with `private_key` under the "Sluice" domain `separator`.

    ValueError when payer is not a 20-byte address or a number does not fit in uint256.
    """
    message = Redemption(payer, keccak256(body), max_cost, nonce, deadline)
    signature = sign_digest(private_key, typed_digest(separator, message.struct_hash()))
    return {
        PAYER_HEADER: payer,
        MAX_COST_HEADER: str(max_cost),
        NONCE_HEADER: str(nonce),
        DEADLINE_HEADER: str(deadline),
        SIGNATURE_HEADER: "0x" + signature.hex(),
    }
