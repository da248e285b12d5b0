"""`sluice admin`: the operator's on-chain controls (allowlist, issuance, rates, pause, roles).

Amounts on the command line are whole compute tokens (decimals allowed); JSON
output is in base units. Every change prints its transaction hash.
"""

from __future__ import annotations

from pathlib import Path

import typer

from ledger.cli import debts, nodes
from ledger.cli.common import (
    JsonOpt,
    KeystoreOpt,
    checksum_address,
    explained,
    open_ledger,
    open_reader,
    operator_key,
    report_tx,
)
from ledger.cli.output import console, print_json

app = typer.Typer(help="Operator controls: allowlist, issuance, rates, pause and roles.", no_args_is_help=True)
allowlist_app = typer.Typer(help="Who may hold and move compute tokens.", no_args_is_help=True)
rates_app = typer.Typer(help="The on-chain rate card.", no_args_is_help=True)
roles_app = typer.Typer(help="Grant and revoke contract roles.", no_args_is_help=True)
app.add_typer(allowlist_app, name="allowlist")
app.add_typer(rates_app, name="rates")
app.add_typer(roles_app, name="roles")
app.add_typer(debts.app, name="debts")
app.add_typer(nodes.app, name="nodes")

ROLES = ("MINTER_ROLE", "REDEEMER_ROLE", "COMPLIANCE_ROLE", "PAUSER_ROLE", "AUDITOR_ROLE", "SETTLER_ROLE",
         "ISSUER_ROLE", "RATE_SETTER_ROLE", "DEFAULT_ADMIN_ROLE")


@allowlist_app.command("add")
@explained
def allowlist_add(address: str, keystore: Path | None = KeystoreOpt, as_json: bool = JsonOpt) -> None:
    """Allow ADDRESS to receive, hold and send compute tokens."""
    account = checksum_address(address)
    tx = open_ledger().set_allowlisted(operator_key(keystore), account, True)
    report_tx("allowlisted", tx.tx_hash, tx.block_number, as_json, account=account)


@allowlist_app.command("remove")
@explained
def allowlist_remove(address: str, keystore: Path | None = KeystoreOpt, as_json: bool = JsonOpt) -> None:
    """Remove ADDRESS from the allowlist (its balance is frozen; owed usage still settles)."""
    account = checksum_address(address)
    tx = open_ledger().set_allowlisted(operator_key(keystore), account, False)
    report_tx("delisted", tx.tx_hash, tx.block_number, as_json, account=account)


