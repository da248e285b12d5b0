"""`sluice audit`: the chain indexer, the on-chain history, and independent verification of settlements.

`index` backfills and follows the Sluice contracts' events into PostgreSQL (the redemption service
runs the same indexer in a thread). `history` and `verify` talk to an audit API with signed calls
from a key holding AUDITOR_ROLE (`--key`: a keystore file; or SLUICE_AUDITOR_KEY, a private key in the
environment). A raw key is never taken on the command line, where every local user's `ps` can read it.
`verify` trusts only the chain it is pointed at: exit status 0 when every check holds, 1 when it
found discrepancies (all printed), 2 when it could not run.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import typer

from ledger.cli.common import PASSWORD_ENV, JsonOpt, ask_password, explained, open_ledger
from ledger.cli.output import Column, console, err_console, fail, print_fitted, print_json

app = typer.Typer(help="Auditors: the on-chain history, and verifying every burn against signed receipts.",
                  no_args_is_help=True)

KEY_ENV = "SLUICE_AUDITOR_KEY"
# The key defaults to the settings' auditor_key (SLUICE_AUDITOR_KEY), read in `_auditor`.
KeyOpt = typer.Option(None, "--key",
                      help="keystore file of a key holding AUDITOR_ROLE (password from "
                           f"${PASSWORD_ENV} or a prompt); or set {KEY_ENV} to the private key")
ApiOpt = typer.Option(None, "--api", help="audit API base URL (default: the embedded stack's service)")


def _api_url(value: str | None) -> str:
    if value:
        return value
    from ledger.config import get_settings

    return f"http://127.0.0.1:{get_settings().api_port}"


@dataclass(frozen=True)
class AuditorKey:
    """The auditor's key as the audit API signs with it: raw bytes and address (no eth-account needed)."""

    key: bytes
    address: str


def _auditor(value: str | None) -> AuditorKey:
    """The auditor's key: `--key` (a keystore file), else SLUICE_AUDITOR_KEY (a private key or a keystore file)."""
    from ledger.config import get_settings
    from ledger.protocol.keystore import KeystoreError, WrongPassword, decrypt_keystore
    from ledger.protocol.secp256k1 import address_of
    from redemption.sdk import private_key_bytes

    from_option = value is not None
    if value is not None and looks_like_raw_key(value):
        fail("--key takes a keystore file, not a raw private key: a key on the command line is visible to every "
             "local user (ps, shell history)", f"set {KEY_ENV} to the private key instead, or pass a keystore file "
             "(`sluice wallet create` makes one)", code=2)
    if value is None and (configured := get_settings().auditor_key) is not None:
        value = configured.get_secret_value()
    if not value:
        fail("no auditor key", f"pass --key KEYSTORE or set {KEY_ENV}; the operator "
                               "grants the key the role with `sluice admin roles grant auditor ADDRESS`")
    path = Path(value).expanduser()
    if path.is_file():
        from ledger.cli.keystores import read_keystore

        try:
            key = decrypt_keystore(read_keystore(path), ask_password(f"Password for {path}"))
        except WrongPassword:
            fail(f"wrong password for keystore {path}", f"give the keystore's password (${PASSWORD_ENV} or the prompt)")
        except KeystoreError as exc:
            fail(f"{path}: {exc}")
        return AuditorKey(key, address_of(key))
    if from_option:
        fail(f"--key {value}: no such keystore file", f"pass a keystore file, or set {KEY_ENV} to the private key")
    try:
        key = private_key_bytes(value)
        return AuditorKey(key, address_of(key))
    except ValueError:
        fail(f"{KEY_ENV} is neither a keystore file nor a 0x private key")


def looks_like_raw_key(value: str) -> bool:
    """A 32-byte hex string (0x or not): a private key, never a keystore path."""
    digits = value[2:] if value.lower().startswith("0x") else value
    return len(digits) == 64 and all(c in "0123456789abcdefABCDEF" for c in digits)



# --------------------------------------------------------------------------- index


