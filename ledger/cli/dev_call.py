"""`sluice dev call`: one signed call from the shell, on the light client alone.

    sluice dev call "Say hello" --model meta-llama/Llama-3.1-8B-Instruct --payer 0xENTERPRISE

The completion streams to stdout as it is generated; then the cost (compute tokens and exact base
units), the job id and what is left of the key's budget from the payer (or of the payer's escrow,
when the key pays for itself) go to stderr, so `> out.txt` keeps only the text. `--json` prints one
object with all of it instead. Every refusal is printed in words with its error code and what to do,
and the exit code says its class (EXIT_CODES, listed in --help), so scripts can branch on it.

This command runs where only the client is installed (`pip install sluice`): it uses redemption.sdk,
httpx and the protocol core, argparse instead of typer, and decrypts keystores itself
(ledger.protocol.keystore), so the launcher runs it before (and without) the server's CLI.
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

import httpx

from ledger.paths import StatePaths
from ledger.protocol.address import is_address, to_checksum_address
from ledger.protocol.keystore import KeystoreError, WrongPassword, decrypt_keystore
from ledger.units import format_tokens, parse_tokens
from redemption.sdk import (
    BUDGET_PATH,
    AuthenticationError,
    Budget,
    PaymentRequired,
    PermissionDenied,
    RateLimited,
    SluiceAuth,
    SluiceError,
    error_from_response,
    private_key_bytes,
    raise_for_error,
    reader_auth,
)

KEY_ENV = "SLUICE_DEVELOPER_KEY"
PASSWORD_ENV = "SLUICE_KEYSTORE_PASSWORD"
API_ENV = "SLUICE_API_URL"
DEFAULT_MAX_COST = "1"  # compute tokens: the most one call may cost unless --max-cost says otherwise

# The exit code of each class of failure: (code, what it means). 0 is success.
EXIT_CODES: dict[str, tuple[int, str]] = {
    "other": (1, "an answer this command does not understand"),
    "usage": (2, "bad options or arguments, no key, a keystore that does not open"),
    "request": (3, "the service refused the request itself (400, 404, 405, 408, 413: unknown model, prompt "
                   "too long)"),
    "signature": (4, "the signature was refused (401: clock, key or nonce)"),
    "payment": (5, "not enough escrow or budget, or --max-cost too low (402)"),
    "permission": (6, "not permitted (403: no budget from this payer, not allowlisted, paused, suspended)"),
    "rate_limit": (7, "over the key's rate limit (429): retry after the time it names"),
    "unavailable": (8, "the service, its nodes, chain or database cannot serve now (5xx, no answer): retry later"),
}

# What to do about each error code of README's table that a call can meet.
HINTS: dict[str, str] = {
    "invalid_json": "the request body was not JSON; this is a bug in the client, please report it",
    "invalid_request": "check --model and --max-tokens",
    "invalid_header": "check --payer (a 0x address) and --max-cost",
    "context_length_exceeded": "shorten the prompt or lower --max-tokens (nothing was charged)",
    "missing_signature": "the call was not signed; check the key",
    "invalid_signature": "the signature does not verify: check that --api is the service of this chain",
    "signature_expired": "the signature's deadline passed: check this machine's clock",
    "deadline_too_far": "the signature's deadline is too far ahead: check this machine's clock",
    "nonce_replayed": "a nonce was reused; run the command again (every run draws a fresh nonce)",
    "insufficient_escrow": "the payer's escrow cannot cover this call: the payer buys more "
                           "(`sluice wallet buy AMOUNT`), or ask for less with --max-tokens",
    "insufficient_budget": "your budget from the payer cannot cover this call: ask the payer to raise it "
                           "(`sluice wallet budget set {spender} AMOUNT`), or ask for less with --max-tokens",
    "max_cost_too_low": "raise --max-cost: it must cover the prompt and at least one completion token",
    "no_budget": "the payer gave this key no budget: check --payer, or ask the payer to give one "
                 "(`sluice wallet budget set {spender} AMOUNT`)",
    "not_allowlisted": "the payer is not allowlisted; the operator allowlists it "
                       "(`sluice admin allowlist add {payer}`)",
    "paused": "the operator paused the compute token; calls resume once it is unpaused",
    "suspended": "the payer owes for usage its escrow could not cover; the operator lifts it "
                 "(`sluice admin debts clear {payer}`) once it is paid",
    "model_not_found": "no node serves that model: `curl {api}/v1/models` lists the ones there are",
    "not_found": "check --api: it must be the redemption service's base URL",
    "method_not_allowed": "check --api: it must be the redemption service's base URL",
    "request_timeout": "the request reached the service too slowly; check the network and try again",
    "body_too_large": "the prompt is too large (bodies are at most 1 MiB)",
    "upstream_error": "the node dropped the call before answering (nothing was charged); try again",
    "upstream_dropped": "the node dropped the stream part-way; the message says what was charged",
    "unavailable": "no node can take the call now (nothing was charged); try again shortly",
    "no_capacity": "every node is busy (nothing was charged); try again shortly",
    "chain_unavailable": "the service cannot reach the chain (nothing was charged); try again shortly",
    "database_unavailable": "the service cannot reach its database (nothing was charged); try again shortly",
    "settlement_overdue": "settlement is behind (nothing was charged); try again once the operator's workers "
                          "catch up",
    "too_many_connections": "the service is at its connection limit (nothing was charged); try again",
    "duration_exceeded": "the call ran longer than the service allows and was cut (charged for what was "
                         "generated); ask for less with --max-tokens",
}
STREAM_ERROR_CLASSES = {"duration_exceeded": "unavailable", "upstream_dropped": "unavailable",
                        "upstream_error": "unavailable"}


class Failure(Exception):
    """The command stops: a message, what to do, and the class that picks the exit code."""

    def __init__(self, kind: str, message: str, hint: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.kind, self.message, self.hint, self.code = kind, message, hint, code

    @property
    def exit_code(self) -> int:
        return EXIT_CODES.get(self.kind, EXIT_CODES["other"])[0]


@dataclass(frozen=True)
class Who:
    """What the hints fill in: the service, the signing key and the payer."""

    api: str
    spender: str
    payer: str

    def hint(self, code: str | None) -> str | None:
        text = HINTS.get(code or "")
        return None if text is None else text.format(api=self.api, spender=self.spender, payer=self.payer)


def _epilog() -> str:
    import textwrap

    key = textwrap.wrap(f"key: --keystore PATH|ADDRESS (password from ${PASSWORD_ENV} or a prompt), else "
                        f"${KEY_ENV} (a 0x private key), else the only wallet under $SLUICE_HOME/wallets.", 78)
    lines = [*key, "", "exit codes:", "  0  the call succeeded"]
    for code, meaning in EXIT_CODES.values():
        lines += textwrap.wrap(meaning, 78, initial_indent=f"  {code}  ", subsequent_indent="     ")
    return "\n".join(lines)


def parser() -> argparse.ArgumentParser:
    import textwrap

    about = ("Make one signed chat call with a developer key: the completion streams to stdout, then its cost "
             "(compute tokens and base units), job id and the budget left go to stderr.")
    p = argparse.ArgumentParser(prog="sluice dev call", formatter_class=argparse.RawDescriptionHelpFormatter,
                                description=textwrap.fill(about, 78), epilog=_epilog())
    p.add_argument("prompt", help='the user message ("-" reads it from stdin)')
    p.add_argument("--model", required=True, help="the model to call (GET /v1/models lists them)")
    p.add_argument("--payer", default=None,
                   help="the account whose escrow pays: one that gave this key a budget (default: the key itself)")
    p.add_argument("--max-tokens", type=int, default=None, help="most completion tokens to generate")
    p.add_argument("--max-cost", default=DEFAULT_MAX_COST,
                   help=f"most compute tokens this call may cost, e.g. 0.01 (default {DEFAULT_MAX_COST})")
    p.add_argument("--no-stream", action="store_true", help="one plain answer instead of a stream")
    p.add_argument("--json", action="store_true", dest="as_json",
                   help="print one JSON object (text, cost and budget in base units) instead")
    p.add_argument("--api", default=None,
                   help=f"the redemption service (default: ${API_ENV}, else the running stack's service)")
    p.add_argument("--keystore", default=None, help="the developer's keystore file, or a wallet's address")
    return p


# -- where and who ------------------------------------------------------------------------------------------


def _home() -> Path:
    return Path(os.environ.get("SLUICE_HOME", ".sluice")).expanduser().resolve()


def api_url(given: str | None) -> str:
    """--api, else $SLUICE_API_URL, else the running stack's service, else the port of $SLUICE_API_PORT."""
    if given or os.environ.get(API_ENV):
        return str(given or os.environ[API_ENV]).rstrip("/")
    try:
        record = json.loads(StatePaths(_home()).stack_json.read_text())
        api = record["endpoints"]["api"]
        if isinstance(api, str):
            return api.rstrip("/")
    except (OSError, ValueError, KeyError, TypeError):
        pass
    return f"http://127.0.0.1:{os.environ.get('SLUICE_API_PORT', '8000')}"


