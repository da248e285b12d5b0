"""The wallets under the state dir: encrypted JSON keystores, their passwords, and unlocking one.

Keys live in eth-account keystores (scrypt) under `<state dir>/wallets/<address>.json`. Passwords
come from a hidden prompt or $SLUICE_KEYSTORE_PASSWORD, never from an argument, and a keystore is
never overwritten. Every refusal names the wallets there are.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ledger.cli.common import PASSWORD_ENV, Refused, ask_password, checksum_address, keystore_password

if TYPE_CHECKING:
    from eth_account.signers.local import LocalAccount

WALLETS = "wallets"
SCRYPT_N = 2**18  # scrypt cost of new keystores: geth's and eth-account's standard


def wallets_dir() -> Path:
    from ledger.config import get_settings

    return get_settings().state_dir / WALLETS


def known_wallets() -> list[Path]:
    folder = wallets_dir()
    return sorted(folder.glob("*.json")) if folder.is_dir() else []


def known_hint() -> str:
    known = known_wallets()
    if not known:
        return "create one with `sluice wallet new`, or bring one with `sluice wallet import`"
    return "wallets under the state dir: " + ", ".join(p.stem for p in known)


def keystore_path(keystore: str | None) -> Path:
    """The keystore to use: `--keystore` (a path, or a wallet's address), else the only wallet there is."""
    from eth_utils.address import is_address

    if keystore is None:
        known = known_wallets()
        if len(known) == 1:
            return known[0]
        if not known:
            raise Refused(f"no wallet under {wallets_dir()}", known_hint())
        raise Refused(f"{len(known)} wallets under {wallets_dir()}; say which with --keystore", known_hint())
    if is_address(keystore) and not Path(keystore).exists():
        path = wallets_dir() / f"{checksum_address(keystore)}.json"
        if not path.is_file():
            raise Refused(f"no wallet for {checksum_address(keystore)} under {wallets_dir()}", known_hint())
        return path
    path = Path(keystore).expanduser()
    if not path.is_file():
        raise Refused(f"keystore {path} does not exist", known_hint())
    return path


def read_keystore(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise Refused(f"{path} is not a readable JSON keystore ({exc.__class__.__name__})") from None
    if not isinstance(data, dict) or not isinstance(data.get("crypto", data.get("Crypto")), dict):
        raise Refused(f"{path} is not an Ethereum JSON keystore (no `crypto` section)")
    return data


def keystore_address(path: Path) -> str:
    """The wallet's address, read from the keystore without decrypting it."""
    data = read_keystore(path)
    address = data.get("address")
    if not isinstance(address, str):
        raise Refused(f"{path} does not record its address", "pass the address as an argument instead")
    return checksum_address(address if address.startswith("0x") else "0x" + address, "address")


def password_for(path: Path) -> str:
    return ask_password(f"Password for {path.name}")


def new_password() -> str:
    password = ask_password("Password for the new keystore", confirm=True)
    if not password:
        raise Refused("the password is empty", f"type one at the prompt, or set ${PASSWORD_ENV}")
    return password


def unlock(keystore: str | None) -> LocalAccount:
    """Decrypt the wallet's key (password from the environment or a prompt)."""
    from eth_account import Account

    path = keystore_path(keystore)
    data = read_keystore(path)
    password = password_for(path)
    try:
        key = Account.decrypt(data, password)
    except ValueError:
        source = f"${PASSWORD_ENV}" if keystore_password() is not None else "the password typed"
        raise Refused(f"wrong password for keystore {path}: {source} does not decrypt it",
                      f"type the password this keystore was created with, or correct ${PASSWORD_ENV}") from None
    account: LocalAccount = Account.from_key(key)
    return account


def unlock_key(keystore: str | None) -> bytes:
    """The wallet's raw private key, decrypted without eth-account (ledger.protocol.keystore): for signed reads,
    which then need no web3 at all."""
    from ledger.protocol.keystore import KeystoreError, WrongPassword, decrypt_keystore

    path = keystore_path(keystore)
    data = read_keystore(path)
    password = password_for(path)
    try:
        return decrypt_keystore(data, password)
    except WrongPassword:
        source = f"${PASSWORD_ENV}" if keystore_password() is not None else "the password typed"
        raise Refused(f"wrong password for keystore {path}: {source} does not decrypt it",
                      f"type the password this keystore was created with, or correct ${PASSWORD_ENV}") from None
    except KeystoreError as exc:
        raise Refused(f"{path}: {exc}") from None


def write_keystore(path: Path, keystore: dict[str, Any]) -> None:
    """Write a keystore readable by its owner only; an existing file is never replaced."""
    if path.exists():
        raise keystore_exists(path)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".keystore-", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as out:  # mkstemp creates it 0600
            out.write(json.dumps(keystore) + "\n")
        try:
            os.link(tmp, path)  # atomic, and fails instead of replacing a file that appeared meanwhile
        except FileExistsError:
            raise keystore_exists(path) from None
    finally:
        os.unlink(tmp)


def refuse_existing(out: Path | None) -> None:
    """Refuse an existing --out before asking for anything."""
    if out is not None and out.expanduser().exists():
        raise keystore_exists(out.expanduser())


def keystore_exists(path: Path) -> Refused:
    return Refused(f"{path} already exists; a keystore is never overwritten",
                   "choose another file with --out, or move the existing one away first")


def save_new(account: LocalAccount, password: str, out: Path | None) -> Path:
    from eth_account import Account

    path = out.expanduser() if out is not None else wallets_dir() / f"{account.address}.json"
    write_keystore(path, Account.encrypt(account.key, password, kdf="scrypt", iterations=SCRYPT_N))
    return path
