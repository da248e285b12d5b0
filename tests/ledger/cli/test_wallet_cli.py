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
from ledger.config import Settings
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
    message = refused("wallet", "budget", "set", actors.developer.address, "5")
    assert "wrong password" in message and PASSWORD_ENV in message

    monkeypatch.delenv(PASSWORD_ENV)
    assert "wrong password" in refused("wallet", "budget", "set", actors.developer.address, "5", input="guess\n")
    assert ledger.budget_of(owner.address, actors.developer.address).remaining == 0


# -- reads -----------------------------------------------------------------------------------
def test_balance_shows_wallet_escrow_pending_withdrawal_payment_tokens_and_budgets(home: Path, ledger: Ledger,
                                                                                   actors: Actors) -> None:
    owner = enterprise_with(ledger, actors, home, tokens=1_000, dollars=250)
    ledger.deposit(owner, 400 * ONE_TOKEN)
    ledger.request_withdrawal(owner, 40 * ONE_TOKEN)
    unlocks_at = ledger.pending_withdrawal_of(owner.address).unlocks_at
    ledger.set_budget(owner, actors.developer.address, 300 * ONE_TOKEN)
    ledger.set_budget(owner, actors.other.address, 5 * ONE_TOKEN)
    ledger.set_budget(owner, actors.other.address, 0)  # a cut to zero: still listed until it applies
    cut_at = ledger.budget_of(owner.address, actors.other.address).effective_at

    shown = ok("wallet", "balance")
    assert shown == {
        "address": owner.address, "allowlisted": True, "compute_tokens": 600 * ONE_TOKEN, "escrow": 400 * ONE_TOKEN,
        "pending_withdrawal": 40 * ONE_TOKEN, "unlocks_at": unlocks_at, "unlock_period": ledger.unlock_period(),
        "payment_token": {"address": ledger.payment_token.address, "symbol": "tUSD", "decimals": 6,
                          "balance": 250 * DOLLAR},
        "budgets": [{"developer": actors.developer.address, "remaining": 300 * ONE_TOKEN,
                     "effective": 300 * ONE_TOKEN, "effective_at": None},
                    {"developer": actors.other.address, "remaining": 5 * ONE_TOKEN, "effective": 0,
                     "effective_at": cut_at}],
    }
    text = cli("wallet", "balance").stdout
    assert "compute tokens      600" in text and "escrow              400" in text and "tUSD" in text
    assert "pending withdrawal  40 (unlocks " in text
    assert f"{actors.developer.address}  300" in text and f"{actors.other.address}  5  (cut to 0 at" in text

    stranger = ok("wallet", "balance", actors.other.address)
    assert (stranger["address"], stranger["allowlisted"], stranger["compute_tokens"], stranger["escrow"]) == (
        actors.other.address, False, 0, 0)


def test_buy_goes_into_escrow_by_default(home: Path, ledger: Ledger, actors: Actors) -> None:
    owner = enterprise_with(ledger, actors, home, dollars=100)
    bought = ok("wallet", "buy", "1000", "--yes")
    assert (bought["into"], bought["escrow"], bought["balance"]) == ("escrow", 1_000 * ONE_TOKEN, 0)
    assert ledger.escrow_of(owner.address) == 1_000 * ONE_TOKEN and ledger.balance_of(owner.address) == 0
    assert "--to-wallet" in cli("wallet", "buy", "--help").stdout


def test_deposit_withdraw_request_status_and_complete(home: Path, ledger: Ledger, actors: Actors) -> None:
    owner = enterprise_with(ledger, actors, home, tokens=100)
    deposited = ok("wallet", "deposit", "60")
    assert (deposited["action"], deposited["escrow"]) == ("deposited", 60 * ONE_TOKEN)
    assert deposited["tx_hash"].startswith("0x")
    assert "is 40 short" in refused("wallet", "deposit", "80")
    requested = ok("wallet", "withdraw", "request", "25")
    assert (requested["amount"], requested["tx_hash"][:2]) == (25 * ONE_TOKEN, "0x")
    status = ok("wallet", "withdraw", "status")
    assert (status["escrow"], status["pending_withdrawal"], status["unlocked"]) == (60 * ONE_TOKEN, 25 * ONE_TOKEN,
                                                                                    False)
    assert "unlocks at" in refused("wallet", "withdraw", "complete")
    ledger.w3.provider.make_request("evm_increaseTime", [ledger.unlock_period() + 1])  # type: ignore[arg-type]
    ledger.w3.provider.make_request("evm_mine", [])  # type: ignore[arg-type]
    done = ok("wallet", "withdraw", "complete")
    assert (done["amount"], done["escrow"], done["wallet"]) == (25 * ONE_TOKEN, 35 * ONE_TOKEN, 65 * ONE_TOKEN)
    assert "no withdrawal pending" in refused("wallet", "withdraw", "complete")
    assert ledger.balance_of(owner.address) == 65 * ONE_TOKEN