def _wallets() -> list[Path]:
    folder = _home() / "wallets"
    return sorted(folder.glob("*.json")) if folder.is_dir() else []


def _keystore_file(given: str) -> Path:
    if is_address(given) and not Path(given).exists():
        path = _home() / "wallets" / f"{to_checksum_address(given)}.json"
        if not path.is_file():
            raise Failure("usage", f"no wallet for {to_checksum_address(given)} under {path.parent}",
                          "pass the keystore file itself with --keystore")
        return path
    path = Path(given).expanduser()
    if not path.is_file():
        raise Failure("usage", f"keystore {path} does not exist")
    return path


def _password(path: Path) -> str:
    if (secret := os.environ.get(PASSWORD_ENV)) is not None:
        return secret
    if sys.stdin is not None and sys.stdin.isatty():
        return getpass.getpass(f"Password for {path.name}: ", stream=sys.stderr)
    raise Failure("usage", f"the password for {path} is needed, and there is no terminal to ask at",
                  f"set {PASSWORD_ENV} to the keystore's password")


def _unlock(path: Path) -> bytes:
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise Failure("usage", f"{path} is not a readable JSON keystore ({exc.__class__.__name__})") from None
    if not isinstance(data, dict):
        raise Failure("usage", f"{path} is not an Ethereum JSON keystore")
    try:
        return decrypt_keystore(data, _password(path))
    except WrongPassword:
        raise Failure("usage", f"wrong password for keystore {path}",
                      f"give the password it was created with (${PASSWORD_ENV} or the prompt)") from None
    except KeystoreError as exc:
        raise Failure("usage", f"{path}: {exc}") from None