@app.command("index")
@explained
def index(
    follow: bool = typer.Option(False, "--follow", help="keep following new blocks until Ctrl-C"),
    confirmations: int = typer.Option(0, "--confirmations", min=0, help="stay this many blocks behind the head"),
    as_json: bool = JsonOpt,
) -> None:
    """Backfill every Sluice contract event from the deployment block into PostgreSQL (resumes where it stopped)."""
    import threading
    import time

    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    from ledger.config import get_settings
    from ledger.db import migrate
    from ledger.followers.indexer import ChainIndexer, IndexProgress

    db_url = get_settings().effective_database_url
    migrate(db_url)
    indexer = ChainIndexer(open_ledger(), db_url, confirmations=confirmations)
    began = time.perf_counter()
    progress = Progress(
        TextColumn("[bold]indexing[/]"), BarColumn(), TextColumn("blocks {task.completed:,.0f}/{task.total:,.0f}"),
        TextColumn("{task.fields[events]:,} events"), TextColumn("{task.fields[rate]:,.0f} events/s"),
        TimeElapsedColumn(), TimeRemainingColumn(), console=err_console, disable=as_json, transient=False,
    )  # fmt: skip
    task = progress.add_task("index", total=1, events=0, rate=0.0)

    def report(p: IndexProgress) -> None:
        progress.update(task, completed=p.block - p.first_block + 1, total=p.target - p.first_block + 1,
                        events=p.events, rate=p.events / p.seconds if p.seconds else 0.0)

    with progress:
        status = indexer.sync(report)
    seconds = time.perf_counter() - began
    figures = {"events": indexer.events_indexed, "block": status.block, "head": status.head, "lag": status.lag,
               "seconds": round(seconds, 3), "events_per_second": round(indexer.events_indexed / seconds, 1),
               "reorgs": indexer.reorgs}
    if as_json and not follow:
        print_json(figures)
    elif not as_json:
        console.print(f"indexed [bold]{figures['events']:,}[/] events up to block {status.block:,} in {seconds:.2f} s "
                      f"({figures['events_per_second']:,.0f} events/s); head {status.head:,}, {status.lag} behind")
    if not follow:
        indexer.close()
        return
    stop = threading.Event()
    if not as_json:
        console.print("[dim]following new blocks; Ctrl-C stops[/]")
    thread = indexer.spawn(stop)
    try:
        while thread.is_alive():
            thread.join(1.0)
            if indexer.last_status is not None and not as_json:
                s = indexer.last_status
                console.print(f"[dim]block {s.block:,}, head {s.head:,}, {s.lag} behind, "
                              f"{indexer.events_indexed:,} events[/]", end="\r")
    except KeyboardInterrupt:
        stop.set()
        thread.join(10)
    if as_json:
        print_json({**figures, "events": indexer.events_indexed})


# --------------------------------------------------------------------------- history


def _short(text: str, keep: int = 6) -> str:
    return text if len(text) <= 2 * keep + 3 else f"{text[: keep + 2]}…{text[-keep:]}"


def _describe(row: dict[str, Any]) -> str:
    """The event's arguments in a line: who to whom, which role, which model."""
    from ledger.units import format_tokens

    args, event = row["args"], row["event"]
    if event == "Transfer":
        return f"{_short(args['from'])} → {_short(args['to'])}"
    if event == "Approval":
        return f"{_short(args['owner'])} lets {_short(args['spender'])} spend"
    if event in ("Redeemed", "Shortfall"):
        extra = "" if event == "Redeemed" else f" owed {format_tokens(int(args['owed']))}, paid " \
                                               f"{format_tokens(int(args['paid']))}"
        who = f"payer {_short(args['payer'])}, spender {_short(args['spender'])}"
        return f"batch {_short(args['batchId'])}: {who}{extra}"
    if event == "BatchSettled":
        return f"batch {_short(args['batchId'])}: {args['items']} receipts, root {_short(args['receiptsRoot'])}"
    if event in ("RoleGranted", "RoleRevoked"):
        return f"{args.get('roleName', _short(args['role']))} {_short(args['account'])} by {_short(args['sender'])}"
    if event in ("RateSet", "ModelListed", "ModelDelisted"):
        name = args.get("modelName") or args.get("name") or _short(args["model"])
        if event == "RateSet":
            return f"{name}: in {format_tokens(int(args['inputRate']))}, out {format_tokens(int(args['outputRate']))}"
        return f"{name}" + (f" ({args['tierName']})" if "tierName" in args else "")
    if event == "Deposited":
        return f"into the escrow of {_short(args['account'])} from {_short(args['from'])}"
    if event == "WithdrawalRequested":
        return f"{_short(args['account'])} asks to withdraw, unlocks at {args['unlocksAt']}"
    if event == "Withdrawn":
        return f"out of the escrow of {_short(args['account'])}"
    if event == "BudgetSet":
        return f"{_short(args['payer'])} gives {_short(args['spender'])} a budget, effective at {args['effectiveAt']}"
    if event == "AllowlistUpdated":
        return f"{_short(args['account'])} {'allowed' if args['allowed'] else 'removed'}"
    if event == "Purchased":
        return f"{_short(args['buyer'])} paid {args['cost']} (tier {args['tier']})"
    if event == "Issued":
        return f"to {_short(args['to'])}, ref {args.get('refText') or _short(args['ref'])}"
    return ", ".join(f"{k}={_short(str(v))}" for k, v in args.items() if not isinstance(v, list | dict))


