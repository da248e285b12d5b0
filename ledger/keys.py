"""Where signing keys come from: settings, encrypted keystores, or the embedded chain's dev keys."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path

from eth_account import Account
from eth_account.signers.local import LocalAccount

from ledger.config import EMBEDDED_MNEMONIC, Settings
from ledger.errors import LedgerError

# Roles of the embedded deployment's development keys (HD index on Anvil's mnemonic).
EMBEDDED_OPERATOR = 0
EMBEDDED_SETTLER = 1


class KeyUnavailable(LedgerError):
    """No key is configured for a role, or a keystore cannot be opened."""


@cache
def embedded_account(index: int) -> LocalAccount:
    """Key `index` of the embedded chain's well-known development mnemonic (never for production)."""
    Account.enable_unaudited_hdwallet_features()
    account: LocalAccount = Account.from_mnemonic(EMBEDDED_MNEMONIC, account_path=f"m/44'/60'/0'/0/{index}")
    return account


def load_keystore(path: Path, password: str) -> LocalAccount:
    """Decrypt an Ethereum JSON keystore (v3)."""
    try:
        keystore = json.loads(path.read_text())
    except FileNotFoundError:
        raise KeyUnavailable(f"keystore {path} does not exist") from None
    except json.JSONDecodeError:
        raise KeyUnavailable(f"{path} is not a JSON keystore") from None
    try:
        key = Account.decrypt(keystore, password)
    except ValueError:
        raise KeyUnavailable(f"wrong password for keystore {path}") from None
    account: LocalAccount = Account.from_key(key)
    return account


def operator_account(settings: Settings) -> LocalAccount:
    if settings.operator_key is not None:
        account: LocalAccount = Account.from_key(settings.operator_key.get_secret_value())
        return account
    if settings.embedded_chain:
        return embedded_account(EMBEDDED_OPERATOR)
    raise KeyUnavailable("no operator key: set SLUICE_OPERATOR_KEY or pass --keystore")


def settler_account(settings: Settings) -> LocalAccount:
    if settings.settler_key is not None:
        settler: LocalAccount = Account.from_key(settings.settler_key.get_secret_value())
        return settler
    if settings.embedded_chain:
        return embedded_account(EMBEDDED_SETTLER)
    raise KeyUnavailable("no settler key: set SLUICE_SETTLER_KEY")
