"""Where signing keys come from: settings, encrypted keystores, or the embedded chain's dev keys.

Outside the embedded chain no well-known development key is ever used (DESIGN.md): the operator,
settler and dispatch keys must be given, and a given key that is one of Anvil's public development
keys is refused, naming the variable to set. A chain counts as a development chain when no RPC_URL
is configured (`sluice up`'s Anvil) or when the endpoint itself says it is Anvil.
"""

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
EMBEDDED_DISPATCH = 2
# Keys of the public mnemonic that are refused off the embedded chain (Anvil hands out 10; the embedded
# stack uses up to #11; a margin beyond).
WELL_KNOWN_KEYS = 32
DEVELOPMENT_CLIENTS = ("anvil/", "hardhat", "ganache")


class KeyUnavailable(LedgerError):
    """No key is configured for a role, or a keystore cannot be opened."""


class DevelopmentKeyRefused(KeyUnavailable):
    """A well-known development key given for a chain that is not a development chain."""


@cache
def well_known_addresses() -> frozenset[str]:
    """Lower-case addresses of the public development mnemonic's first keys."""
    return frozenset(embedded_account(i).address.lower() for i in range(WELL_KNOWN_KEYS))


def is_well_known(address: str) -> bool:
    return address.lower() in well_known_addresses()


@cache
def development_chain_at(rpc_url: str) -> bool:
    """Whether the endpoint says it is a development chain (Anvil); False when it cannot be asked."""
    import requests

    try:
        answer = requests.post(rpc_url, json={"jsonrpc": "2.0", "id": 1, "method": "web3_clientVersion",
                                              "params": []}, timeout=10).json()
    except (requests.RequestException, ValueError):
        return False
    version = answer.get("result") if isinstance(answer, dict) else None
    return isinstance(version, str) and version.lower().startswith(DEVELOPMENT_CLIENTS)


def development_chain(settings: Settings) -> bool:
    return settings.embedded_chain or development_chain_at(settings.effective_rpc_url)


def refuse_well_known(address: str, variable: str, settings: Settings) -> None:
    """Raise DevelopmentKeyRefused when `address` is a public development key and the chain is not one."""
    if is_well_known(address) and not development_chain(settings):
        raise DevelopmentKeyRefused(
            f"{variable} holds a well-known development key ({address}, from Anvil's public mnemonic) and the "
            f"chain at {settings.effective_rpc_url} is not a development chain: anyone can sign with it; set "
            f"{variable} to a key of your own"
        )


def dispatch_key(configured: bytes | None, settings: Settings) -> bytes:
    """The key signing dispatch tickets: the one configured, else (development chains only) embedded key #2."""
    if configured is None:
        if not development_chain(settings):
            raise KeyUnavailable("no dispatch key: outside the embedded chain set SLUICE_DISPATCH_KEY to the "
                                 "private key that signs the service's dispatch tickets")
        return bytes(embedded_account(EMBEDDED_DISPATCH).key)
    refuse_well_known(Account.from_key(configured).address, "SLUICE_DISPATCH_KEY", settings)
    return configured


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
        refuse_well_known(account.address, "SLUICE_OPERATOR_KEY", settings)
        return account
    if development_chain(settings):
        return embedded_account(EMBEDDED_OPERATOR)
    raise KeyUnavailable("no operator key: outside the embedded chain set SLUICE_OPERATOR_KEY or pass --keystore")


def settler_account(settings: Settings) -> LocalAccount:
    if settings.settler_key is not None:
        settler: LocalAccount = Account.from_key(settings.settler_key.get_secret_value())
        refuse_well_known(settler.address, "SLUICE_SETTLER_KEY", settings)
        return settler
    if development_chain(settings):
        return embedded_account(EMBEDDED_SETTLER)
    raise KeyUnavailable("no settler key: outside the embedded chain set SLUICE_SETTLER_KEY")
