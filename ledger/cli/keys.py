"""`sluice wallet keys`: a payer's names and limits for its developer keys (docs/interfaces.md), set and read with
requests signed by the wallet's key. `sluice dev budgets` (ledger.cli.dev_budgets) shows a developer the same
limits from the other side.
"""

from __future__ import annotations

import sys
from datetime import UTC, datetime
from typing import Any

import typer

from ledger.cli.common import JsonOpt, Refused, checksum_address, explained
from ledger.cli.output import Column, console, print_fitted, print_json
from ledger.units import format_tokens

keys_app = typer.Typer(help="Name your developer keys and limit them (calls and model tokens per minute, "
                       "expiry): stored by the service, enforced on every call.", no_args_is_help=True)

KeystoreOpt = typer.Option(None, "--keystore", help="the payer's wallet keystore file or address")
ApiOpt = typer.Option(None, "--api", envvar="SLUICE_API_URL", help="the redemption service (default: the running "
                      "stack's)")
CsvOpt = typer.Option(False, "--csv", help="print CSV (every field, base units) instead of a table")
KEY_FIELDS = ("spender", "label", "requests_per_minute", "tokens_per_minute", "expires_at", "updated_at",
              "budget_effective", "budget_reserved", "budget_available", "pending_cut", "pending_cut_at")
KEY_COLUMNS = (Column("developer key"), Column("label", wrap=True, min_width=8), Column("rpm", "right"),
               Column("tpm", "right", drop=2), Column("expires (UTC)", drop=3),
               Column("available", "right", drop=1))


def when(unix: int | None) -> str:
    return "-" if unix is None else datetime.fromtimestamp(unix, UTC).strftime("%Y-%m-%d %H:%M")


def _service(api: str | None) -> str:
    from ledger.cli.wallet import _service_url

    return (api or _service_url()).rstrip("/")


def _refused(exc: Exception, api: str) -> Refused:
    import httpx

    from redemption.sdk import SluiceError

    if isinstance(exc, SluiceError):
        return Refused(f"the service refused: {exc.status_code} {exc.error_code}: {exc.message}")
    if isinstance(exc, httpx.HTTPError):
        return Refused(f"the service at {api} does not answer ({exc.__class__.__name__})",
                       "start it with `sluice up --detach`, or pass --api URL")
    raise exc


def _flat(key: dict[str, Any]) -> dict[str, Any]:
    budget = key.get("budget") or {}
    cut = budget.get("pending_cut") or {}
    return {"spender": key["spender"], "label": key["label"], "requests_per_minute": key["requests_per_minute"],
            "tokens_per_minute": key["tokens_per_minute"], "expires_at": key["expires_at"],
            "updated_at": key["updated_at"], "budget_effective": budget.get("effective"),
            "budget_reserved": budget.get("reserved"), "budget_available": budget.get("available"),
            "pending_cut": cut.get("amount"), "pending_cut_at": cut.get("effective_at")}


def _csv(fields: tuple[str, ...], rows: list[dict[str, Any]]) -> None:
    import csv

    out = csv.writer(sys.stdout, lineterminator="\n")
    out.writerow(fields)
    out.writerows(["" if row[f] is None else row[f] for f in fields] for row in rows)
    sys.stdout.flush()


