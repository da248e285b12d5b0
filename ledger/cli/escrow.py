"""`sluice wallet deposit | withdraw | budget`: an enterprise's escrow account on Settlement and the
budgets it gives developer keys there.

Escrow pays for signed calls. It leaves only after the chain's unlock period (`withdraw request`, then
`withdraw complete` once it has passed), and a budget cut takes effect only that long after it was
made (a raise at once), so calls the service already admitted are always paid. Every change prints its
transaction hash.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import typer

from ledger.cli.common import JsonOpt, Refused, checksum_address, explained
from ledger.cli.keystores import keystore_address, keystore_path, unlock
from ledger.cli.output import console, print_json
from ledger.units import format_tokens

if TYPE_CHECKING:
    from ledger.chain.client import Ledger

withdraw_app = typer.Typer(help="Take tokens out of escrow: request, wait the unlock period, complete.",
                           no_args_is_help=True)
budget_app = typer.Typer(help="Budgets of developer keys on the escrow: raise at once, cut after the unlock period.",
                         no_args_is_help=True)


@dataclass(frozen=True)
class Escrow:
    escrow: int
    pending: int
    unlocks_at: int
    unlock_period: int


@dataclass(frozen=True)
class BudgetFigures:
    remaining: int
    scheduled: int
    effective_at: int

    @property
    def effective(self) -> int:
        from ledger.domain import effective_budget

        return effective_budget(self.remaining, self.scheduled, self.effective_at)


def escrow_of(ledger: Ledger, account: str) -> Escrow:
    settlement = ledger.settlement.functions
    pending, unlocks_at = settlement.pendingWithdrawalOf(account).call()
    return Escrow(int(settlement.escrowOf(account).call()), int(pending), int(unlocks_at),
                  int(settlement.unlockPeriod().call()))


def budget_of(ledger: Ledger, payer: str, spender: str) -> BudgetFigures:
    remaining, scheduled, effective_at = ledger.settlement.functions.budgetOf(payer, spender).call()
    return BudgetFigures(int(remaining), int(scheduled), int(effective_at))


def when(unix: int) -> str:
    return datetime.fromtimestamp(unix, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def chain_now(ledger: Ledger) -> int:
    return int(ledger.w3.eth.get_block("latest")["timestamp"])


def budget_spenders(ledger: Ledger, payer: str) -> list[str]:
    """Every spender `payer` ever gave a budget, from Settlement's BudgetSet logs since the deployment."""
    from ledger.chain.light import LightRpcError
    from ledger.protocol.address import to_checksum_address
    from ledger.protocol.keccak import keccak256

    web3_errors = sys.modules.get("web3.exceptions")  # loaded only when `ledger` speaks through web3
    refused = (LightRpcError, *((web3_errors.Web3RPCError,) if web3_errors is not None else ()))
    topics = ["0x" + keccak256(b"BudgetSet(address,address,uint256,uint64)").hex(),
              "0x" + "00" * 12 + payer[2:].lower()]
    found: dict[str, None] = {}

    def scan(start: int, end: int) -> None:
        try:
            logs = ledger.w3.eth.get_logs({"fromBlock": start, "toBlock": end, "address": ledger.settlement.address,
                                           "topics": topics})
        except refused:
            if start == end:
                raise
            middle = (start + end) // 2  # the node refused the range: halve it
            scan(start, middle)
            scan(middle + 1, end)
            return
        for entry in logs:
            found[str(to_checksum_address(bytes(entry["topics"][2])[-20:]))] = None

    scan(ledger.deployment.deploy_block, ledger.w3.eth.block_number)
    return list(found)


def _tx_line(tx_hash: str, block: int) -> str:
    return f"  tx {tx_hash} (block {block})"


