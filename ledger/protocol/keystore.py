"""Decrypting Ethereum JSON keystores (Web3 Secret Storage v3) with the light client's own libraries.

The same files eth-account writes (`sluice wallet new`): scrypt or PBKDF2-HMAC-SHA256 derives a key,
`keccak256(derived[16:32] + ciphertext)` must equal the stored `mac`, and AES-128-CTR under `derived[:16]`
gives the private key back. pycryptodome (scrypt, AES) and hashlib (PBKDF2) do the work, so a developer
with only the client installed can sign with the wallet they already keep.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Any

from ledger.protocol.keccak import keccak256


class KeystoreError(ValueError):
    """A keystore that cannot be read, or a password that does not open it."""


class WrongPassword(KeystoreError):
    """The password does not open the keystore (its MAC does not match)."""


def _derive(crypto: dict[str, Any], password: bytes) -> bytes:
    kdf = crypto.get("kdf")
    params = crypto.get("kdfparams") or {}
    try:
        salt = bytes.fromhex(str(params["salt"]))
        dklen = int(params["dklen"])
        if kdf == "scrypt":
            from Crypto.Protocol.KDF import scrypt  # pycryptodome's: faster here than hashlib's (OpenSSL) one

            derived = scrypt(password, salt, dklen, N=int(params["n"]), r=int(params["r"]),  # type: ignore[arg-type]
                             p=int(params["p"]))
            return bytes(derived) if isinstance(derived, bytes | bytearray) else bytes(derived[0])
        if kdf == "pbkdf2":
            if params.get("prf") != "hmac-sha256":
                raise KeystoreError(f"unsupported PBKDF2 function {params.get('prf')!r} (hmac-sha256 expected)")
            return hashlib.pbkdf2_hmac("sha256", password, salt, int(params["c"]), dklen)
    except (KeyError, TypeError, ValueError) as exc:
        if isinstance(exc, KeystoreError):
            raise
        raise KeystoreError(f"the keystore's {kdf} parameters are incomplete or malformed ({exc})") from None
    raise KeystoreError(f"unsupported key derivation {kdf!r} (scrypt or pbkdf2 expected)")


def decrypt_keystore(keystore: dict[str, Any], password: str) -> bytes:
    """The 32-byte private key a v3 keystore holds; `WrongPassword` when the password does not open it."""
    from Crypto.Cipher import AES
    from Crypto.Util import Counter

    crypto = keystore.get("crypto", keystore.get("Crypto"))
    if not isinstance(crypto, dict):
        raise KeystoreError("not an Ethereum JSON keystore (no `crypto` section)")
    if crypto.get("cipher") != "aes-128-ctr":
        raise KeystoreError(f"unsupported cipher {crypto.get('cipher')!r} (aes-128-ctr expected)")
    try:
        ciphertext = bytes.fromhex(str(crypto["ciphertext"]))
        iv = bytes.fromhex(str(crypto["cipherparams"]["iv"]))
        mac = bytes.fromhex(str(crypto["mac"]))
    except (KeyError, TypeError, ValueError):
        raise KeystoreError("the keystore's ciphertext, iv or mac is missing or not hex") from None
    derived = _derive(crypto, password.encode())
    if len(derived) < 32:
        raise KeystoreError("the keystore derives a key shorter than 32 bytes")
    if not hmac.compare_digest(keccak256(derived[16:32] + ciphertext), mac):
        raise WrongPassword("the password does not open this keystore")
    counter = Counter.new(128, initial_value=int.from_bytes(iv, "big"))
    key = bytes(AES.new(derived[:16], AES.MODE_CTR, counter=counter).decrypt(ciphertext))
    if len(key) != 32:
        raise KeystoreError("the keystore does not hold a 32-byte private key")
    return key
