"""`sluice dev budgets`: every payer that gave this developer key a budget, what is left, and the payer's limits
on it, on the light client alone (like `sluice dev call`).

    sluice dev budgets [--api URL] [--keystore PATH|ADDRESS] [--json | --csv]

The payers come from Settlement's `BudgetSet` logs filtered by the key's (indexed) spender topic, read over
plain JSON-RPC at the chain the service's discovery document names; then the signed `GET /v1/budget` per
payer gives what is left (the budget, capped by the payer's escrow) and the key policy (label, calls and
model tokens per minute, expiry). The table fits 80 columns; --json and --csv have every field.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import urllib.error
import urllib.request
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import httpx

from ledger.cli.dev_call import Failure, Who, api_url, developer_key, fail, refusal
from ledger.protocol.address import to_checksum_address
from ledger.protocol.keccak import keccak256
from ledger.protocol.secp256k1 import address_of
from ledger.units import format_tokens
from redemption.sdk import SluiceError, fetch_budget, fetch_discovery

BUDGET_SET = "0x" + keccak256(b"BudgetSet(address,address,uint256,uint64)").hex()
FIELDS = ("payer", "left", "budget_available", "escrow_available", "label", "requests_per_minute",
          "tokens_per_minute", "expires_at", "rate_window_seconds")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="sluice dev budgets", description="Every payer that gave this developer key "
                                "a budget: what is left (compute tokens) and the payer's limits on the key.")
    p.add_argument("--api", default=None, help="the redemption service (default: $SLUICE_API_URL, else the "
                   "running stack's service)")
    p.add_argument("--keystore", default=None, help="the developer's keystore file, or a wallet's address "
                   "(default: $SLUICE_DEVELOPER_KEY, else the only wallet under $SLUICE_HOME/wallets)")
    out = p.add_mutually_exclusive_group()
    out.add_argument("--json", action="store_true", dest="as_json", help="one JSON object, base units")
    out.add_argument("--csv", action="store_true", dest="as_csv", help="CSV with every field, base units")
    return p


def _rpc(url: str, method: str, params: list[Any]) -> Any:
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": method, "params": params}).encode()
    request = urllib.request.Request(url, body, {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            answer = json.loads(response.read())
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise Failure("unavailable", f"the chain at {url} does not answer ({exc.__class__.__name__})",
                      "the service's discovery document names this RPC URL; check it is reachable from here") from None
    if "error" in answer:
        raise LookupError(str(answer["error"]))
    return answer["result"]


def budget_payers(rpc_url: str, settlement: str, spender: str) -> list[str]:
    """Every payer that ever set `spender` a budget (BudgetSet's spender topic), in the order they did."""
    topics = [BUDGET_SET, None, "0x" + "00" * 12 + spender[2:].lower()]
    found: dict[str, None] = {}

    def scan(start: int, end: int) -> None:
        try:
            logs = _rpc(rpc_url, "eth_getLogs", [{"fromBlock": hex(start), "toBlock": hex(end),
                                                  "address": settlement, "topics": topics}])
        except LookupError:
            if start == end:
                raise Failure("unavailable", f"the chain at {rpc_url} refused eth_getLogs") from None
            middle = (start + end) // 2  # the node refused the range: halve it
            scan(start, middle)
            scan(middle + 1, end)
            return
        for entry in logs:
            found[to_checksum_address(bytes.fromhex(entry["topics"][1][-40:]))] = None

    scan(0, int(_rpc(rpc_url, "eth_blockNumber", []), 16))
    return list(found)


def _when(unix: int | None) -> str:
    return "never" if unix is None else datetime.fromtimestamp(unix, UTC).strftime("%Y-%m-%d %H:%M UTC")


def _table(spender: str, rows: list[dict[str, Any]]) -> None:
    if not rows:
        print(f"no payer gave {spender} a budget")
        return
    print(f"budgets of {spender}:")
    print(f"{'payer':42}  {'left (tokens)':>14}  {'rpm':>7}  {'tpm':>9}")
    for r in rows:
        rpm = "-" if r["requests_per_minute"] is None else f"{r['requests_per_minute']:,}"
        tpm = "-" if r["tokens_per_minute"] is None else f"{r['tokens_per_minute']:,}"
        print(f"{r['payer']:42}  {format_tokens(r['left']):>14}  {rpm:>7}  {tpm:>9}")
        if r["label"] is not None or r["expires_at"] is not None:
            print(f"  {(r['label'] or '(no label)')[:40]}; expires {_when(r['expires_at'])}")
    print("limits are per minute; left = the budget, capped by the payer's escrow (--json: base units)")


def budgets(opts: argparse.Namespace) -> int:
    key = developer_key(opts.keystore)
    spender = address_of(key)
    api = api_url(opts.api)
    who = Who(api, spender, spender)
    try:
        with httpx.Client(timeout=15) as client:
            discovery = fetch_discovery(api, client=client)
            payers = budget_payers(str(discovery["rpc_url"]), str(discovery["contracts"]["settlement"]), spender)
            rows = []
            for payer in payers:
                b = fetch_budget(api, key, payer=payer, client=client)
                left = min(b.budget_available or 0, b.escrow_available)
                rows.append({"payer": payer, "left": left, "budget_available": b.budget_available,
                             "escrow_available": b.escrow_available, "label": b.label,
                             "requests_per_minute": b.requests_per_minute, "tokens_per_minute": b.tokens_per_minute,
                             "expires_at": b.expires_at, "rate_window_seconds": b.rate_window_seconds})
    except SluiceError as exc:
        raise refusal(exc, who) from None
    except httpx.HTTPError as exc:
        raise Failure("unavailable", f"no answer from the service at {api} ({exc.__class__.__name__}: {exc})",
                      "check --api (or start the stack with `sluice up --detach`)") from None
    if opts.as_json:
        print(json.dumps({"spender": spender, "budgets": rows}, indent=2))
    elif opts.as_csv:
        out = csv.writer(sys.stdout, lineterminator="\n")
        out.writerow(FIELDS)
        out.writerows(["" if r[f] is None else r[f] for f in FIELDS] for r in rows)
    else:
        _table(spender, rows)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """`sluice dev budgets ARGS`: returns the exit code (dev_call.EXIT_CODES)."""
    opts = parser().parse_args(argv)
    try:
        return budgets(opts)
    except Failure as failure:
        fail(failure, opts.as_json)