def _amount(row: dict[str, Any]) -> str:
    from ledger.units import format_tokens

    args = row["args"]
    key = {"Transfer": "value", "Approval": "value", "Purchased": "amount", "Issued": "amount", "Redeemed": "amount",
           "BatchSettled": "total", "Deposited": "amount", "WithdrawalRequested": "amount", "Withdrawn": "amount",
           "BudgetSet": "amount"}.get(row["event"])
    if key is None:
        return ""
    value = int(args[key])
    return "unlimited" if value == 2**256 - 1 else format_tokens(value)


# At 80 columns the time wraps (date over time), so do the details, and the kind (the event says it) and the
# transaction hash (in --json and --csv) go.
HISTORY_COLUMNS = (Column("time (UTC)", wrap=True, min_width=10), Column("block", "right"), Column("tx", drop=2),
                   Column("event"), Column("kind", drop=3), Column("details", wrap=True, min_width=28),
                   Column("tokens", "right"))


@app.command("history")
@explained
def history(
    account: list[str] = typer.Option([], "--account", help="events naming this address (repeatable)"),  # noqa: B008
    kind: list[str] = typer.Option([], "--kind", help="purchase, issue, mint, burn, transfer, approval, redemption, "  # noqa: B008
                                   "shortfall, batch, rate_change, role_change, allowlist, pause, config, deposit, "
                                   "withdrawal, budget"),
    from_block: int | None = typer.Option(None, "--from-block", min=0),
    to_block: int | None = typer.Option(None, "--to-block", min=0),
    since: str | None = typer.Option(None, "--since", help="unix seconds or ISO 8601"),
    until: str | None = typer.Option(None, "--until", help="unix seconds or ISO 8601"),
    limit: int = typer.Option(50, "--limit", min=1, help="rows per page"),
    oldest_first: bool = typer.Option(False, "--oldest-first", help="chain order instead of newest first"),
    every: bool = typer.Option(False, "--all", help="follow the pages to the end"),
    as_csv: bool = typer.Option(False, "--csv", help="print CSV (the API's export) instead of a table"),
    as_json: bool = JsonOpt,
    api: str | None = ApiOpt,
    key: str | None = KeyOpt,
) -> None:
    """The on-chain history from the audit API (purchases, deposits, withdrawals, budgets, transfers, burns,
    batches, rate and role changes).

    Newest first unless --oldest-first; one page of --limit rows unless --all.
    """

    from ledger.audit.api import AuditApi
    from ledger.errors import VerifyError

    client = AuditApi(_api_url(api), _auditor(key))
    params: dict[str, Any] = {"account": account, "kind": kind, "from_block": from_block, "to_block": to_block,
                              "since": since, "until": until, "order": "asc" if oldest_first else "desc"}
    params = {k: v for k, v in params.items() if v not in (None, [])}
    rows: list[dict[str, Any]] = []
    position: dict[str, Any] = {}
    cursor: str | None = None
    try:
        while True:
            page_params = {**params, "limit": limit, **({"cursor": cursor} if cursor else {})}
            if as_csv:
                text, cursor = client.get("/audit/transactions", {**page_params, "format": "csv"})
                lines = text.splitlines(keepends=True)
                console.file.write("".join(lines if not rows else lines[1:]))
                rows.append({})  # the header is written once
            else:
                page = client.get("/audit/transactions", page_params)
                rows.extend(page["data"])
                cursor = page["next_cursor"]
                position = {k: page[k] for k in ("indexed_block", "head", "lag")}
            if not every or cursor is None:
                break
    except VerifyError as exc:
        fail(str(exc), "the key must hold AUDITOR_ROLE (`sluice admin roles grant auditor ADDRESS`)")
    finally:
        client.close()
    if as_csv:
        return
    if as_json:
        print_json({"data": rows, "next_cursor": cursor, **position})
        return
    print_fitted(HISTORY_COLUMNS, [(row["timestamp"][:19].replace("T", " "), f"{row['block']}:{row['log_index']}",
                                    _short(row["tx_hash"]), row["event"], row["kind"], _describe(row), _amount(row))
                                   for row in rows], title=f"Sluice on-chain history ({len(rows)} events)")
    lag = position.get("lag")
    console.print(f"[dim]indexed to block {position.get('indexed_block')}, {lag} behind the head"
                  + ("; more: --all, or narrow the filters[/]" if cursor else "[/]"))


