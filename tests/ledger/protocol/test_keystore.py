"""Keystores eth-account writes open with the light client's own decryption, and nothing else opens them."""

from __future__ import annotations

import copy

import pytest
from eth_account import Account

from ledger.protocol.keystore import KeystoreError, WrongPassword, decrypt_keystore


@pytest.mark.parametrize(("kdf", "cost"), [("scrypt", 2**10), ("pbkdf2", 1000)])
def test_an_eth_account_keystore_opens_with_its_password_only(kdf: str, cost: int) -> None:
    account = Account.create()
    keystore = Account.encrypt(account.key, "correct horse", kdf=kdf, iterations=cost)
    assert decrypt_keystore(keystore, "correct horse") == bytes(account.key)
    with pytest.raises(WrongPassword, match="does not open"):
        decrypt_keystore(keystore, "correct hors")


def test_a_tampered_ciphertext_fails_the_mac() -> None:
    keystore = Account.encrypt(Account.create().key, "pw", kdf="scrypt", iterations=2**10)
    flipped = copy.deepcopy(keystore)
    text = flipped["crypto"]["ciphertext"]
    flipped["crypto"]["ciphertext"] = ("0" if text[0] != "0" else "1") + text[1:]
    with pytest.raises(WrongPassword):
        decrypt_keystore(flipped, "pw")


def test_malformed_keystores_say_what_is_wrong() -> None:
    good = Account.encrypt(Account.create().key, "pw", kdf="scrypt", iterations=2**10)
    with pytest.raises(KeystoreError, match="no `crypto` section"):
        decrypt_keystore({"version": 3}, "pw")
    other_cipher = copy.deepcopy(good)
    other_cipher["crypto"]["cipher"] = "aes-256-gcm"
    with pytest.raises(KeystoreError, match="unsupported cipher 'aes-256-gcm'"):
        decrypt_keystore(other_cipher, "pw")
    other_kdf = copy.deepcopy(good)
    other_kdf["crypto"]["kdf"] = "argon2"
    with pytest.raises(KeystoreError, match="unsupported key derivation 'argon2'"):
        decrypt_keystore(other_kdf, "pw")
    no_salt = copy.deepcopy(good)
    del no_salt["crypto"]["kdfparams"]["salt"]
    with pytest.raises(KeystoreError, match="scrypt parameters are incomplete"):
        decrypt_keystore(no_salt, "pw")
    not_hex = copy.deepcopy(good)
    not_hex["crypto"]["mac"] = "zz"
    with pytest.raises(KeystoreError, match="not hex"):
        decrypt_keystore(not_hex, "pw")