# -- deposit ---------------------------------------------------------------------------------
def deposit(
    amount: str = typer.Argument(..., help="compute tokens to move from the wallet into its escrow, e.g. 100"),
    no_permit: bool = typer.Option(False, "--no-permit", help="approve Settlement in a separate transaction "
                                   "instead of signing an EIP-2612 permit"),
    keystore: str | None = typer.Option(None, "--keystore", help="wallet keystore file or address"),
    as_json: bool = JsonOpt,
) -> None:
    """Move AMOUNT compute tokens from the wallet into its escrow account, which pays for signed calls."""
    from ledger.cli.wallet import PERMIT_TTL, _ledger, _require_allowlisted, _tokens, send

    units = _tokens(amount)
    if units == 0:
        raise Refused("the amount must be more than zero")
    path = keystore_path(keystore)
    owner = keystore_address(path)
    ledger = _ledger()
    held = ledger.balance_of(owner)
    if held < units:
        raise Refused(f"{owner} holds {format_tokens(held)} compute tokens in its wallet; depositing "
                      f"{format_tokens(units)} is {format_tokens(units - held)} short",
                      "buy straight into escrow with `sluice wallet buy AMOUNT`, or deposit less")
    _require_allowlisted(ledger, owner, "the wallet")
    signer = unlock(str(path))
    settlement = ledger.settlement
    if no_permit:
        approve = send(ledger, signer, ledger.token.functions.approve(settlement.address, units),
                       "approving Settlement")
        result = send(ledger, signer, settlement.functions.deposit(units), "depositing")
        hashes = [approve.tx_hash, result.tx_hash]
    else:
        deadline = chain_now(ledger) + PERMIT_TTL
        v, r, s = ledger.sign_permit(ledger.token, signer, settlement.address, units, deadline)
        result = send(ledger, signer, settlement.functions.depositWithPermit(units, deadline, v, r, s),
                      "depositing with a permit")
        hashes = [result.tx_hash]
    now = escrow_of(ledger, owner)
    if as_json:
        print_json({"action": "deposited", "account": owner, "amount": units, "escrow": now.escrow,
                    "tx_hash": result.tx_hash, "tx_hashes": hashes, "block": result.block_number})
        return
    console.print(f"[green]deposited[/] {format_tokens(units)} compute tokens into the escrow of {owner}; "
                  f"escrow now {format_tokens(now.escrow)}\n" + _tx_line(result.tx_hash, result.block_number),
                  soft_wrap=True, highlight=False)


# -- withdraw --------------------------------------------------------------------------------
@withdraw_app.command("request")
@explained
def withdraw_request(
    amount: str = typer.Argument(..., help="compute tokens to take out of escrow once the unlock period passed"),
    keystore: str | None = typer.Option(None, "--keystore", help="wallet keystore file or address"),
    as_json: bool = JsonOpt,
) -> None:
    """Ask to take AMOUNT out of escrow; it can leave after the unlock period (replaces an earlier request).

    Until it leaves it still pays for usage the service already admitted, so new calls count it as gone at once.
    """
    from ledger.cli.wallet import _ledger, _tokens, send

    units = _tokens(amount)
    if units == 0:
        raise Refused("the amount must be more than zero")
    path = keystore_path(keystore)
    owner = keystore_address(path)
    ledger = _ledger()
    before = escrow_of(ledger, owner)
    if units > before.escrow:
        raise Refused(f"the escrow of {owner} holds {format_tokens(before.escrow)} compute tokens; a withdrawal "
                      f"of {format_tokens(units)} is {format_tokens(units - before.escrow)} more",
                      "request at most what the escrow holds (`sluice wallet withdraw status`)")
    result = send(ledger, unlock(str(path)), ledger.settlement.functions.requestWithdrawal(units),
                  "requesting a withdrawal")
    now = escrow_of(ledger, owner)
    if as_json:
        print_json({"action": "withdrawal_requested", "account": owner, "amount": now.pending,
                    "unlocks_at": now.unlocks_at, "tx_hash": result.tx_hash, "block": result.block_number})
        return
    console.print(f"[green]requested[/] a withdrawal of {format_tokens(now.pending)} compute tokens from the escrow "
                  f"of {owner}; it unlocks at {when(now.unlocks_at)} (unlock period {now.unlock_period} s), then "
                  f"run `sluice wallet withdraw complete`\n" + _tx_line(result.tx_hash, result.block_number),
                  soft_wrap=True, highlight=False)


