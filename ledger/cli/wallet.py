"""`sluice wallet`: an enterprise's wallet for compute tokens.

Keys live in encrypted JSON keystores (eth-account, scrypt) under `<state dir>/wallets/<address>.json`;
passwords come from a hidden prompt or $SLUICE_KEYSTORE_PASSWORD, never from an argument, and a
keystore is never overwritten. Commands that sign take `--keystore PATH|ADDRESS` and default to the
only wallet under the state dir. Amounts on the command line are whole tokens, decimals allowed:
compute tokens have 18 decimals, the payment token its own (6 for the embedded test dollar).
`--json` prints amounts in base units as integers. Progress goes to stderr, so stdout stays JSON.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import typer

from ledger.cli.common import (
    PASSWORD_ENV,
    JsonOpt,
    Refused,
    agree,
    ask_secret,
    checksum_address,
    explained,
    open_ledger,
    open_reader,
)
from ledger.cli.keystores import (
    keystore_address,
    keystore_path,
    known_wallets,
    new_password,
    read_keystore,
    refuse_existing,
    save_new,
    unlock,
    unlock_key,
    wallets_dir,
    write_keystore,
)
from ledger.cli.output import Column, console, err_console, print_fitted, print_json
from ledger.units import DECIMALS, format_amount, format_tokens

if TYPE_CHECKING:
    from eth_account.signers.local import LocalAccount
    from rich.status import Status
    from web3.contract import Contract
    from web3.contract.contract import ContractFunction

    from ledger.chain.client import Ledger
    from ledger.chain.sender import TxResult

app = typer.Typer(help="An enterprise's wallet: keystores, balances, buying compute tokens into escrow, "
                  "withdrawals, developer budgets.", no_args_is_help=True)

PERMIT_TTL = 3600  # seconds a purchase permit stays valid

WalletOpt = typer.Option(
    None, "--keystore",
    help=f"wallet keystore file, or the address of a wallet under the state dir (default: the only one there); "
         f"password from ${PASSWORD_ENV} or a prompt",
)
OutOpt = typer.Option(None, "--out", help="where to write the keystore (default: <state dir>/wallets/<address>.json)")
SourceArg = typer.Argument(None, help="an existing JSON keystore to copy in (default: read a private key)")
ConfirmationsOpt = typer.Option(
    None, "--confirmations", min=0, help="blocks to wait for after the transaction is mined (default: the settings')"
)


def _report_wallet(action: str, address: str, path: Path, as_json: bool) -> None:
    if as_json:
        print_json({"action": action, "address": address, "keystore": str(path)})
        return
    console.print(f"[green]{action}[/] wallet {address}\n  keystore {path}", soft_wrap=True, highlight=False)
    console.print(f"  next: the operator allowlists it with `sluice admin allowlist add {address}`",
                  soft_wrap=True, highlight=False)


@app.command("new")
@explained
def new(
    out: Path | None = OutOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Create a wallet: a new key in an encrypted JSON keystore (password from a prompt or the env)."""
    from eth_account import Account

    refuse_existing(out)
    password = new_password()
    account: LocalAccount = Account.create()
    path = save_new(account, password, out)
    _report_wallet("created", account.address, path, as_json)