def developer_key(keystore: str | None) -> bytes:
    """--keystore, else $SLUICE_DEVELOPER_KEY, else the only wallet under the state dir."""
    if keystore is not None:
        return _unlock(_keystore_file(keystore))
    if raw := os.environ.get(KEY_ENV):
        try:
            return private_key_bytes(raw.strip())
        except ValueError:
            raise Failure("usage", f"${KEY_ENV} is not a private key (0x followed by 64 hex digits)") from None
    known = _wallets()
    if len(known) == 1:
        return _unlock(known[0])
    where = _home() / "wallets"
    found = f"{len(known)} wallets under {where}" if known else f"no developer key: no wallet under {where}"
    raise Failure("usage", found, f"pass --keystore PATH|ADDRESS, or set {KEY_ENV} to the developer's private key")


# -- the call -----------------------------------------------------------------------------------------------


@dataclass
class Outcome:
    """What a call produced and cost."""

    text: str = ""
    job_id: str | None = None
    cost: int | None = None
    usage: dict[str, Any] = field(default_factory=dict)
    finish_reason: str | None = None


def refusal(exc: SluiceError, who: Who) -> Failure:
    """A refused call in words: its status and code, the service's message, what to do, and its class."""
    status = exc.status_code
    kind = ("signature" if isinstance(exc, AuthenticationError) else
            "payment" if isinstance(exc, PaymentRequired) else
            "permission" if isinstance(exc, PermissionDenied) else
            "rate_limit" if isinstance(exc, RateLimited) else
            "unavailable" if status >= 500 else
            "request" if 400 <= status < 500 else "other")
    hint = who.hint(exc.error_code)
    if isinstance(exc, RateLimited):
        after = exc.retry_after
        hint = f"retry in {after:g} s (Retry-After)" if after is not None else "retry shortly"
    return Failure(kind, f"{status} {exc.error_code or 'error'}: {exc.message}", hint, exc.error_code)