@withdraw_app.command("complete")
@explained
def withdraw_complete(
    keystore: str | None = typer.Option(None, "--keystore", help="wallet keystore file or address"),
    as_json: bool = JsonOpt,
) -> None:
    """Move the requested withdrawal back to the wallet, once its unlock time has passed."""
    from ledger.cli.wallet import _ledger, send

    path = keystore_path(keystore)
    owner = keystore_address(path)
    ledger = _ledger()
    before = escrow_of(ledger, owner)
    if before.pending == 0:
        raise Refused(f"{owner} has no withdrawal pending", "request one: sluice wallet withdraw request AMOUNT")
    now = chain_now(ledger)
    if now < before.unlocks_at:
        raise Refused(f"the withdrawal of {format_tokens(before.pending)} unlocks at {when(before.unlocks_at)}, "
                      f"{before.unlocks_at - now} s from now", "run this again after that")
    result = send(ledger, unlock(str(path)), ledger.settlement.functions.withdraw(), "withdrawing")
    after = escrow_of(ledger, owner)
    withdrawn = before.escrow - after.escrow
    if as_json:
        print_json({"action": "withdrawn", "account": owner, "amount": withdrawn, "escrow": after.escrow,
                    "wallet": ledger.balance_of(owner), "tx_hash": result.tx_hash, "block": result.block_number})
        return
    console.print(f"[green]withdrew[/] {format_tokens(withdrawn)} compute tokens to the wallet of {owner}; escrow now "
                  f"{format_tokens(after.escrow)}\n" + _tx_line(result.tx_hash, result.block_number),
                  soft_wrap=True, highlight=False)


@withdraw_app.command("status")
@explained
def withdraw_status(
    account: str | None = typer.Argument(None, help="address to look at (default: the wallet's)"),
    keystore: str | None = typer.Option(None, "--keystore", help="wallet keystore file or address"),
    as_json: bool = JsonOpt,
) -> None:
    """The escrow, the pending withdrawal and when it unlocks."""
    from ledger.cli.wallet import _ledger, _owner

    owner = _owner(account, keystore)
    ledger = _ledger()
    figures = escrow_of(ledger, owner)
    now = chain_now(ledger)
    if as_json:
        print_json({"account": owner, "escrow": figures.escrow, "pending_withdrawal": figures.pending,
                    "unlocks_at": figures.unlocks_at or None, "unlocked": bool(figures.pending)
                    and now >= figures.unlocks_at, "unlock_period": figures.unlock_period})
        return
    console.print(f"escrow of {owner}  {format_tokens(figures.escrow)}", highlight=False)
    if figures.pending == 0:
        console.print("  no withdrawal pending", highlight=False)
    elif now >= figures.unlocks_at:
        console.print(f"  withdrawal of {format_tokens(figures.pending)} unlocked since {when(figures.unlocks_at)}: "
                      "run `sluice wallet withdraw complete`", soft_wrap=True, highlight=False)
    else:
        console.print(f"  withdrawal of {format_tokens(figures.pending)} unlocks at {when(figures.unlocks_at)} "
                      f"({figures.unlocks_at - now} s from now)", soft_wrap=True, highlight=False)