@app.command("import")
@explained
def import_(
    source: Path | None = SourceArg,
    from_stdin: bool = typer.Option(False, "--stdin", help="read the private key from the first line of stdin"),
    out: Path | None = OutOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Bring in a key: an existing keystore file, or a private key typed at a hidden prompt (or --stdin)."""
    from eth_account import Account

    refuse_existing(out)
    if source is not None:
        if not source.is_file():
            raise Refused(f"keystore {source} does not exist")
        data = read_keystore(source)
        account: LocalAccount = unlock(str(source))  # proves the password before the copy is kept
        recorded = data.get("address")
        if isinstance(recorded, str) and checksum_address("0x" + recorded.removeprefix("0x"),
                                                          "address") != account.address:
            raise Refused(f"{source} records address 0x{recorded.removeprefix('0x')} but holds the key of "
                          f"{account.address}; refusing a keystore that lies about its address")
        path = out.expanduser() if out is not None else wallets_dir() / f"{account.address}.json"
        if path.resolve() == source.resolve():
            raise Refused(f"{source} is already this wallet's keystore")
        write_keystore(path, data)
        _report_wallet("imported", account.address, path, as_json)
        return
    if from_stdin:
        raw = typer.get_text_stream("stdin").readline().strip()
    else:
        raw = ask_secret("Private key (hex)", instead="--stdin and pipe the key in (it reads the first line)").strip()
    digits = raw.removeprefix("0x")
    if len(digits) != 64 or any(c not in "0123456789abcdefABCDEF" for c in digits):
        raise Refused("that is not a private key: expected 64 hex digits, optionally after 0x")
    try:
        account = Account.from_key(bytes.fromhex(digits))
    except (ValueError, TypeError):  # zero or not below the curve order
        raise Refused("that is not a valid secp256k1 private key") from None
    path = save_new(account, new_password(), out)
    _report_wallet("imported", account.address, path, as_json)


@app.command("list")
@explained
def list_wallets(as_json: bool = JsonOpt) -> None:
    """List the wallets kept under the state dir."""
    rows = [{"address": keystore_address(p), "keystore": str(p)} for p in known_wallets()]
    if as_json:
        print_json({"wallets": rows})
        return
    if not rows:
        console.print(f"No wallets under {wallets_dir()}; create one with `sluice wallet new`.", soft_wrap=True)
    for row in rows:
        console.print(f"{row['address']}  {row['keystore']}", soft_wrap=True, highlight=False)


@app.command("address")
@explained
def address(keystore: str | None = WalletOpt, as_json: bool = JsonOpt) -> None:
    """Print the wallet's address (no password needed)."""
    path = keystore_path(keystore)
    account = keystore_address(path)
    if as_json:
        print_json({"address": account, "keystore": str(path)})
    else:
        console.print(account, highlight=False)


def _owner(account: str | None, keystore: str | None) -> str:
    return checksum_address(account, "address") if account is not None else keystore_address(keystore_path(keystore))


# -- chain helpers ---------------------------------------------------------------------------
@dataclass(frozen=True)
class PaymentToken:
    address: str
    symbol: str
    decimals: int

    def show(self, units: int) -> str:
        return f"{format_amount(units, self.decimals)} {self.symbol}"

    def parse(self, text: str, what: str) -> int:
        return _parse(text, self.decimals, what, self.symbol)

    def to_json(self) -> dict[str, Any]:
        return {"address": self.address, "symbol": self.symbol, "decimals": self.decimals}


def _parse(text: str, decimals: int, what: str, unit: str) -> int:
    from ledger.units import parse_amount

    try:
        return parse_amount(text, decimals)
    except ValueError as exc:
        raise Refused(f"{what}: {exc}", f"{unit} amounts have at most {decimals} decimal places "
                      "(examples: 100, 12.5)") from None


def _tokens(text: str, what: str = "amount") -> int:
    return _parse(text, DECIMALS, what, "compute-token")


def call_failed(exc: Exception) -> bool:
    """Whether a view call failed because the contract refused it or lacks the function (web3 or LightWeb3)."""
    from ledger.errors import ContractRevert

    web3_errors = sys.modules.get("web3.exceptions")  # not loaded: the call went through LightWeb3
    return isinstance(exc, ContractRevert) or (web3_errors is not None and isinstance(exc, web3_errors.Web3Exception))


def payment_token(ledger: Ledger) -> PaymentToken:
    token = ledger.payment_token
    try:
        symbol = str(token.functions.symbol().call())
    except Exception as exc:  # a payment token without the optional ERC-20 metadata
        if not call_failed(exc):
            raise
        symbol = "payment units"
    return PaymentToken(token.address, symbol, int(token.functions.decimals().call()))


def supports_permit(token: Contract, owner: str) -> bool:
    """Whether `token` takes EIP-2612 permits signed under an EIP-5267 domain (`nonces` and `eip712Domain`)."""
    from web3.exceptions import Web3Exception

    try:
        token.functions.nonces(owner).call()
        token.functions.eip712Domain().call()
    except Web3Exception:  # reverted or returned nothing: the function is not there
        return False
    return True


def _reader() -> Ledger:
    """The deployment's views without web3 (read commands)."""
    return cast("Ledger", open_reader())


def _ledger(confirmations: int | None = None) -> Ledger:
    ledger = cast("Ledger", open_ledger())
    if confirmations is not None:
        ledger.confirmations = confirmations
    return ledger


def send(ledger: Ledger, account: LocalAccount, fn: ContractFunction, what: str) -> TxResult:
    """Sign and send one call, showing it being mined and confirmed block by block (on stderr)."""
    sender = ledger.sender(account)
    tx: Any = {"to": fn.address, "data": fn._encode_transaction_data()}
    with err_console.status(f"{what}: sending …") as status:
        tx_hash, nonce = sender.send(tx)
        _watch(ledger, tx_hash, status, what)
        return sender.wait(tx_hash, nonce, tx)


def _watch(ledger: Ledger, tx_hash: str, status: Status, what: str) -> None:
    """Poll until `tx_hash` is mined and has `ledger.confirmations` blocks on top, updating the spinner."""
    from hexbytes import HexBytes
    from web3.exceptions import TransactionNotFound

    from ledger.errors import TransactionTimeout

    deadline = time.monotonic() + ledger.timeout
    delay = 0.005
    short = tx_hash[:10] + "…"
    while True:
        try:
            receipt = ledger.w3.eth.get_transaction_receipt(HexBytes(tx_hash))
        except TransactionNotFound:
            receipt = None
        if receipt is None:
            status.update(f"{what}: waiting for {short} to be mined")
        else:
            mined = int(receipt["blockNumber"])
            seen = ledger.w3.eth.block_number - mined
            if seen >= ledger.confirmations:
                return
            status.update(f"{what}: mined in block {mined}, confirmations {seen}/{ledger.confirmations}")
        if time.monotonic() > deadline:
            state = "not mined" if receipt is None else f"not confirmed by {ledger.confirmations} blocks"
            raise TransactionTimeout(f"{what}: transaction {tx_hash} {state} after {ledger.timeout:.0f} s", tx_hash)
        time.sleep(delay)
        delay = min(delay * 2, 0.5)


def _require_allowlisted(ledger: Ledger, account: str, role: str) -> None:
    if not ledger.is_allowlisted(account):
        raise Refused(f"{role} {account} is not allowlisted: the compute token moves only between "
                      "allowlisted accounts",
                      f"ask the operator to allowlist it: sluice admin allowlist add {account}")


def _tier_table(tiers: list[tuple[int, int]], applied: int | None, pay: PaymentToken) -> Any:
    from rich.table import Table

    table = Table("", "tier", "from (tokens)", f"price per token ({pay.symbol})", box=None, pad_edge=False)
    for i, (minimum, price) in enumerate(tiers):
        table.add_row("→" if i == applied else "", str(i), format_tokens(minimum), format_amount(price, pay.decimals))
    return table


# -- reads -----------------------------------------------------------------------------------
@app.command("balance")
@explained
def balance(
    account: str | None = typer.Argument(None, help="address to look at (default: the wallet's)"),
    keystore: str | None = WalletOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Compute tokens in the wallet and in escrow, the pending withdrawal and its unlock time, payment tokens,
    and the budgets given to developer keys."""
    from ledger.cli.escrow import budget_of, budget_spenders, escrow_of, when

    owner = _owner(account, keystore)
    ledger = _reader()
    pay = payment_token(ledger)
    tokens = ledger.balance_of(owner)
    escrow = escrow_of(ledger, owner)
    payment = ledger.payment_balance(owner)
    allowlisted = ledger.is_allowlisted(owner)
    budgets = [(s, b) for s in budget_spenders(ledger, owner) if (b := budget_of(ledger, owner, s)).remaining > 0]
    if as_json:
        print_json({"address": owner, "allowlisted": allowlisted, "compute_tokens": tokens, "escrow": escrow.escrow,
                    "pending_withdrawal": escrow.pending, "unlocks_at": escrow.unlocks_at or None,
                    "unlock_period": escrow.unlock_period,
                    "payment_token": {**pay.to_json(), "balance": payment},
                    "budgets": [{"developer": s, "remaining": b.remaining, "effective": b.effective,
                                 "effective_at": b.effective_at or None} for s, b in budgets]})
        return
    console.print(f"wallet {owner}" + ("" if allowlisted else "  [yellow](not allowlisted)[/]"), highlight=False)
    console.print(f"  compute tokens      {format_tokens(tokens)}", highlight=False)
    console.print(f"  escrow              {format_tokens(escrow.escrow)}", highlight=False)
    if escrow.pending:
        console.print(f"  pending withdrawal  {format_tokens(escrow.pending)} (unlocks {when(escrow.unlocks_at)})",
                      highlight=False)
    else:
        console.print("  pending withdrawal  none", highlight=False)
    console.print(f"  {pay.symbol:<18}  {format_amount(payment, pay.decimals)}", highlight=False)
    if budgets:
        console.print("  developer budgets:")
        for spender, b in budgets:
            cut = f"  (cut to {format_tokens(b.scheduled)} at {when(b.effective_at)})" if b.effective_at else ""
            console.print(f"    {spender}  {format_tokens(b.remaining)}{cut}", highlight=False)
    else:
        console.print("  no developer budgets")
    if not allowlisted:
        console.print(f"  the operator allowlists it with `sluice admin allowlist add {owner}`",
                      soft_wrap=True, highlight=False)


@app.command("quote")
@explained
def quote(
    amount: str = typer.Argument(..., help="compute tokens to buy, e.g. 1000 or 12.5"),
    as_json: bool = JsonOpt,
) -> None:
    """What buying AMOUNT compute tokens costs in the payment token, and the sale's volume tiers."""
    units = _tokens(amount)
    if units == 0:
        raise Refused("the amount must be more than zero")
    ledger = _reader()
    pay = payment_token(ledger)
    cost, tier = ledger.quote_purchase(units)
    tiers = ledger.sale_tiers()
    if as_json:
        print_json({"amount": units, "cost": cost, "tier": tier, "payment_token": pay.to_json(),
                    "tiers": [{"tier": i, "min_amount": m, "price": p, "applies": i == tier}
                              for i, (m, p) in enumerate(tiers)]})
        return
    console.print(f"{format_tokens(units)} compute tokens cost {pay.show(cost)} "
                  f"(tier {tier}: {pay.show(tiers[tier][1])} per token)", highlight=False)
    console.print(_tier_table(tiers, tier, pay))


# -- writes ----------------------------------------------------------------------------------
@app.command("buy")
@explained
def buy(
    amount: str = typer.Argument(..., help="compute tokens to buy, e.g. 1000 or 12.5"),
    max_cost: str | None = typer.Option(None, "--max-cost", help="pay at most this much of the payment token "
                                        "(default: exactly the quote); the purchase fails if the price rises"),
    yes: bool = typer.Option(False, "--yes", "-y", help="do not ask for confirmation"),
    no_permit: bool = typer.Option(False, "--no-permit", help="approve the sale in a separate transaction even "
                                   "if the payment token takes EIP-2612 permits"),
    to_wallet: bool = typer.Option(False, "--to-wallet", help="put the tokens in the wallet instead of its escrow "
                                   "(they pay for calls only once deposited: `sluice wallet deposit`)"),
    keystore: str | None = WalletOpt,
    confirmations: int | None = ConfirmationsOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Buy AMOUNT compute tokens with the payment token, at the sale's volume-tier price, straight into the
    wallet's escrow account (where they pay for signed calls); --to-wallet puts them in the wallet instead.

    Pays with an EIP-2612 permit (one transaction) when the payment token supports it, else with
    approve + buy. Shows the quote and asks before buying unless --yes.
    """
    from web3.logs import DISCARD

    from ledger.errors import CostAboveMax, PaymentShort

    units = _tokens(amount)
    if units == 0:
        raise Refused("the amount must be more than zero")
    path = keystore_path(keystore)
    buyer = keystore_address(path)
    ledger = _ledger(confirmations)
    pay = payment_token(ledger)
    cost, tier = ledger.quote_purchase(units)
    limit = cost if max_cost is None else pay.parse(max_cost, "--max-cost")
    if cost > limit:
        raise Refused(f"the sale quotes {pay.show(cost)} for {format_tokens(units)} compute tokens, above "
                      f"--max-cost {pay.show(limit)}; nothing was bought",
                      "raise --max-cost, or buy less (`sluice wallet quote AMOUNT` shows the tiers)")
    _require_allowlisted(ledger, buyer, "the wallet")
    held = ledger.payment_balance(buyer)
    if held < cost:
        raise Refused(f"{buyer} holds {pay.show(held)}; {format_tokens(units)} compute tokens cost "
                      f"{pay.show(cost)}: {pay.show(cost - held)} short",
                      f"fund the wallet with at least {pay.show(cost - held)} more, or buy less")
    method = "approve" if no_permit or not supports_permit(ledger.payment_token, buyer) else "permit"
    price = ledger.sale_tiers()[tier][1]
    err_console.print(f"Buy {format_tokens(units)} compute tokens for {pay.show(cost)} (tier {tier}: "
                      f"{pay.show(price)} per token; limit {pay.show(limit)}), paid "
                      + ("with an EIP-2612 permit (one transaction)" if method == "permit"
                         else "with approve + buy (two transactions)"), highlight=False, soft_wrap=True)
    if not yes and not agree("Buy?"):
        err_console.print("Cancelled; nothing was bought.")
        raise typer.Exit(1)
    signer = unlock(str(path))
    approve_tx: TxResult | None = None
    try:
        if method == "permit":
            deadline = int(ledger.w3.eth.get_block("latest")["timestamp"]) + PERMIT_TTL
            v, r, s = ledger.sign_permit(ledger.payment_token, signer, ledger.sale.address, limit, deadline)
            buy_with_permit = ledger.sale.functions.buyWithPermit if to_wallet else \
                ledger.sale.functions.buyToEscrowWithPermit
            result = send(ledger, signer, buy_with_permit(units, limit, deadline, v, r, s), "buying with a permit")
        else:
            if int(ledger.payment_token.functions.allowance(buyer, ledger.sale.address).call()) < limit:
                approve_tx = send(ledger, signer, ledger.payment_token.functions.approve(ledger.sale.address, limit),
                                  f"approving the sale to take {pay.show(limit)}")
            buy_fn = ledger.sale.functions.buy if to_wallet else ledger.sale.functions.buyToEscrow
            result = send(ledger, signer, buy_fn(units, limit), "buying")
    except PaymentShort as exc:
        required, available = int(exc.args_by_name["required"]), int(exc.args_by_name["available"])
        raise Refused(f"the sale needs {pay.show(required)} but can take only {pay.show(available)}: "
                      f"{pay.show(required - available)} short; nothing was bought",
                      f"fund the wallet with at least {pay.show(required - available)} more") from None
    except CostAboveMax as exc:
        raise Refused(f"the price rose to {pay.show(int(exc.args_by_name['cost']))}, above the limit "
                      f"{pay.show(limit)}; nothing was bought",
                      "check `sluice wallet quote AMOUNT`, then retry with a higher --max-cost") from None
    bought = ledger.sale.events.Purchased().process_receipt(result.receipt, errors=DISCARD)[0]["args"]
    now_held = ledger.balance_of(buyer)
    now_escrow = int(ledger.settlement.functions.escrowOf(buyer).call())
    if as_json:
        print_json({"action": "bought", "buyer": buyer, "into": "wallet" if to_wallet else "escrow",
                    "escrow": now_escrow, "amount": int(bought["amount"]), "cost": int(bought["cost"]),
                    "tier": int(bought["tier"]), "max_cost": limit, "method": method, "tx_hash": result.tx_hash,
                    "block": result.block_number, "approve_tx_hash": None if approve_tx is None else approve_tx.tx_hash,
                    "balance": now_held})
        return
    if approve_tx is not None:
        console.print(f"  approve tx {approve_tx.tx_hash} (block {approve_tx.block_number})", soft_wrap=True,
                      highlight=False)
    console.print(f"[green]bought[/] {format_tokens(int(bought['amount']))} compute tokens for "
                  f"{pay.show(int(bought['cost']))} (tier {int(bought['tier'])}, {method}) into the "
                  + (f"wallet; it now holds {format_tokens(now_held)}" if to_wallet
                     else f"escrow; it now holds {format_tokens(now_escrow)}")
                  + f"\n  tx {result.tx_hash} (block {result.block_number})",
                  soft_wrap=True, highlight=False)


@app.command("transfer")
@explained
def transfer(
    to: str = typer.Argument(..., help="the recipient's address (it must be allowlisted)"),
    amount: str = typer.Argument(..., help="compute tokens to send, e.g. 100 or 12.5"),
    keystore: str | None = WalletOpt,
    confirmations: int | None = ConfirmationsOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Send AMOUNT compute tokens to another allowlisted account."""
    recipient = checksum_address(to, "recipient")
    units = _tokens(amount)
    if units == 0:
        raise Refused("the amount must be more than zero")
    path = keystore_path(keystore)
    owner = keystore_address(path)
    ledger = _ledger(confirmations)
    held = ledger.balance_of(owner)
    if held < units:
        raise Refused(f"{owner} holds {format_tokens(held)} compute tokens; sending {format_tokens(units)} "
                      f"is {format_tokens(units - held)} short",
                      "buy more with `sluice wallet buy AMOUNT`, or send less")
    _require_allowlisted(ledger, owner, "the wallet")
    _require_allowlisted(ledger, recipient, "the recipient")
    signer = unlock(str(path))
    result = send(ledger, signer, ledger.token.functions.transfer(recipient, units), "transferring")
    left = ledger.balance_of(owner)
    if as_json:
        print_json({"action": "transferred", "from": owner, "to": recipient, "amount": units, "balance": left,
                    "tx_hash": result.tx_hash, "block": result.block_number})
        return
    console.print(f"[green]transferred[/] {format_tokens(units)} compute tokens to {recipient}; the wallet now "
                  f"holds {format_tokens(left)}\n  tx {result.tx_hash} (block {result.block_number})",
                  soft_wrap=True, highlight=False)


# -- usage -----------------------------------------------------------------------------------
def _service_url() -> str:
    """The running embedded stack's API, else the API port of the settings."""
    from ledger.config import get_settings
    from ledger.paths import StatePaths
    from ledger.stack.running import read_stack_record

    settings = get_settings()
    record = read_stack_record(StatePaths(settings.state_dir)) or {}
    api = record.get("endpoints", {}).get("api")
    return str(api) if api else f"http://127.0.0.1:{settings.api_port}"


def _usage_from_api(api: str, payer: str, reader: Any) -> list[dict[str, Any]]:
    """The service's signed usage read: `reader` (the wallet's key) must be the payer or an auditor."""
    import httpx

    from redemption.sdk import reader_auth

    url = api.rstrip("/") + "/v1/usage"
    try:
        response = httpx.get(url, params={"payer": payer}, timeout=15, auth=reader_auth(reader))
    except httpx.HTTPError as exc:
        raise Refused(f"the service at {api} does not answer ({exc.__class__.__name__})",
                      "start it with `sluice up --detach`, pass --api URL, or set DATABASE_URL to read the "
                      "database directly") from None
    if response.status_code == 404:
        raise Refused(f"the service at {api} has no {url.removeprefix(api.rstrip('/'))}",
                      "upgrade the service, or set DATABASE_URL to read the database directly")
    if response.status_code != 200:
        try:
            message = response.json()["error"]["message"]
        except (ValueError, KeyError, TypeError):
            message = response.text[:200]
        raise Refused(f"the service refused the usage query ({response.status_code}): {message}")
    return [{"spender": s["spender"], "calls": int(s["calls"]), "prompt_tokens": int(s["prompt_tokens"]),
             "completion_tokens": int(s["completion_tokens"]), "metered": int(s["metered"]),
             "settled": int(s["settled"]), "unsettled": int(s["unsettled"]), "last_call": s["last_call"]}
            for s in response.json()["spenders"]]


def _usage_from_database(url: str, payer: str) -> list[dict[str, Any]]:
    import psycopg
    from eth_utils.address import to_checksum_address

    from ledger.db import connect
    from redemption.store import USAGE_BY_SPENDER

    try:
        with connect(url) as conn:
            rows = conn.execute(USAGE_BY_SPENDER, (bytes.fromhex(payer[2:]),)).fetchall()
    except psycopg.OperationalError as exc:
        raise Refused(f"the database does not answer: {str(exc).strip()}",
                      "point DATABASE_URL at the service's PostgreSQL, or unset it to ask the service") from None
    return [{"spender": str(to_checksum_address(bytes(r[0]))), "calls": int(r[1]), "prompt_tokens": int(r[2]),
             "completion_tokens": int(r[3]), "metered": int(r[4]), "settled": int(r[5]),
             "unsettled": int(r[4]) - int(r[5]), "last_call": r[6].isoformat()} for r in rows]


@app.command("usage")
@explained
def usage(
    account: str | None = typer.Argument(None, help="payer address to look at (default: the wallet's)"),
    keystore: str | None = WalletOpt,
    api: str | None = typer.Option(None, "--api", envvar="SLUICE_API_URL",
                                   help="the redemption service (default: the database when DATABASE_URL is set, "
                                        "else the running stack's service)"),
    as_csv: bool = typer.Option(False, "--csv", help="print CSV (every field, base units) instead of a table"),
    as_json: bool = JsonOpt,
) -> None:
    """Spend per developer key: calls, metered cost, and how much of it is settled on chain."""
    from ledger.config import get_settings

    payer = _owner(account, keystore)
    database = get_settings().database_url
    if api is None and database:
        source, rows = "database", _usage_from_database(database, payer)
    else:
        source, rows = "api", _usage_from_api(api or _service_url(), payer, unlock_key(keystore))
    if as_json:
        print_json({"payer": payer, "source": source, "spenders": rows})
        return
    if as_csv:
        import csv

        out = csv.writer(sys.stdout, lineterminator="\n")
        out.writerow(USAGE_FIELDS)
        out.writerows([row[f] for f in USAGE_FIELDS] for row in rows)
        sys.stdout.flush()
        return
    if not rows:
        console.print(f"No metered calls paid by {payer}.", highlight=False)
        return
    console.print(f"usage paid by {payer}, in compute tokens:", highlight=False)
    print_fitted(USAGE_COLUMNS, [(row["spender"], f"{row['calls']:,}", format_tokens(row["metered"]),
                                  format_tokens(row["unsettled"]), format_tokens(row["settled"]),
                                  str(row["last_call"])[:19].replace("T", " ")) for row in rows])
    total = sum(r["metered"] for r in rows)
    unsettled = sum(r["unsettled"] for r in rows)
    console.print(f"total {format_tokens(total)}, of which {format_tokens(unsettled)} not settled yet",
                  highlight=False)


USAGE_COLUMNS = (Column("developer key"), Column("calls", "right"), Column("metered", "right"),
                 Column("unsettled", "right"), Column("settled", "right", drop=2),
                 Column("last call (UTC)", wrap=True, min_width=10, drop=1))
USAGE_FIELDS = ("spender", "calls", "prompt_tokens", "completion_tokens", "metered", "settled", "unsettled",
                "last_call")


def _register_escrow() -> None:
    from ledger.cli import escrow
    from ledger.cli.keys import keys_app

    escrow.register(app)
    app.add_typer(keys_app, name="keys")


_register_escrow()
