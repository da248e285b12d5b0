"""What every command shares: how failures are explained, addresses, secrets, the deployment, the operator key.

A command refuses with one message and what to do about it (`error: ...` / `hint: ...` on stderr,
exit code 1): it raises `Refused`, or lets a ledger, stack, database or input error through to
`explained`, which words every failure the same way wherever it comes from.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import typer
from typer.exceptions import TyperException

from ledger.cli.output import fail, print_json
from ledger.units import format_tokens

if TYPE_CHECKING:
    from eth_account.signers.local import LocalAccount

F = TypeVar("F", bound=Callable[..., Any])

PASSWORD_ENV = "SLUICE_KEYSTORE_PASSWORD"


# --------------------------------------------------------------------------- failures


class Refused(Exception):
    """Something a command refuses, with what to do about it."""

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.hint = hint


@dataclass(frozen=True)
class Explanation:
    """A failure as the user reads it: what went wrong, what to do, and the log lines behind it."""

    message: str
    hint: str | None = None
    log_tail: str = ""


def explain(exc: Exception) -> Explanation | None:
    """The message and hint for a failure the commands know how to word; None for anything else."""
    if isinstance(exc, Refused):
        return Explanation(str(exc), exc.hint)
    if isinstance(exc, ValueError):  # bad input, pydantic's ValidationError included
        return Explanation(str(exc))
    # psycopg can only have raised it if something loaded psycopg (most commands never do).
    if "psycopg" in sys.modules:
        import psycopg

        if isinstance(exc, psycopg.OperationalError):
            return Explanation(f"the database does not answer: {str(exc).strip()}",
                               "start the stack with `sluice up --detach`, or point DATABASE_URL at PostgreSQL")
        if isinstance(exc, psycopg.errors.UndefinedColumn | psycopg.errors.UndefinedTable):
            return Explanation(f"the database schema is out of date: {str(exc).strip()}",
                               "start the redemption service (or `sluice up`) once: it applies the migrations")
    from ledger import errors
    from ledger.stack.errors import StackError

    match exc:
        case StackError():
            return Explanation(str(exc), exc.hint, exc.log_tail())
        case errors.NotAllowlisted():
            account = exc.args_by_name.get("account", "the account")
            return Explanation(f"{account} is not allowlisted: the compute token moves only between allowlisted "
                               "accounts", f"ask the operator to allowlist it: sluice admin allowlist add {account}")
        case errors.TransactionTimeout():
            return Explanation(str(exc), f"it may still be mined: look it up by its hash {exc.tx_hash} before trying "
                                         "again")
        case errors.LedgerError():
            return Explanation(str(exc), _ledger_hint(exc))
    return None


def _ledger_hint(exc: Exception) -> str | None:
    """What to do about a ledger error (None when there is nothing better than its message)."""
    from ledger import errors

    match exc:
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


def explained(fn: F) -> F:
    """Turn every failure `explain` knows into one message plus a hint on stderr, exit code 1."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except (typer.Exit, typer.Abort, TyperException):
            raise  # typer's own: exit codes and usage errors
        except Exception as exc:
            explanation = explain(exc)
            if explanation is None:
                raise
            fail(explanation.message, explanation.hint, log_tail=explanation.log_tail)

    return wrapper  # type: ignore[return-value]


# --------------------------------------------------------------------------- input


def checksum_address(value: str, what: str | None = None) -> str:
    """`value` as a checksummed address; a usage error (exit code 2) naming `what` when it is none."""
    from eth_utils.address import is_address, to_checksum_address

    if not is_address(value):
        named = f"{what} {value!r}" if what else repr(value)
        raise typer.BadParameter(f"{named} is not an Ethereum address (0x followed by 40 hex digits)")
    return str(to_checksum_address(value))


def has_terminal() -> bool:
    """Whether a person can answer a prompt: stdin is a terminal."""
    try:
        return sys.stdin is not None and sys.stdin.isatty()
    except ValueError:  # stdin closed
        return False


def _unanswered(what: str, hint: str) -> Refused:
    return Refused(f"{what}, and there is no terminal to ask at (stdin ended before an answer)", hint)


def ask_secret(prompt: str, *, instead: str, confirm: bool = False) -> str:
    """A hidden prompt on stderr at a terminal. Without one, the next line of stdin answers (twice when
    `confirm`); stdin that ends unanswered is refused with what to set `instead` (not click's `Aborted.`)."""
    if has_terminal():
        return str(typer.prompt(prompt, hide_input=True, confirmation_prompt=confirm, err=True))
    answers = [sys.stdin.readline() for _ in range(2 if confirm else 1)]
    if not all(answers):
        hint = f"pass {instead}" if instead.startswith("--") else f"set {instead}"
        raise _unanswered(f"{prompt[0].lower()}{prompt[1:]} is needed", hint)
    if confirm and answers[0] != answers[1]:
        raise Refused("the two answers do not match", f"give the same {prompt[0].lower()}{prompt[1:]} twice")
    return answers[0].rstrip("\r\n")


def ask_password(prompt: str, *, confirm: bool = False) -> str:
    """A keystore password: $SLUICE_KEYSTORE_PASSWORD, else a hidden prompt (refused without an answer)."""
    return keystore_password() or ask_secret(prompt, instead=f"{PASSWORD_ENV} to the keystore's password",
                                             confirm=confirm)


def agree(question: str, *, flag: str = "--yes") -> bool:
    """A yes/no question on stderr; when stdin ends unanswered and is no terminal, refuse naming `flag`."""
    try:
        return bool(typer.confirm(question, default=False, err=True))
    except typer.Abort:
        if has_terminal():
            raise
        raise _unanswered(f"{question!r} needs an answer", f"pass {flag} to go ahead without asking") from None


def keystore_password() -> str | None:
    """$SLUICE_KEYSTORE_PASSWORD from the settings (None when it is not set: ask at a prompt)."""
    from ledger.config import get_settings

    secret = get_settings().keystore_password
    return None if secret is None else secret.get_secret_value()


# --------------------------------------------------------------------------- the chain


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


def open_reader() -> Any:
    """The Ledger of the recorded deployment for views only, over `LightWeb3`: no web3 import (read commands)."""
    from ledger.chain.client import Ledger
    from ledger.chain.deployment import load_deployment
    from ledger.chain.light import light_connect
    from ledger.config import get_settings

    settings = get_settings()
    w3 = light_connect(settings.effective_rpc_url)
    deployment = load_deployment(settings.state_dir, int(w3.eth.chain_id))
    return Ledger(w3, deployment, timeout=settings.tx_timeout, confirmations=settings.confirmations)


def operator_key(keystore: Path | None) -> LocalAccount:
    """The operator's key: from `--keystore` (password from the settings or a prompt), else the settings."""
    from ledger.config import get_settings
    from ledger.keys import load_keystore, operator_account

    if keystore is None:
        return operator_account(get_settings())
    return load_keystore(keystore, ask_password(f"Password for {keystore}"))


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