def _events(lines: Iterator[str]) -> Iterator[dict[str, Any]]:
    for line in lines:
        if not line.startswith("data:"):
            continue
        data = line[5:].strip()
        if data == "[DONE]":
            return
        try:
            event = json.loads(data)
        except ValueError:
            raise Failure("other", f"the service sent a stream event that is not JSON: {data[:80]!r}") from None
        if isinstance(event, dict):
            yield event


def _stream(client: httpx.Client, url: str, body: dict[str, Any], echo: bool, who: Who) -> Outcome:
    outcome = Outcome()
    with client.stream("POST", url, json={**body, "stream": True}) as response:
        if response.status_code >= 400:
            response.read()
            raise refusal(error_from_response(response), who)
        for event in _events(response.iter_lines()):
            if isinstance(event.get("error"), dict):
                error = event["error"]
                code = str(error.get("code") or "error")
                if echo and outcome.text:
                    sys.stdout.write("\n")
                raise Failure(STREAM_ERROR_CLASSES.get(code, "other"),
                              f"the stream broke off: {code}: {error.get('message', '')}", who.hint(code), code)
            if isinstance(event.get("sluice"), dict):
                outcome.job_id = event["sluice"].get("job_id")
                outcome.cost = int(event["sluice"]["cost"])
            if isinstance(event.get("usage"), dict):
                outcome.usage = event["usage"]
            for choice in event.get("choices") or []:
                piece = (choice.get("delta") or {}).get("content") or ""
                outcome.finish_reason = choice.get("finish_reason") or outcome.finish_reason
                outcome.text += piece
                if echo and piece:
                    sys.stdout.write(piece)
                    sys.stdout.flush()
    return outcome


def _plain(client: httpx.Client, url: str, body: dict[str, Any], who: Who) -> Outcome:
    response = client.post(url, json=body)
    if response.status_code >= 400:
        raise refusal(error_from_response(response), who)
    try:
        answer = response.json()
        choice = answer["choices"][0]
        text = str(choice["message"].get("content") or "")
    except (ValueError, KeyError, IndexError, TypeError, AttributeError):
        raise Failure("other", f"the service answered {response.status_code} with no completion in it") from None
    cost = response.headers.get("Sluice-Cost")
    return Outcome(text, response.headers.get("Sluice-Job-Id"), None if cost is None else int(cost),
                   answer.get("usage") or {}, choice.get("finish_reason"))


def remaining(client: httpx.Client, api: str, auth: SluiceAuth) -> Budget:
    """The signed `GET /v1/budget` after the call: what the payer's escrow and this key's budget still cover."""
    reader = reader_auth(auth.private_key, domains=auth.domains)
    response = client.get(api + BUDGET_PATH, params={"payer": auth.payer, "spender": auth.address}, auth=reader)
    return Budget.from_json(raise_for_error(response).json())


