"""`sluice admin debts`: unpaid usage from settlement shortfalls, and clearing it.

A payer whose tokens (or allowance) no longer covered its metered usage when its batch
settled owes the rest and is suspended (new calls get 403 `suspended`). Once it has
topped up, `sluice admin debts clear PAYER` burns what it owes as a new settlement batch
and lifts the suspension. JSON output is in base units.
"""

from __future__ import annotations

from typing import Any

import typer

from ledger.cli.common import JsonOpt, checksum_address, explained
from ledger.cli.output import console, print_json

app = typer.Typer(
    help="Unpaid usage from settlement shortfalls and the accounts suspended for it.",
    invoke_without_command=True,
)


def _database() -> Any:
    from ledger.settlement.settings import get_settlement_settings
    from ledger.settlement.store import Database

    return Database(get_settlement_settings().effective_database_url)


@app.callback(invoke_without_command=True)
@explained
def debts(ctx: typer.Context, as_json: bool = JsonOpt) -> None:
    """List outstanding debts and suspended accounts (subcommand `clear PAYER` settles a payer's debts)."""
    if ctx.invoked_subcommand is not None:
        return
    from ledger.settlement.store import outstanding_debts, suspended_accounts
    from ledger.units import format_tokens

    conn = _database().conn()
    owed, suspended = outstanding_debts(conn), suspended_accounts(conn)
    if as_json:
        print_json({
            "debts": [{"payer": d.payer, "spender": d.spender, "batch_id": "0x" + d.batch_id.hex(), "owed": d.owed,
                       "paid": d.paid, "outstanding": d.outstanding, "since": d.created_at.isoformat(),
                       "clearing_batch": None if d.clearing_batch is None else "0x" + d.clearing_batch.hex()}
                      for d in owed],
            "suspended": [{"account": s.account, "reason": s.reason, "since": s.since.isoformat()} for s in suspended],
        })
        return
    if not owed:
        console.print("No outstanding debts.")
    for d in owed:
        console.print(f"{d.payer} owes {format_tokens(d.outstanding)} for {d.spender}'s usage "
                      f"(batch 0x{d.batch_id.hex()[:16]}…, paid {format_tokens(d.paid)} of "
                      f"{format_tokens(d.owed)}, since {d.created_at:%Y-%m-%d %H:%M:%S})", highlight=False)
    if not suspended:
        console.print("No suspended accounts.")
    for s in suspended:
        console.print(f"suspended {s.account}: {s.reason} (since {s.since:%Y-%m-%d %H:%M:%S})", highlight=False)


@app.command("clear")
@explained
def clear(
    payer: str,
    force: bool = typer.Option(False, "--force", help="settle even if the payer cannot cover everything "
                               "(it pays what it can; the rest stays owed and the account suspended)"),
    timeout: float = typer.Option(120.0, "--timeout", min=1.0, help="seconds to wait for the confirmation"),
    as_json: bool = JsonOpt,
) -> None:
    """Burn everything PAYER owes as a new settlement batch, then lift its suspension. Prints the tx hash."""
    from ledger.settlement.debts import clear_debts
    from ledger.settlement.settings import get_settlement_settings
    from ledger.settlement.settler import open_settler
    from ledger.units import format_tokens

    account = checksum_address(payer)
    settler = open_settler(get_settlement_settings(), _database())
    cleared = clear_debts(settler, account, force=force, timeout=timeout)
    if cleared is None:
        if as_json:
            print_json({"payer": account, "owed": 0})
        else:
            console.print(f"{account} owes nothing.", highlight=False)
        return
    if as_json:
        print_json({"payer": account, "batch_id": "0x" + cleared.batch_id.hex(), "tx_hash": cleared.tx_hash,
                    "block": cleared.block, "owed": cleared.owed, "paid": cleared.paid,
                    "suspended": cleared.still_suspended})
        return
    state = ("still suspended: it could not pay everything" if cleared.still_suspended
             else "suspension lifted")
    console.print(f"[green]debts settled[/] payer={account}, paid {format_tokens(cleared.paid)} of "
                  f"{format_tokens(cleared.owed)}; {state}\n  tx {cleared.tx_hash} (block {cleared.block})",
                  highlight=False)