def _show_policy(key: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print_json(key)
        return
    limits = ", ".join(f"{name} {key[field]:,}" for name, field in (("rpm", "requests_per_minute"),
                                                                    ("tpm", "tokens_per_minute"))
                       if key[field] is not None) or "no limits"
    expires = "never" if key["expires_at"] is None else when(key["expires_at"]) + " UTC"
    console.print(f"{key['spender']} {key['label'] or '(no label)'}: {limits}, expires {expires}",
                  highlight=False, soft_wrap=True)


@keys_app.command("list")
@explained
def keys_list(keystore: str | None = KeystoreOpt, api: str | None = ApiOpt, as_csv: bool = CsvOpt,
              as_json: bool = JsonOpt) -> None:
    """Your developer keys: label, limits, expiry, and what is left of each budget."""
    from ledger.cli.keystores import unlock_key
    from redemption.sdk import fetch_keys

    url = _service(api)
    try:
        answer = fetch_keys(url, unlock_key(keystore))
    except Exception as exc:
        raise _refused(exc, url) from None
    rows = [_flat(k) for k in answer["keys"]]
    if as_json:
        print_json({"payer": answer["payer"], "keys": rows})
        return
    if as_csv:
        _csv(KEY_FIELDS, rows)
        return
    if not rows:
        console.print(f"{answer['payer']} has no developer keys (give one a budget: `sluice wallet budget set`)",
                      highlight=False)
        return
    console.print(f"developer keys of {answer['payer']}:", highlight=False)
    print_fitted(KEY_COLUMNS, [
        (r["spender"], r["label"] or "-", "-" if r["requests_per_minute"] is None else f"{r['requests_per_minute']:,}",
         "-" if r["tokens_per_minute"] is None else f"{r['tokens_per_minute']:,}", when(r["expires_at"]),
         "-" if r["budget_available"] is None else format_tokens(int(r["budget_available"])))
        for r in rows])
    console.print("limits are per minute; available in compute tokens (--json: base units)", highlight=False)


def _put(keystore: str | None, api: str | None, spender: str, fields: dict[str, Any], as_json: bool) -> None:
    from ledger.cli.keystores import unlock_key
    from redemption.sdk import set_key_policy

    url = _service(api)
    try:
        key = set_key_policy(url, unlock_key(keystore), checksum_address(spender, "developer key"), **fields)
    except Exception as exc:
        raise _refused(exc, url) from None
    _show_policy(key, as_json)


@keys_app.command("label")
@explained
def keys_label(spender: str = typer.Argument(..., help="the developer key's address"),
               label: str = typer.Argument(..., help="its name (at most 64 characters; \"\" clears it)"),
               keystore: str | None = KeystoreOpt, api: str | None = ApiOpt, as_json: bool = JsonOpt) -> None:
    """Name a developer key."""
    _put(keystore, api, spender, {"label": label or None}, as_json)


def _expiry(text: str) -> int | None:
    if text == "never":
        return None
    if text.isdigit():
        return int(text)
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise Refused(f"--expires {text!r} is not a time",
                      "give unix seconds, an ISO date or time (2027-01-31, 2027-01-31T18:00, UTC unless it says), "
                      "or never") from None
    return int((moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp())


@keys_app.command("limit")
@explained
def keys_limit(
    spender: str = typer.Argument(..., help="the developer key's address"),
    rpm: int | None = typer.Option(None, "--rpm", min=0, help="calls per minute (0: no limit)"),
    tpm: int | None = typer.Option(None, "--tpm", min=0, help="model tokens per minute (0: no limit)"),
    expires: str | None = typer.Option(None, "--expires", help="unix seconds or ISO time (UTC) the key stops; "
                                       "never: no expiry"),
    keystore: str | None = KeystoreOpt, api: str | None = ApiOpt, as_json: bool = JsonOpt,
) -> None:
    """Limit a developer key; options not given stay as they are."""
    fields: dict[str, Any] = {}
    if rpm is not None:
        fields["requests_per_minute"] = rpm or None
    if tpm is not None:
        fields["tokens_per_minute"] = tpm or None
    if expires is not None:
        fields["expires_at"] = _expiry(expires)
    if not fields:
        raise Refused("nothing to change", "give --rpm, --tpm or --expires")
    _put(keystore, api, spender, fields, as_json)


@keys_app.command("delete")
@explained
def keys_delete(spender: str = typer.Argument(..., help="the developer key's address"),
                keystore: str | None = KeystoreOpt, api: str | None = ApiOpt, as_json: bool = JsonOpt) -> None:
    """Drop a key's label and limits (its budget stays: `sluice wallet budget cut` lowers it)."""
    from ledger.cli.keystores import unlock_key
    from redemption.sdk import delete_key_policy

    url = _service(api)
    spender = checksum_address(spender, "developer key")
    try:
        deleted = delete_key_policy(url, unlock_key(keystore), spender)
    except Exception as exc:
        raise _refused(exc, url) from None
    if as_json:
        print_json({"spender": spender, "deleted": deleted})
        return
    console.print(f"{spender}: " + ("label and limits dropped" if deleted else "had no label or limits"),
                  highlight=False)