def call(opts: argparse.Namespace) -> int:
    try:
        max_cost = parse_tokens(opts.max_cost)
    except ValueError as exc:
        raise Failure("usage", f"--max-cost: {exc}", "compute tokens, at most 18 decimal places "
                      "(examples: 1, 0.05)") from None
    if opts.payer is not None and not is_address(opts.payer):
        raise Failure("usage", f"--payer {opts.payer!r} is not an Ethereum address (0x followed by 40 hex digits)")
    if opts.max_tokens is not None and opts.max_tokens < 1:
        raise Failure("usage", "--max-tokens must be at least 1")
    prompt = sys.stdin.read() if opts.prompt == "-" else opts.prompt
    key = developer_key(opts.keystore)
    api = api_url(opts.api)
    auth = SluiceAuth(key, payer=opts.payer, max_cost=max_cost)
    body: dict[str, Any] = {"model": opts.model, "messages": [{"role": "user", "content": prompt}]}
    if opts.max_tokens is not None:
        body["max_tokens"] = opts.max_tokens
    url = api + "/v1/chat/completions"
    who = Who(api, auth.address, auth.payer)
    try:
        with httpx.Client(auth=auth, timeout=httpx.Timeout(30, read=330)) as client:
            if opts.no_stream:
                outcome = _plain(client, url, body, who)
            else:
                outcome = _stream(client, url, body, not opts.as_json, who)
            budget = remaining(client, api, auth)
    except SluiceError as exc:  # the discovery or the budget read
        raise refusal(exc, who) from None
    except httpx.HTTPError as exc:
        raise Failure("unavailable", f"no answer from the service at {api} ({exc.__class__.__name__}: {exc})",
                      "check --api (or start the stack with `sluice up --detach`)") from None
    report(opts, auth, outcome, budget)
    return 0


def report(opts: argparse.Namespace, auth: SluiceAuth, outcome: Outcome, budget: Budget) -> None:
    left = budget.escrow_available if budget.budget_available is None else budget.budget_available
    if opts.as_json:
        print(json.dumps({
            "model": opts.model, "payer": auth.payer, "spender": auth.address, "text": outcome.text,
            "finish_reason": outcome.finish_reason, "job_id": outcome.job_id, "cost": outcome.cost,
            "usage": outcome.usage, "escrow_available": budget.escrow_available,
            "budget_available": budget.budget_available}, indent=2))
        return
    if not opts.no_stream:
        sys.stdout.write("\n")
    else:
        sys.stdout.write(outcome.text + "\n")
    sys.stdout.flush()
    tokens = ""
    if "prompt_tokens" in outcome.usage:
        tokens = (f"; {outcome.usage['prompt_tokens']} prompt + {outcome.usage.get('completion_tokens', 0)} "
                  "completion model tokens")
    cost = "unknown" if outcome.cost is None else f"{format_tokens(outcome.cost)} compute tokens " \
                                                  f"({outcome.cost} base units)"
    what = f"in the escrow of {auth.payer}" if budget.budget_available is None else \
        f"of the budget from {auth.payer}"
    err = sys.stderr
    err.write(f"cost    {cost}{tokens}\n")
    err.write(f"job     {outcome.job_id or 'unknown'}\n")
    err.write(f"left    {format_tokens(left)} compute tokens ({left} base units) {what}\n")
    err.flush()


def fail(failure: Failure, as_json: bool) -> NoReturn:
    """The message and hint on stderr (and with --json the same as an object on stdout); exit by its class."""
    if as_json:
        print(json.dumps({"error": {"code": failure.code, "message": failure.message, "hint": failure.hint,
                                    "exit_code": failure.exit_code}}, indent=2))
    sys.stderr.write(f"error: {failure.message}\n")
    if failure.hint:
        sys.stderr.write(f"hint: {failure.hint}\n")
    sys.exit(failure.exit_code)


def main(argv: Sequence[str] | None = None) -> int:
    """`sluice dev call ARGS`: returns the exit code (EXIT_CODES)."""
    opts = parser().parse_args(argv)
    try:
        return call(opts)
    except Failure as failure:
        fail(failure, opts.as_json)
    except KeyboardInterrupt:
        sys.stderr.write("\ninterrupted\n")
        return 130


if __name__ == "__main__":
    sys.exit(main())