# --------------------------------------------------------------------------- verify


def _node_keys(value: str | None) -> set[bytes] | None:
    import json

    from eth_utils.address import is_address

    if value is None:
        return None
    path = Path(value).expanduser()
    text = path.read_text() if path.is_file() else value
    try:
        items = json.loads(text) if text.lstrip().startswith("[") else text.replace(",", "\n").split()
    except json.JSONDecodeError:
        raise ValueError(f"--nodes file {path} is not a JSON list of addresses") from None
    keys: set[bytes] = set()
    for item in items:
        address = str(item.get("node") if isinstance(item, dict) else item).strip()
        if not is_address(address):
            raise ValueError(f"--nodes: {address!r} is not an address")
        keys.add(bytes.fromhex(address[2:]))
    return keys


@app.command("verify")
def verify(
    rpc: str | None = typer.Option(None, "--rpc", help="the chain's JSON-RPC URL you trust (default: RPC_URL)"),
    api: str | None = ApiOpt,
    key: str | None = KeyOpt,
    nodes: str | None = typer.Option(None, "--nodes", help="registered node keys: addresses, comma separated, or "
                                     "a file (one per line or a JSON list); default: the API's /audit/nodes"),
    from_block: int = typer.Option(0, "--from-block", min=0, help="first block to read logs from"),
    workers: int | None = typer.Option(None, "--workers", min=1, help="signature-checking processes (default: CPUs)"),
    as_csv: bool = typer.Option(False, "--csv", help="print the per (payer, spender) figures as CSV (full "
                                "addresses, base units) instead of the report"),
    as_json: bool = JsonOpt,
) -> None:
    """Check every burn on the chain against the signed requests and node receipts behind it.

    Recomputes supply from Transfer logs against totalSupply(); for every BatchSettled fetches the
    receipts, rebuilds the Merkle root, checks both signatures of each receipt, cost <= maxCost and
    the published rates, and that receipts add up to the Redeemed (and Shortfall) amounts.
    """
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from ledger.audit.api import AuditApi
    from ledger.audit.verifier import verify as run_verify
    from ledger.errors import LedgerError, VerifyError

    try:
        rpc_url = rpc
        if rpc_url is None:
            from ledger.config import get_settings

            rpc_url = get_settings().effective_rpc_url
        client = AuditApi(_api_url(api), _auditor(key))
        progress = Progress(TextColumn("[bold]{task.description}[/]"), BarColumn(),
                            TextColumn("{task.completed:,.0f}/{task.total:,.0f}"), TimeElapsedColumn(),
                            console=err_console, disable=as_json or as_csv, transient=True)
        tasks: dict[str, Any] = {}

        def report(stage: str, done: int, total: int) -> None:
            if stage not in tasks:
                tasks[stage] = progress.add_task("reading logs" if stage == "chain" else "checking batches",
                                                 total=total)
            progress.update(tasks[stage], completed=done, total=total)

        try:
            with progress:
                result = run_verify(rpc_url, client, node_keys=_node_keys(nodes), from_block=from_block,
                                    workers=workers, progress=report)
        finally:
            client.close()
    except (VerifyError, LedgerError, ValueError) as exc:
        fail(f"could not verify: {exc}", "check --rpc, --api and that --key holds AUDITOR_ROLE", code=2)
    if as_json:
        print_json(result.to_json())
    elif as_csv:
        _print_pairs_csv(result)
    else:
        _print_report(result)
    if not result.ok:
        raise typer.Exit(1)


