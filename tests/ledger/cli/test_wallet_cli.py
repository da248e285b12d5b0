"""`sluice wallet`, driven through the real CLI.

The wallet commands run against the session Anvil and deployment (reverted after each test) with
the deployment record in a temporary state dir (`home`, tests/support/cli.py); the usage commands
read a fresh PostgreSQL database, directly or through the real redemption service.
"""

from __future__ import annotations

import json
import stat
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any
from uuid import uuid4

import httpx
import psycopg
import pytest
from eth_account import Account
from eth_account.signers.local import LocalAccount
from hexbytes import HexBytes

from ledger.chain.client import Ledger
from ledger.cli import keystores, wallet
from ledger.cli.common import PASSWORD_ENV
from ledger.polling import poll_until
from ledger.stack.probes import free_port
from ledger.units import ONE_TOKEN
from redemption.sdk import reader_auth
from tests.support.cli import PASSWORD, cli, ok, refused

if TYPE_CHECKING:
    from tests.support.ledger import Actors

DOLLAR = 10**6  # the test stablecoin has 6 decimals
CENT_PER_TOKEN = 10_000  # the first sale tier: 0.01 test dollars per compute token


# -- harness ---------------------------------------------------------------------------------
def keep(state: Path, account: LocalAccount) -> Path:
    """Put `account` in the state dir's wallets with a cheap scrypt, so tests decrypt fast."""
    path = state / "wallets" / f"{account.address}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(Account.encrypt(account.key, PASSWORD, iterations=2**10)))
    return path


def enterprise_with(ledger: Ledger, actors: Actors, state: Path, *, tokens: int = 0, dollars: int = 0,
                    allowlist: bool = True) -> LocalAccount:
    """The enterprise's key kept as the state dir's only wallet, funded on chain."""
    account = actors.enterprise
    if allowlist:
        ledger.set_allowlisted(actors.operator, account.address, True)
    if tokens:
        ledger.mint(actors.operator, account.address, tokens * ONE_TOKEN)
    if dollars:
        ledger.mint_payment(actors.operator, account.address, dollars * DOLLAR)
    keep(state, account)
    return account