def test_permit_support_is_detected_and_its_absence_falls_back_to_approve(
        home: Path, ledger: Ledger, actors: Actors, monkeypatch: pytest.MonkeyPatch) -> None:
    assert wallet.supports_permit(ledger.payment_token, actors.enterprise.address)
    # The sale contract has neither `nonces` nor `eip712Domain`: a payment token like that gets approve.
    no_permit = ledger.w3.eth.contract(address=ledger.sale.address, abi=ledger.payment_token.abi)
    assert not wallet.supports_permit(no_permit, actors.enterprise.address)

    owner = enterprise_with(ledger, actors, home, dollars=100)
    monkeypatch.setattr(wallet, "supports_permit", lambda token, owner: False)
    bought = ok("wallet", "buy", "500", "--yes", "--to-wallet")
    assert (bought["method"], bought["cost"]) == ("approve", 5 * DOLLAR)
    assert ledger.balance_of(owner.address) == 500 * ONE_TOKEN


def test_buy_shows_the_quote_and_asks_first(home: Path, ledger: Ledger, actors: Actors) -> None:
    owner = enterprise_with(ledger, actors, home, dollars=100)
    declined = cli("wallet", "buy", "1000", "--to-wallet", input="n\n")
    assert declined.exit_code == 1
    assert "Buy 1000 compute tokens for 10 tUSD (tier 0" in declined.stderr and "Cancelled" in declined.stderr
    assert ledger.balance_of(owner.address) == 0

    accepted = cli("wallet", "buy", "1000", "--to-wallet", input="y\n")
    assert accepted.exit_code == 0, accepted.output
    assert "bought 1000 compute tokens for 10 tUSD (tier 0, permit) into the wallet" in accepted.stdout
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
def test_budget_set_cut_and_list(home: Path, ledger: Ledger, actors: Actors) -> None:
    owner = enterprise_with(ledger, actors, home, tokens=1_000)
    dev = actors.developer.address
    set_ = ok("wallet", "budget", "set", dev, "250")
    assert {k: set_[k] for k in ("action", "payer", "spender", "amount", "remaining", "effective_at")} == {
        "action": "budget_set", "payer": owner.address, "spender": dev, "amount": 250 * ONE_TOKEN,
        "remaining": 250 * ONE_TOKEN, "effective_at": None}
    assert set_["tx_hash"].startswith("0x")

    cut = ok("wallet", "budget", "cut", dev, "12.5")
    assert (cut["action"], cut["remaining"], cut["scheduled"]) == ("budget_cut", 250 * ONE_TOKEN,
                                                                   12 * ONE_TOKEN + ONE_TOKEN // 2)
    assert cut["effective_at"] == ledger.budget_of(owner.address, dev).effective_at > 0
    listed = ok("wallet", "budget", "list")
    assert listed["budgets"] == [{"spender": dev, "remaining": 250 * ONE_TOKEN,
                                  "effective": 12 * ONE_TOKEN + ONE_TOKEN // 2,
                                  "scheduled": 12 * ONE_TOKEN + ONE_TOKEN // 2, "effective_at": cut["effective_at"]}]
    assert "a cut must be lower" in refused("wallet", "budget", "cut", dev, "20")

    assert "at most 18 decimal places" in refused("wallet", "budget", "set", dev, "0.0000000000000000001")
    assert "the wallet itself" in refused("wallet", "budget", "set", owner.address, "1")
    assert ledger.balance_of(owner.address) == 1_000 * ONE_TOKEN  # budgets never move tokens


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
    mines_itself = Settings().block_time > 0  # SLUICE_BLOCK_TIME: the chain makes its blocks on its own

    def mine_when_shown() -> None:  # one block each time the watcher has shown the previous count
        for seen in ("0/2", "1/2"):
            poll_until(lambda s=seen: any(s in line for line in status.lines), 10, f"progress {seen}")  # type: ignore[misc]
            if not mines_itself:
                ledger.w3.provider.make_request("evm_mine", [])  # type: ignore[arg-type]

    miner = threading.Thread(target=mine_when_shown)
    miner.start()
    wallet._watch(ledger, tx_hash, status, "approving")  # type: ignore[arg-type]
    head = ledger.w3.eth.block_number
    miner.join(10)
    mined = ledger.w3.eth.get_transaction_receipt(HexBytes(tx_hash))["blockNumber"]
    assert f"approving: mined in block {mined}, confirmations 0/2" in status.lines
    assert f"approving: mined in block {mined}, confirmations 1/2" in status.lines
    if mines_itself:  # returned at the second block on top, not before (the next block may land meanwhile)
        assert mined + 2 <= head <= mined + 3
    else:
        assert head == mined + 2


def test_commands_wait_for_the_confirmations_asked_for(home: Path, ledger: Ledger, actors: Actors) -> None:
    owner = enterprise_with(ledger, actors, home)
    dev = actors.developer.address

    ledger.set_allowlisted(actors.operator, dev, True)
    ledger.mint(actors.operator, owner.address, ONE_TOKEN)

    def mine_once_sent() -> None:
        poll_until(lambda: ledger.balance_of(dev) > 0, 20, "the transfer mined")
        ledger.w3.provider.make_request("evm_mine", [])  # type: ignore[arg-type]

    miner = threading.Thread(target=mine_once_sent)
    miner.start()
    sent = ok("wallet", "transfer", dev, "1", "--confirmations", "1")
    miner.join(10)
    assert ledger.w3.eth.block_number >= sent["block"] + 1


# -- usage -----------------------------------------------------------------------------------
def record_usage(db: str, payer: str, spender: str, cost: int, status: str, model: str = "m") -> None:
    with psycopg.connect(db, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO usage_records (job_id, payer, spender, model, prompt_tokens, completion_tokens, cost,"
            " max_cost, node, body_hash, nonce, deadline, request_signature, request_digest, receipt_signature,"
            " started_at, status) VALUES (%s, %s, %s, %s, 10, 20, %s, %s, %s, %s, 1, 0, %s, %s, %s, now(), %s)",
            (uuid4().bytes * 2, bytes.fromhex(payer[2:]), bytes.fromhex(spender[2:]), model, cost, cost, b"\x01" * 20,
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
    assert max(len(line) for line in text.splitlines()) <= 80  # the test terminal's width (COLUMNS unset)
    csv_rows = [line.split(",") for line in cli("wallet", "usage", "--csv").stdout.splitlines()]
    assert csv_rows[0] == ["spender", "calls", "prompt_tokens", "completion_tokens", "metered", "settled",
                           "unsettled", "last_call"]
    assert [row[:7] for row in csv_rows[1:]] == [
        [first, "3", "30", "60", str(22 * ONE_TOKEN), str(10 * ONE_TOKEN), str(12 * ONE_TOKEN)],
        [second, "1", "10", "20", str(3 * ONE_TOKEN), str(3 * ONE_TOKEN), "0"]]


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


def test_usage_per_model_and_day_from_the_service(fresh_db: str, service: str, actors: Actors) -> None:
    payer, first, second = actors.enterprise.address, actors.developer.address, actors.other.address
    seed_usage(fresh_db, payer, first, second)
    record_usage(fresh_db, payer, first, 4 * ONE_TOKEN, "metered", model="big")
    record_usage(fresh_db, payer, first, 2 * ONE_TOKEN, "metered", model="big")
    shown = httpx.get(f"{service}/v1/usage", params={"payer": payer}, auth=reader_auth(actors.enterprise)).json()
    assert shown["models"] == [
        {"spender": first, "model": "m", "calls": 3, "prompt_tokens": 30, "completion_tokens": 60,
         "metered": str(22 * ONE_TOKEN)},
        {"spender": first, "model": "big", "calls": 2, "prompt_tokens": 20, "completion_tokens": 40,
         "metered": str(6 * ONE_TOKEN)},
        {"spender": second, "model": "m", "calls": 1, "prompt_tokens": 10, "completion_tokens": 20,
         "metered": str(3 * ONE_TOKEN)},
    ]
    today = psycopg.connect(fresh_db).execute(
        "SELECT to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM-DD')").fetchone()[0]  # type: ignore[index]
    assert shown["days"] == [
        {"day": today, "spender": s, "model": m, "calls": n, "metered": str(c * ONE_TOKEN)}
        for s, m, n, c in sorted([(first, "big", 2, 6), (first, "m", 3, 22), (second, "m", 1, 3)],
                                 key=lambda row: (row[0].lower(), row[1]))  # PostgreSQL orders the bytes
    ]
    assert sum(int(r["metered"]) for r in shown["models"]) == sum(int(r["metered"]) for r in shown["spenders"])