PAIR_COLUMNS = (Column("payer"), Column("spender"), Column("receipts", "right"), Column("metered", "right"),
                Column("redeemed", "right"), Column("shortfall unpaid", "right", wrap=True, min_width=8),
                Column("debt cleared", "right", drop=1))
PAIR_FIELDS = ("payer", "spender", "receipts", "metered", "redeemed", "shortfall_unpaid", "debt_cleared")


def _pair_rows(result: Any) -> list[tuple[str, str, int, int, int, int, int]]:
    """Each (payer, spender) of the report: full checksummed addresses, figures in base units."""
    from ledger.protocol.address import to_checksum_address

    return [(to_checksum_address(payer), to_checksum_address(spender), t.receipts, t.receipts_cost, t.redeemed,
             t.shortfall_unpaid, t.debt_receipts_cost) for (payer, spender), t in sorted(result.pairs.items())]


def _print_pairs_csv(result: Any) -> None:
    import csv
    import sys

    out = csv.writer(sys.stdout, lineterminator="\n")
    out.writerow(PAIR_FIELDS)
    out.writerows(_pair_rows(result))
    sys.stdout.flush()


def _print_report(result: Any) -> None:
    from rich.table import Table

    from ledger.units import format_tokens

    summary = Table(title="sluice audit verify", show_header=False)
    summary.add_column("what")
    summary.add_column("figure", justify="right")
    for label, value in (
        ("chain id", str(result.chain_id)),
        ("blocks read", f"{result.from_block:,} to {result.to_block:,}"),
        ("logs read", f"{result.events:,}"),
        ("settled batches", f"{result.batches:,}"),
        ("metered receipts", f"{result.receipts:,}"),
        ("debt receipts", f"{result.debt_receipts:,}"),
        ("signatures checked", f"{result.signatures:,}"),
        ("registered node keys", f"{result.node_keys:,}"),
        ("minted", format_tokens(result.minted)),
        ("burned", format_tokens(result.burned)),
        ("totalSupply()", format_tokens(result.total_supply)),
        ("burns outside settlement", f"{result.direct_burns:,} ({format_tokens(result.direct_burned)})"),
        ("seconds (reading logs / total)", f"{result.seconds_chain:.2f} / {result.seconds_total:.2f}"),
        ("receipts per second", f"{result.receipts_per_second:,.0f}"),
    ):
        summary.add_row(label, value)
    console.print(summary)
    if result.pairs:
        rows = [(_short(payer), _short(spender), f"{receipts:,}", format_tokens(metered), format_tokens(redeemed),
                 format_tokens(unpaid), format_tokens(debt))
                for payer, spender, receipts, metered, redeemed, unpaid, debt in _pair_rows(result)]
        print_fitted(PAIR_COLUMNS, rows, title="per (payer, spender), tokens")
    if result.unreceipted:
        charged = Table(title=f"{len(result.unreceipted)} calls charged without a node receipt (fail-closed, from "
                              "what the service relayed)", title_style="bold yellow")
        for column in ("batch", "job", "reason"):
            charged.add_column(column)
        for u in result.unreceipted:
            charged.add_row(_short(u["batch_id"], 8), _short(u["job_id"], 8), u["reason"])
        console.print(charged)
    if result.ok:
        backed = ("every burn is backed by signed requests and node receipts" if not result.unreceipted else
                  f"every burn is backed by signed requests and node receipts, except {len(result.unreceipted)} "
                  "unreceipted calls listed above")
        console.print(f"[bold green]verified:[/] {backed}, and supply adds up")
        return
    problems = Table(title=f"{len(result.discrepancies)} discrepancies", title_style="bold red")
    for column in ("check", "batch", "job", "detail"):
        problems.add_column(column, no_wrap=column != "detail")
    for d in result.discrepancies:
        problems.add_row(d.check, _short(d.batch or "", 8), _short(d.job or "", 8), d.detail)
    console.print(problems)
    console.print(f"[bold red]{len(result.discrepancies)} discrepancies[/]")