@app.command("issue")
@explained
def issue(
    address: str,
    amount: str = typer.Argument(..., help="compute tokens to issue, e.g. 1000 or 12.5"),
    ref: str = typer.Option(..., "--ref", help="invoice or bundle reference (at most 32 bytes)"),
    into_escrow: bool = typer.Option(False, "--into-escrow", help="credit the tokens straight to ADDRESS's escrow "
                                     "account on Settlement, where they pay for signed calls"),
    keystore: Path | None = KeystoreOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Issue AMOUNT compute tokens to ADDRESS (its wallet, or with --into-escrow its escrow) against an invoice
    or bundle reference."""
    from ledger.chain.client import ref_bytes32
    from ledger.units import parse_tokens

    account, units = checksum_address(address), parse_tokens(amount)
    if units == 0:
        raise ValueError("the amount must be more than zero")
    ledger = open_ledger()
    signer = operator_key(keystore)
    if into_escrow:
        tx = ledger._transact(signer, ledger.sale.functions.issueToEscrow(account, units, ref_bytes32(ref)))
    else:
        tx = ledger.issue(signer, account, units, ref)
    report_tx("issued", tx.tx_hash, tx.block_number, as_json, to=account, amount=units, ref=ref,
              into="escrow" if into_escrow else "wallet")


@app.command("unlock-period")
@explained
def unlock_period(
    seconds: int | None = typer.Argument(None, min=1, help="the new unlock period in seconds (omit to show it)"),
    keystore: Path | None = KeystoreOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Show or set how long escrow withdrawals and budget cuts wait before they take effect.

    The redemption service refuses to start unless its hold lifetime, receipt allowance, settlement bound
    and mirror lag allowance add up to less than this.
    """
    ledger = open_ledger()
    current = int(ledger.settlement.functions.unlockPeriod().call())
    if seconds is None:
        if as_json:
            print_json({"unlock_period": current})
        else:
            console.print(f"unlock period {current} s", highlight=False)
        return
    tx = ledger._transact(operator_key(keystore), ledger.settlement.functions.setUnlockPeriod(seconds))
    report_tx("unlock_period_set", tx.tx_hash, tx.block_number, as_json, unlock_period=seconds, previous=current)


@app.command("faucet")
@explained
def faucet(
    address: str,
    amount: str = typer.Argument(..., help="test stablecoin to mint, in its own units, e.g. 1000"),
    keystore: Path | None = KeystoreOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Mint AMOUNT of the embedded chain's test stablecoin to ADDRESS, so it can buy compute tokens.

    Refuses on any chain but the embedded one: a real payment token is never minted here.
    """
    from ledger.cli.common import Refused
    from ledger.cli.wallet import payment_token
    from ledger.config import get_settings

    account = checksum_address(address)
    settings = get_settings()
    ledger = open_ledger()
    if not settings.embedded_chain or settings.payment_token is not None:
        raise Refused("the faucet runs only on the embedded chain, whose payment token is the test stablecoin",
                      "on a production chain, buy the payment token the usual way")
    pay = payment_token(ledger)
    units = pay.parse(amount, "amount")
    if units == 0:
        raise Refused("the amount must be more than zero")
    tx = ledger.mint_payment(operator_key(keystore), account, units)
    if as_json:
        print_json({"action": "funded", "to": account, "amount": units, "payment_token": pay.to_json(),
                    "tx_hash": tx.tx_hash, "block": tx.block_number})
        return
    console.print(f"[green]funded[/] {account} with {pay.show(units)}\n  tx {tx.tx_hash} (block {tx.block_number})",
                  highlight=False)


@rates_app.command("set")
@explained
def rates_set(
    model: str,
    input_rate: str = typer.Argument(..., help="compute tokens per 1,000,000 prompt tokens"),
    output_rate: str = typer.Argument(..., help="compute tokens per 1,000,000 completion tokens"),
    tier: str = typer.Option("edge", "--tier", help="edge, regional or cloud"),
    keystore: Path | None = KeystoreOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Publish MODEL's price: INPUT_RATE and OUTPUT_RATE tokens per million model tokens."""
    from ledger.domain import Tier
    from ledger.units import parse_tokens

    tier_value = Tier.parse(tier)
    rin, rout = parse_tokens(input_rate), parse_tokens(output_rate)
    tx = open_ledger().set_rate(operator_key(keystore), model, rin, rout, tier_value)
    report_tx("rate set", tx.tx_hash, tx.block_number, as_json, model=model, input_rate=rin, output_rate=rout,
              tier=tier_value.label)


@rates_app.command("list")
@explained
def rates_list(as_json: bool = JsonOpt) -> None:
    """Show every listed model with its rates (tokens per million model tokens) and tier."""
    from ledger.units import format_tokens

    rates = open_reader().rates()
    if as_json:
        print_json([{"model": r.model, "input_rate": r.input_rate, "output_rate": r.output_rate,
                     "tier": r.tier.name.lower()} for r in rates])
        return
    for r in rates:
        console.print(f"{r.model:40} in {format_tokens(r.input_rate):>8}  out {format_tokens(r.output_rate):>8}"
                      f"  {r.tier.name.lower()}")


@app.command("pause")
@explained
def pause(keystore: Path | None = KeystoreOpt, as_json: bool = JsonOpt) -> None:
    """Stop every mint, transfer and burn of the compute token."""
    tx = open_ledger().pause(operator_key(keystore))
    report_tx("paused", tx.tx_hash, tx.block_number, as_json)


@app.command("unpause")
@explained
def unpause(keystore: Path | None = KeystoreOpt, as_json: bool = JsonOpt) -> None:
    """Resume mints, transfers and burns."""
    tx = open_ledger().unpause(operator_key(keystore))
    report_tx("unpaused", tx.tx_hash, tx.block_number, as_json)


def _role(role: str) -> str:
    name = role.upper()
    if not name.endswith("_ROLE") and name != "DEFAULT_ADMIN_ROLE":
        name += "_ROLE"
    if name not in ROLES:
        raise ValueError(f"unknown role {role!r}; roles: {', '.join(ROLES)}")
    return name


@roles_app.command("grant")
@explained
def roles_grant(role: str, address: str, keystore: Path | None = KeystoreOpt, as_json: bool = JsonOpt) -> None:
    """Grant ROLE (e.g. AUDITOR_ROLE or auditor) to ADDRESS on the contract that defines it (no transaction when
    ADDRESS holds it already)."""
    name, account = _role(role), checksum_address(address)
    ledger = open_ledger()
    if ledger.has_role(name, account):
        _report_unchanged(f"{account} already holds {name}; nothing sent", as_json, role=name, account=account)
        return
    tx = ledger.grant_role(operator_key(keystore), name, account)
    report_tx("role granted", tx.tx_hash, tx.block_number, as_json, role=name, account=account)


@roles_app.command("revoke")
@explained
def roles_revoke(role: str, address: str, keystore: Path | None = KeystoreOpt, as_json: bool = JsonOpt) -> None:
    """Revoke ROLE from ADDRESS (no transaction when ADDRESS does not hold it)."""
    name, account = _role(role), checksum_address(address)
    ledger = open_ledger()
    if not ledger.has_role(name, account):
        _report_unchanged(f"{account} does not hold {name}; nothing sent", as_json, role=name, account=account)
        return
    tx = ledger.revoke_role(operator_key(keystore), name, account)
    report_tx("role revoked", tx.tx_hash, tx.block_number, as_json, role=name, account=account)


def _report_unchanged(message: str, as_json: bool, **fields: str) -> None:
    if as_json:
        print_json({"action": "unchanged", "tx_hash": None, "block": None, **fields})
    else:
        console.print(message, highlight=False, soft_wrap=True)
