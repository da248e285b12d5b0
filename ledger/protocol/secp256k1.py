"""The one secp256k1 signer and recoverer of Sluice: developers' calls, tickets, node receipts, audits.

Signatures are 65 bytes r || s || v. Recovery accepts what OpenZeppelin's `ECDSA.recover`
accepts, plus v written as 0/1: r and s in 1 .. n-1, s in the lower half of the curve order
(low-s, so a signature cannot be re-shaped into a second valid one), v 27/28 (or 0/1), a
32-byte digest. Everything else is a `SignatureError` before libsecp256k1 is asked.

Both directions go through coincurve's libsecp256k1. Recovery is the hot path of the service
(one per call, one per receipt) and of `sluice audit verify` (two per receipt), so it calls
libsecp256k1 through coincurve's cffi binding with one set of buffers per thread: ~30 µs, a few
µs less than `PublicKey.from_signature_and_message`, which allocates three objects per call. It
falls back to that public API when the binding is not there, and checks itself against it once.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from functools import lru_cache

from coincurve import PrivateKey, PublicKey

from ledger.protocol.address import to_checksum_address
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


def address_of(private_key: bytes) -> str:
    """The checksummed address of `private_key`."""
    public = _signing_key(private_key).public_key.format(compressed=False)[1:]
    return str(to_checksum_address(keccak256(public)[12:]))


def _public_api(digest: bytes, compact: bytes, recovery_id: int) -> bytes | None:
    try:
        public = PublicKey.from_signature_and_message(compact + bytes([recovery_id]), digest, hasher=None)
    except ValueError:  # no public key recovers from this (r, s, v)
        return None
    return public.format(compressed=False)


def _raw_binding() -> Callable[[bytes, bytes, int], bytes | None]:
    """The 65-byte uncompressed public key that signed `digest`, or None; range checks are the caller's."""
    try:
        from coincurve._libsecp256k1 import ffi, lib
        from coincurve.context import GLOBAL_CONTEXT
    except ImportError:  # another coincurve build: its public API
        return _public_api
    ctx = GLOBAL_CONTEXT.ctx
    local = threading.local()  # libsecp256k1 writes into these: one set per thread
    uncompressed = lib.SECP256K1_EC_UNCOMPRESSED

    def recover_public(digest: bytes, compact: bytes, recovery_id: int) -> bytes | None:
        buffers = getattr(local, "buffers", None)
        if buffers is None:
            buffers = local.buffers = (ffi.new("secp256k1_ecdsa_recoverable_signature *"),
                                       ffi.new("secp256k1_pubkey *"), ffi.new("unsigned char[65]"),
                                       ffi.new("size_t *"))
        sig, pub, out, size = buffers
        if not lib.secp256k1_ecdsa_recoverable_signature_parse_compact(ctx, sig, compact, recovery_id):
            return None
        if not lib.secp256k1_ecdsa_recover(ctx, pub, sig, digest):
            return None
        size[0] = 65
        lib.secp256k1_ec_pubkey_serialize(ctx, out, size, pub, uncompressed)
        return bytes(ffi.buffer(out, 65))

    probe_digest = keccak256(b"sluice secp256k1 self-check")
    probe = PrivateKey(keccak256(b"sluice secp256k1 self-check key")).sign_recoverable(probe_digest, hasher=None)
    if recover_public(probe_digest, probe[:64], probe[64]) != _public_api(probe_digest, probe[:64], probe[64]):
        return _public_api
    return recover_public


_recover_public = _raw_binding()


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
    public = _recover_public(digest, signature[:64], v)
    if public is None:  # an r that is no point's x coordinate
        raise SignatureError("signature does not recover to a public key")
    return keccak256(public[1:])[12:]


def recover_digest(digest: bytes, signature: bytes) -> str:
    """The checksummed address that signed `digest`; SignatureError as `recover_address`."""
    return to_checksum_address(recover_address(digest, signature))
