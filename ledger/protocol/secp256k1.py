"""The one secp256k1 signer and recoverer of Sluice: developers' calls, tickets, node receipts, audits.

Signatures are 65 bytes r || s || v. Recovery accepts exactly what Ethereum's `ecrecover`
and OpenZeppelin's `ECDSA.recover` accept: r and s in 1 .. n-1, s in the lower half of the
curve order (low-s, so a signature cannot be re-shaped into a second valid one), v 27/28 or
0/1, a 32-byte digest. Everything else is a `SignatureError` before libsecp256k1 is asked.
Both directions go through coincurve's libsecp256k1 (~30 µs a recovery): this is the hot
path of the service (one recovery per call, one per receipt) and of `sluice audit verify`.
"""

from __future__ import annotations

from functools import lru_cache

from coincurve import PrivateKey, PublicKey
from eth_utils.address import to_checksum_address

from ledger.protocol.keccak import keccak256

SECP256K1_N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
HALF_N = SECP256K1_N // 2

# Big-endian 32-byte strings compare as the numbers they encode: the range checks need no int().
_ZERO = bytes(32)
_N_BYTES = SECP256K1_N.to_bytes(32, "big")
_HALF_N_BYTES = HALF_N.to_bytes(32, "big")


class SignatureError(ValueError):
    """A signature is malformed, out of range, high-s, or does not recover."""


@lru_cache(maxsize=64)
def _signing_key(private_key: bytes) -> PrivateKey:
    # Building a PrivateKey derives its public key: a service signing every ticket keeps it.
    return PrivateKey(private_key)


def sign_digest(private_key: bytes, digest: bytes) -> bytes:
    """A 65-byte r||s||v signature (v = 27/28, low-s as libsecp256k1 always produces)."""
    sig = _signing_key(private_key).sign_recoverable(digest, hasher=None)
    return sig[:64] + bytes([sig[64] + 27])


def recover_address(digest: bytes, signature: bytes) -> bytes:
    """The 20 address bytes that signed `digest` (no checksumming: hot paths compare bytes)."""
    if len(signature) != 65:
        raise SignatureError(f"a signature is 65 bytes, got {len(signature)}")
    if len(digest) != 32:
        raise SignatureError(f"a signed digest is 32 bytes, got {len(digest)}")
    v = signature[64]
    if v in (27, 28):
        v -= 27
    elif v not in (0, 1):
        raise SignatureError(f"signature v must be 27 or 28 (or 0 or 1), got {v}")
    r, s = signature[:32], signature[32:64]
    if not _ZERO < r < _N_BYTES:
        raise SignatureError("signature r is out of range (1 .. n-1)")
    if not _ZERO < s <= _HALF_N_BYTES:
        raise SignatureError("signature s must be in the lower half of the curve order (low-s)")
    try:
        public = PublicKey.from_signature_and_message(signature[:64] + bytes([v]), digest, hasher=None)
    except Exception as exc:  # libsecp256k1 refuses an r that is no point's x coordinate
        raise SignatureError("signature does not recover to a public key") from exc
    return keccak256(public.format(compressed=False)[1:])[12:]


def recover_digest(digest: bytes, signature: bytes) -> str:
    """The checksummed address that signed `digest`; SignatureError as `recover_address`."""
    return to_checksum_address(recover_address(digest, signature))