# -- keystores -------------------------------------------------------------------------------
def test_new_prompts_twice_for_the_password_and_never_overwrites(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(PASSWORD_ENV)
    monkeypatch.setattr(keystores, "SCRYPT_N", 2**18)
    out = home / "mine.json"
    created = ok("wallet", "new", "--out", out, input="s3cret\ns3cret\n")
    assert created["action"] == "created" and created["keystore"] == str(out)
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    keystore = json.loads(out.read_text())
    assert keystore["crypto"]["kdf"] == "scrypt" and keystore["crypto"]["kdfparams"]["n"] == 2**18
    key = Account.decrypt(keystore, "s3cret")
    assert Account.from_key(key).address == created["address"]

    before = out.read_bytes()
    assert "already exists; a keystore is never overwritten" in refused("wallet", "new", "--out", out)
    assert out.read_bytes() == before


def test_new_takes_the_password_from_the_environment_and_files_the_wallet_by_address(home: Path) -> None:
    created = ok("wallet", "new")
    path = home / "wallets" / f"{created['address']}.json"
    assert created["keystore"] == str(path) and path.is_file()
    assert ok("wallet", "address") == {"address": created["address"], "keystore": str(path)}
    assert ok("wallet", "list") == {"wallets": [{"address": created["address"], "keystore": str(path)}]}


def test_import_a_private_key_from_stdin_or_a_hidden_prompt(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first, second = Account.create(), Account.create()
    imported = ok("wallet", "import", "--stdin", input=first.key.hex() + "\n")
    assert imported["address"] == first.address
    assert imported["keystore"] == str(home / "wallets" / f"{first.address}.json")

    monkeypatch.delenv(PASSWORD_ENV)
    prompted = ok("wallet", "import", input=f"0x{second.key.hex()}\npw\npw\n")
    assert prompted["address"] == second.address

    assert "not a private key" in refused("wallet", "import", "--stdin", input="0x1234\n")
    # The same key again would overwrite its keystore: refused.
    monkeypatch.setenv(PASSWORD_ENV, PASSWORD)
    assert "already exists" in refused("wallet", "import", "--stdin", input=first.key.hex() + "\n")


def test_import_an_existing_keystore_checks_its_password(home: Path, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    account = Account.create()
    source = tmp_path / "exported.json"
    source.write_text(json.dumps(Account.encrypt(account.key, "theirs", iterations=2**10)))

    assert "wrong password" in refused("wallet", "import", source)
    assert not (home / "wallets").exists()

    monkeypatch.setenv(PASSWORD_ENV, "theirs")
    imported = ok("wallet", "import", source)
    assert imported["address"] == account.address
    assert json.loads(Path(imported["keystore"]).read_text()) == json.loads(source.read_text())


def test_the_default_keystore_is_the_only_wallet_there_is(home: Path) -> None:
    missing = refused("wallet", "address")
    assert "no wallet under" in missing and "sluice wallet new" in missing

    a, b = Account.create(), Account.create()
    keep(home, a)
    assert ok("wallet", "address")["address"] == a.address
    keep(home, b)
    several = refused("wallet", "address")
    assert "2 wallets" in several and "--keystore" in several and a.address in several and b.address in several
    assert ok("wallet", "address", "--keystore", b.address)["address"] == b.address
    assert ok("wallet", "address", "--keystore", home / "wallets" / f"{a.address}.json")["address"] == a.address

    unknown = refused("wallet", "address", "--keystore", home / "nope.json")
    assert "does not exist" in unknown and a.address in unknown
    assert "no wallet for" in refused("wallet", "address", "--keystore", Account.create().address)


def test_wrong_password_is_refused_before_anything_is_sent(home: Path, ledger: Ledger, actors: Actors,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    owner = enterprise_with(ledger, actors, home, tokens=10)
    monkeypatch.setenv(PASSWORD_ENV, "not it")
    message = refused("wallet", "approve", actors.developer.address, "5")
    assert "wrong password" in message and PASSWORD_ENV in message

    monkeypatch.delenv(PASSWORD_ENV)
    assert "wrong password" in refused("wallet", "approve", actors.developer.address, "5", input="guess\n")
    assert ledger.allowance(owner.address, actors.developer.address) == 0


# -- reads -----------------------------------------------------------------------------------
def test_balance_shows_compute_and_payment_tokens_and_developer_budgets(home: Path, ledger: Ledger,
                                                                       actors: Actors) -> None:
    owner = enterprise_with(ledger, actors, home, tokens=1_000, dollars=250)
    ledger.approve(owner, actors.developer.address, 300 * ONE_TOKEN)
    ledger.approve(owner, actors.other.address, 5 * ONE_TOKEN)
    ledger.approve(owner, actors.other.address, 0)  # revoked: not listed

    shown = ok("wallet", "balance")
    assert shown == {
        "address": owner.address, "allowlisted": True, "compute_tokens": 1_000 * ONE_TOKEN,
        "payment_token": {"address": ledger.payment_token.address, "symbol": "tUSD", "decimals": 6,
                          "balance": 250 * DOLLAR},
        "allowances": [{"developer": actors.developer.address, "allowance": 300 * ONE_TOKEN}],
    }
    text = cli("wallet", "balance").stdout
    assert "compute tokens  1000" in text and "tUSD" in text and "250" in text
    assert f"{actors.developer.address}  300" in text

    stranger = ok("wallet", "balance", actors.other.address)
    assert (stranger["address"], stranger["allowlisted"], stranger["compute_tokens"]) == (actors.other.address,
                                                                                          False, 0)


def test_quote_lists_the_tiers_and_marks_the_one_that_applies(home: Path) -> None:
    quoted = ok("wallet", "quote", "150000")
    assert quoted["amount"] == 150_000 * ONE_TOKEN
    assert (quoted["cost"], quoted["tier"]) == (150_000 * 9_500, 1)  # 1425 test dollars at 0.0095 per token
    assert quoted["tiers"] == [
        {"tier": 0, "min_amount": 0, "price": 10_000, "applies": False},
        {"tier": 1, "min_amount": 100_000 * ONE_TOKEN, "price": 9_500, "applies": True},
        {"tier": 2, "min_amount": 1_000_000 * ONE_TOKEN, "price": 9_000, "applies": False},
    ]
    assert quoted["payment_token"]["symbol"] == "tUSD"
    text = cli("wallet", "quote", "150000").stdout
    assert "150000 compute tokens cost 1425 tUSD" in text and "→" in text

    too_fine = refused("wallet", "quote", "1.0000000000000000001")
    assert "more than 18 decimal places" in too_fine and "at most 18 decimal places" in too_fine


# -- buying ----------------------------------------------------------------------------------
def test_buy_with_a_permit_in_one_transaction(home: Path, ledger: Ledger, actors: Actors) -> None:
    owner = enterprise_with(ledger, actors, home, dollars=100)
    bought = ok("wallet", "buy", "1000", "--yes")
    assert {k: bought[k] for k in ("action", "buyer", "amount", "cost", "tier", "max_cost", "method",
                                   "approve_tx_hash", "balance")} == {
        "action": "bought", "buyer": owner.address, "amount": 1_000 * ONE_TOKEN, "cost": 10 * DOLLAR, "tier": 0,
        "max_cost": 10 * DOLLAR, "method": "permit", "approve_tx_hash": None, "balance": 1_000 * ONE_TOKEN}
    assert bought["tx_hash"].startswith("0x") and bought["block"] > 0
    assert ledger.balance_of(owner.address) == 1_000 * ONE_TOKEN
    assert ledger.payment_balance(owner.address) == 90 * DOLLAR
    assert ledger.payment_token.functions.nonces(owner.address).call() == 1  # the permit was used
    assert ledger.payment_token.functions.allowance(owner.address, ledger.sale.address).call() == 0


def test_buy_with_approve_then_buy(home: Path, ledger: Ledger, actors: Actors) -> None:
    owner = enterprise_with(ledger, actors, home, dollars=100)
    bought = ok("wallet", "buy", "1000", "--yes", "--no-permit", "--max-cost", "12.5")
    assert (bought["method"], bought["cost"], bought["max_cost"]) == ("approve", 10 * DOLLAR, 12_500_000)
    assert bought["approve_tx_hash"].startswith("0x") and bought["approve_tx_hash"] != bought["tx_hash"]
    assert ledger.balance_of(owner.address) == 1_000 * ONE_TOKEN
    assert ledger.payment_balance(owner.address) == 90 * DOLLAR
    assert ledger.payment_token.functions.nonces(owner.address).call() == 0  # no permit
    # The sale was approved for the limit and took the quote: the rest of the approval stays.
    assert ledger.payment_token.functions.allowance(owner.address, ledger.sale.address).call() == 2_500_000


def test_permit_support_is_detected_and_its_absence_falls_back_to_approve(
        home: Path, ledger: Ledger, actors: Actors, monkeypatch: pytest.MonkeyPatch) -> None:
    assert wallet.supports_permit(ledger.payment_token, actors.enterprise.address)
    # The sale contract has neither `nonces` nor `eip712Domain`: a payment token like that gets approve.
    no_permit = ledger.w3.eth.contract(address=ledger.sale.address, abi=ledger.payment_token.abi)
    assert not wallet.supports_permit(no_permit, actors.enterprise.address)

    owner = enterprise_with(ledger, actors, home, dollars=100)
    monkeypatch.setattr(wallet, "supports_permit", lambda token, owner: False)
    bought = ok("wallet", "buy", "500", "--yes")
    assert (bought["method"], bought["cost"]) == ("approve", 5 * DOLLAR)
    assert ledger.balance_of(owner.address) == 500 * ONE_TOKEN


def test_buy_shows_the_quote_and_asks_first(home: Path, ledger: Ledger, actors: Actors) -> None:
    owner = enterprise_with(ledger, actors, home, dollars=100)
    declined = cli("wallet", "buy", "1000", input="n\n")
    assert declined.exit_code == 1
    assert "Buy 1000 compute tokens for 10 tUSD (tier 0" in declined.stderr and "Cancelled" in declined.stderr
    assert ledger.balance_of(owner.address) == 0

    accepted = cli("wallet", "buy", "1000", input="y\n")
    assert accepted.exit_code == 0, accepted.output
    assert "bought 1000 compute tokens for 10 tUSD (tier 0, permit)" in accepted.stdout
    assert ledger.balance_of(owner.address) == 1_000 * ONE_TOKEN


def test_buy_says_how_much_payment_token_is_missing(home: Path, ledger: Ledger, actors: Actors) -> None:
    owner = enterprise_with(ledger, actors, home, dollars=4)
    message = refused("wallet", "buy", "1000", "--yes")
    assert f"{owner.address} holds 4 tUSD; 1000 compute tokens cost 10 tUSD: 6 tUSD short" in message
    assert "fund the wallet with at least 6 tUSD more" in message
    assert ledger.balance_of(owner.address) == 0 and ledger.payment_balance(owner.address) == 4 * DOLLAR


def test_buy_refuses_a_quote_above_max_cost(home: Path, ledger: Ledger, actors: Actors) -> None:
    enterprise_with(ledger, actors, home, dollars=100)
    message = refused("wallet", "buy", "1000", "--yes", "--max-cost", "9.99")
    assert "above --max-cost 9.99 tUSD" in message and "raise --max-cost" in message
    assert "more than 6 decimal places" in refused("wallet", "buy", "1000", "--yes", "--max-cost", "10.0000001")


def test_not_allowlisted_says_to_ask_the_operator(home: Path, ledger: Ledger, actors: Actors) -> None:
    owner = enterprise_with(ledger, actors, home, dollars=100, allowlist=False)
    result = cli("wallet", "buy", "1000", "--yes")
    assert result.exit_code == 1
    assert f"{owner.address} is not allowlisted" in result.stderr
    assert f"sluice admin allowlist add {owner.address}" in " ".join(result.stderr.split())

    ledger.set_allowlisted(actors.operator, owner.address, True)
    ledger.mint(actors.operator, owner.address, 10 * ONE_TOKEN)
    message = refused("wallet", "transfer", actors.other.address, "1")
    assert f"the recipient {actors.other.address} is not allowlisted" in message
    assert f"sluice admin allowlist add {actors.other.address}" in message


# -- budgets and transfers -------------------------------------------------------------------
def test_approve_and_revoke_a_developer_budget(home: Path, ledger: Ledger, actors: Actors) -> None:
    owner = enterprise_with(ledger, actors, home, tokens=1_000)
    dev = actors.developer.address
    approved = ok("wallet", "approve", dev, "250")
    assert {k: approved[k] for k in ("action", "owner", "developer", "budget", "previous")} == {
        "action": "approved", "owner": owner.address, "developer": dev, "budget": 250 * ONE_TOKEN, "previous": 0}
    assert ledger.allowance(owner.address, dev) == 250 * ONE_TOKEN

    lowered = ok("wallet", "approve", dev, "12.5")
    assert (lowered["budget"], lowered["previous"]) == (12 * ONE_TOKEN + ONE_TOKEN // 2, 250 * ONE_TOKEN)
    assert ledger.allowance(owner.address, dev) == 12 * ONE_TOKEN + ONE_TOKEN // 2

    revoked = ok("wallet", "revoke", dev)
    assert (revoked["action"], revoked["previous"]) == ("revoked", 12 * ONE_TOKEN + ONE_TOKEN // 2)
    assert ledger.allowance(owner.address, dev) == 0
    again = ok("wallet", "revoke", dev)
    assert (again["action"], again["tx_hash"]) == ("unchanged", None)

    assert "at most 18 decimal places" in refused("wallet", "approve", dev, "0.0000000000000000001")
    assert "the wallet itself" in refused("wallet", "approve", owner.address, "1")
    assert ledger.balance_of(owner.address) == 1_000 * ONE_TOKEN  # approvals never move tokens


def test_transfer_moves_exact_amounts_and_refuses_more_than_held(home: Path, ledger: Ledger, actors: Actors) -> None:
    owner = enterprise_with(ledger, actors, home, tokens=1_000)
    ledger.set_allowlisted(actors.operator, actors.other.address, True)
    sent = ok("wallet", "transfer", actors.other.address, "12.5")
    assert {k: sent[k] for k in ("action", "from", "to", "amount", "balance")} == {
        "action": "transferred", "from": owner.address, "to": actors.other.address,
        "amount": 12 * ONE_TOKEN + ONE_TOKEN // 2, "balance": 987 * ONE_TOKEN + ONE_TOKEN // 2}
    assert ledger.balance_of(actors.other.address) == 12 * ONE_TOKEN + ONE_TOKEN // 2
    assert ledger.balance_of(owner.address) == 987 * ONE_TOKEN + ONE_TOKEN // 2

    short = refused("wallet", "transfer", actors.other.address, "1000")
    assert "holds 987.5 compute tokens; sending 1000 is 12.5 short" in short
    assert ledger.balance_of(owner.address) == 987 * ONE_TOKEN + ONE_TOKEN // 2


class RecordedStatus:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def update(self, text: str) -> None:
        self.lines.append(text)


def test_waiting_for_confirmations_shows_the_block_count(home: Path, ledger: Ledger, actors: Actors) -> None:
    owner = enterprise_with(ledger, actors, home)
    ledger.confirmations = 2
    fn = ledger.token.functions.approve(actors.developer.address, 1)
    tx_hash, _nonce = ledger.sender(owner).send({"to": fn.address, "data": fn._encode_transaction_data()})
    status = RecordedStatus()

    def mine_when_shown() -> None:  # one block each time the watcher has shown the previous count
        for seen in ("0/2", "1/2"):
            poll_until(lambda s=seen: any(s in line for line in status.lines), 10, f"progress {seen}")  # type: ignore[misc]
            ledger.w3.provider.make_request("evm_mine", [])  # type: ignore[arg-type]

    miner = threading.Thread(target=mine_when_shown)
    miner.start()
    wallet._watch(ledger, tx_hash, status, "approving")  # type: ignore[arg-type]
    miner.join(10)
    mined = ledger.w3.eth.get_transaction_receipt(HexBytes(tx_hash))["blockNumber"]
    assert f"approving: mined in block {mined}, confirmations 0/2" in status.lines
    assert f"approving: mined in block {mined}, confirmations 1/2" in status.lines
    assert ledger.w3.eth.block_number == mined + 2


def test_commands_wait_for_the_confirmations_asked_for(home: Path, ledger: Ledger, actors: Actors) -> None:
    owner = enterprise_with(ledger, actors, home)
    dev = actors.developer.address

    def mine_once_approved() -> None:
        poll_until(lambda: ledger.allowance(owner.address, dev) > 0, 20, "the approval mined")
        ledger.w3.provider.make_request("evm_mine", [])  # type: ignore[arg-type]

    miner = threading.Thread(target=mine_once_approved)
    miner.start()
    approved = ok("wallet", "approve", dev, "1", "--confirmations", "1")
    miner.join(10)
    assert ledger.w3.eth.block_number >= approved["block"] + 1


# -- usage -----------------------------------------------------------------------------------
def record_usage(db: str, payer: str, spender: str, cost: int, status: str) -> None:
    with psycopg.connect(db, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO usage_records (job_id, payer, spender, model, prompt_tokens, completion_tokens, cost,"
            " max_cost, node, body_hash, nonce, deadline, request_signature, request_digest, receipt_signature,"
            " started_at, status) VALUES (%s, %s, %s, 'm', 10, 20, %s, %s, %s, %s, 1, 0, %s, %s, %s, now(), %s)",
            (uuid4().bytes * 2, bytes.fromhex(payer[2:]), bytes.fromhex(spender[2:]), cost, cost, b"\x01" * 20,
             b"\x02" * 32, b"\x03" * 65, b"\x04" * 32, b"\x05" * 65, status),
        )


def expected_usage(first: str, second: str) -> list[dict[str, Any]]:
    return [
        {"spender": first, "calls": 3, "prompt_tokens": 30, "completion_tokens": 60, "metered": 22 * ONE_TOKEN,
         "settled": 10 * ONE_TOKEN, "unsettled": 12 * ONE_TOKEN},
        {"spender": second, "calls": 1, "prompt_tokens": 10, "completion_tokens": 20, "metered": 3 * ONE_TOKEN,
         "settled": 3 * ONE_TOKEN, "unsettled": 0},
    ]


def seed_usage(db: str, payer: str, first: str, second: str) -> None:
    for cost, status in ((5, "metered"), (7, "batched"), (10, "settled")):
        record_usage(db, payer, first, cost * ONE_TOKEN, status)
    record_usage(db, payer, second, 3 * ONE_TOKEN, "released")
    record_usage(db, first, first, ONE_TOKEN, "metered")  # another payer's: not counted


def without_times(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    assert all(isinstance(r.pop("last_call"), str) for r in rows)
    return rows


def test_usage_per_developer_key_from_the_database(home: Path, fresh_db: str, actors: Actors,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    keep(home, actors.enterprise)
    payer, first, second = actors.enterprise.address, actors.developer.address, actors.other.address
    seed_usage(fresh_db, payer, first, second)
    monkeypatch.setenv("DATABASE_URL", fresh_db)
    shown = ok("wallet", "usage")
    assert (shown["payer"], shown["source"]) == (payer, "database")
    assert without_times(shown["spenders"]) == expected_usage(first, second)
    text = cli("wallet", "usage").stdout
    assert "total 25, of which 12 not settled yet" in text and first in text


def test_usage_per_developer_key_from_the_service(home: Path, fresh_db: str, service: str, actors: Actors) -> None:
    keep(home, actors.enterprise)
    payer, first, second = actors.enterprise.address, actors.developer.address, actors.other.address
    seed_usage(fresh_db, payer, first, second)
    shown = ok("wallet", "usage", payer, "--api", service)
    assert (shown["payer"], shown["source"]) == (payer, "api")
    assert without_times(shown["spenders"]) == expected_usage(first, second)

    raw = httpx.get(f"{service}/v1/usage", params={"payer": payer.lower()}, auth=reader_auth(actors.enterprise))
    assert raw.json()["spenders"][0]["metered"] == str(22 * ONE_TOKEN)  # decimal strings on the wire
    nosy = httpx.get(f"{service}/v1/usage", params={"payer": payer}, auth=reader_auth(actors.developer))
    assert nosy.status_code == 403 and nosy.json()["error"]["code"] == "not_account_holder"
    unsigned = httpx.get(f"{service}/v1/usage", params={"payer": payer})
    assert unsigned.status_code == 401 and unsigned.json()["error"]["code"] == "missing_signature"
    bad = httpx.get(f"{service}/v1/usage", params={"payer": "0x12"})
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "invalid_request"
    assert "does not answer" in refused("wallet", "usage", payer, "--api", f"http://127.0.0.1:{free_port()}")