# -- budgets ---------------------------------------------------------------------------------
def _set_budget(spender_arg: str, amount: str, keystore: str | None, as_json: bool, *, cut_only: bool) -> None:
    from ledger.cli.wallet import _ledger, _tokens, send

    spender = checksum_address(spender_arg, "spender")
    units = _tokens(amount, "budget")
    path = keystore_path(keystore)
    payer = keystore_address(path)
    if spender == payer:
        raise Refused("the spender is the wallet itself: it spends its own escrow without a budget",
                      "give a separate key to each developer")
    ledger = _ledger()
    before = budget_of(ledger, payer, spender)
    if cut_only and units >= before.effective:
        raise Refused(f"{spender}'s budget is {format_tokens(before.effective)}; a cut must be lower than that",
                      "raise a budget with `sluice wallet budget set SPENDER AMOUNT`")
    result = send(ledger, unlock(str(path)), ledger.settlement.functions.setBudget(spender, units),
                  "setting the budget")
    after = budget_of(ledger, payer, spender)
    pending = after.effective_at > 0 and after.effective_at > chain_now(ledger)
    if as_json:
        print_json({"action": "budget_cut" if pending else "budget_set", "payer": payer, "spender": spender,
                    "amount": units, "remaining": after.remaining, "scheduled": after.scheduled,
                    "effective_at": after.effective_at or None, "tx_hash": result.tx_hash,
                    "block": result.block_number})
        return
    if pending:
        console.print(f"[green]cut[/] {spender}'s budget from {payer} to {format_tokens(units)} compute tokens; "
                      "new calls "
                      f"count the cut at once, and on chain it takes effect at {when(after.effective_at)}\n"
                      + _tx_line(result.tx_hash, result.block_number), soft_wrap=True, highlight=False)
    else:
        console.print(f"[green]set[/] {spender}'s budget from {payer} to {format_tokens(after.remaining)} "
                      "compute tokens "
                      "(effective at once)\n" + _tx_line(result.tx_hash, result.block_number),
                      soft_wrap=True, highlight=False)
    if not ledger.is_allowlisted(payer):
        console.print(f"  note: {payer} is not allowlisted yet, so its developers' calls are refused until the "
                      f"operator runs `sluice admin allowlist add {payer}`", soft_wrap=True, highlight=False)


@budget_app.command("set")
@explained
def budget_set(
    spender: str = typer.Argument(..., help="the developer key's address"),
    amount: str = typer.Argument(..., help="compute tokens it may spend from the escrow"),
    keystore: str | None = typer.Option(None, "--keystore", help="wallet keystore file or address"),
    as_json: bool = JsonOpt,
) -> None:
    """Let SPENDER spend AMOUNT of the escrow: a raise takes effect at once, a lower amount is a cut."""
    _set_budget(spender, amount, keystore, as_json, cut_only=False)


@budget_app.command("cut")
@explained
def budget_cut(
    spender: str = typer.Argument(..., help="the developer key's address"),
    amount: str = typer.Argument(..., help="the lower budget (0 takes it away)"),
    keystore: str | None = typer.Option(None, "--keystore", help="wallet keystore file or address"),
    as_json: bool = JsonOpt,
) -> None:
    """Lower SPENDER's budget to AMOUNT: new calls are held to it at once, the chain applies it after the
    unlock period, so calls already admitted are still paid."""
    _set_budget(spender, amount, keystore, as_json, cut_only=True)


@budget_app.command("list")
@explained
def budget_list(
    account: str | None = typer.Argument(None, help="payer address (default: the wallet's)"),
    keystore: str | None = typer.Option(None, "--keystore", help="wallet keystore file or address"),
    as_json: bool = JsonOpt,
) -> None:
    """Every developer key the escrow gave a budget: what remains, and any cut pending."""
    from ledger.cli.wallet import _owner, _reader

    payer = _owner(account, keystore)
    ledger = _reader()
    rows = [(s, budget_of(ledger, payer, s)) for s in budget_spenders(ledger, payer)]
    if as_json:
        print_json({"payer": payer, "budgets": [
            {"spender": s, "remaining": b.remaining, "effective": b.effective,
             "scheduled": b.scheduled if b.effective_at else None, "effective_at": b.effective_at or None}
            for s, b in rows]})
        return
    if not rows:
        console.print(f"{payer} gave no developer budgets", highlight=False)
        return
    console.print(f"budgets from the escrow of {payer}:", highlight=False)
    for spender, b in rows:
        line = f"  {spender}  {format_tokens(b.remaining)}"
        if b.effective_at:
            line += f"  (cut to {format_tokens(b.scheduled)} at {when(b.effective_at)})"
        console.print(line, soft_wrap=True, highlight=False)


def register(app: typer.Typer) -> None:
    app.command("deposit")(explained(deposit))
    app.add_typer(withdraw_app, name="withdraw")
    app.add_typer(budget_app, name="budget")


