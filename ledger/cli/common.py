"""What every ledger command shares: opening the deployment, picking the signing key, errors."""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import typer
from eth_account.signers.local import LocalAccount

from ledger.cli.output import fail, print_json
from ledger.units import format_tokens

F = TypeVar("F", bound=Callable[..., Any])

PASSWORD_ENV = "SLUICE_KEYSTORE_PASSWORD"


def hint_for(exc: Exception) -> str | None:
    from ledger import errors

    match exc:
        case errors.NotAllowlisted():
            return "the operator must allowlist the account first: sluice admin allowlist add ADDRESS"
        case errors.Unauthorized():
            return "this key lacks the role; an admin can grant it: sluice admin roles grant ROLE ADDRESS"
        case errors.Paused():
            return "the token is paused; the operator resumes it with: sluice admin unpause"
        case errors.ChainUnavailable():
            return "start the embedded stack with `sluice up --detach`, or point RPC_URL at a running chain"
        case errors.DeploymentMissing():
            return "deploy with `sluice deploy` (the embedded stack does it in `sluice up`)"
        case errors.PaymentShort():
            return "the wallet needs more of the payment token (or a larger approval to the sale)"
    return None


def handle_errors(fn: F) -> F:
    """Turn ledger errors and bad input into one clear message plus a hint, exit code 1."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from ledger.errors import LedgerError
        from ledger.keys import KeyUnavailable

        try:
            return fn(*args, **kwargs)
        except (LedgerError, KeyUnavailable, ValueError) as exc:
            fail(str(exc), hint_for(exc))

    return wrapper  # type: ignore[return-value]


def open_ledger() -> Any:
    """The Ledger of the configured chain's recorded deployment."""
    from ledger.chain.client import Ledger
    from ledger.chain.connection import connect
    from ledger.chain.deployment import load_deployment
    from ledger.config import get_settings

    settings = get_settings()
    w3 = connect(settings.effective_rpc_url)
    deployment = load_deployment(settings.state_dir, int(w3.eth.chain_id))
    return Ledger(w3, deployment, timeout=settings.tx_timeout, confirmations=settings.confirmations)


def operator_key(keystore: Path | None) -> LocalAccount:
    """The operator's key: from `--keystore` (password from the env or a prompt), else the settings."""
    from ledger.config import get_settings
    from ledger.keys import load_keystore, operator_account

    if keystore is None:
        return operator_account(get_settings())
    password = os.environ.get(PASSWORD_ENV)
    if password is None:
        password = typer.prompt(f"password for {keystore}", hide_input=True)
    return load_keystore(keystore, password)


def report_tx(action: str, tx_hash: str, block: int, as_json: bool, **fields: Any) -> None:
    """Print one on-chain change: its transaction hash always, JSON with --json."""
    if as_json:
        print_json({"action": action, "tx_hash": tx_hash, "block": block, **fields})
        return
    from ledger.cli.output import console

    details = ", ".join(f"{k}={format_tokens(v) if k.endswith('amount') else v}" for k, v in fields.items())
    console.print(f"[green]{action}[/] {details}\n  tx {tx_hash} (block {block})")


KeystoreOpt = typer.Option(
    None, "--keystore", help=f"operator keystore file (password from ${PASSWORD_ENV} or a prompt)"
)
JsonOpt = typer.Option(False, "--json", help="print machine-readable JSON (amounts in base units)")
