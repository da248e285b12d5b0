"""`sluice admin roles` is idempotent, and prompts without a terminal say which variable or flag to set."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from eth_account import Account

from ledger.chain.client import Ledger
from ledger.cli.common import PASSWORD_ENV
from tests.support.cli import PASSWORD, cli, ok

if TYPE_CHECKING:
    from tests.support.ledger import Actors


def test_grant_of_a_held_role_and_revoke_of_a_missing_one_send_nothing(home: Path, ledger: Ledger, actors: Actors,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SLUICE_OPERATOR_KEY", "0x" + bytes(actors.operator.key).hex())
    auditor = actors.other.address
    operator = actors.operator.address

    def sent() -> int:  # transactions the operator has sent (blocks may come on their own: SLUICE_BLOCK_TIME)
        return int(ledger.w3.eth.get_transaction_count(operator))

    before = sent()
    missing = ok("admin", "roles", "revoke", "auditor", auditor)
    assert missing == {"action": "unchanged", "tx_hash": None, "block": None, "role": "AUDITOR_ROLE",
                       "account": auditor}
    assert sent() == before
    granted = ok("admin", "roles", "grant", "auditor", auditor)
    assert granted["action"] == "role granted" and sent() == before + 1
    assert granted["block"] == ledger.w3.eth.get_transaction_receipt(granted["tx_hash"])["blockNumber"]
    assert ledger.has_role("AUDITOR_ROLE", auditor)
    again = cli("admin", "roles", "grant", "AUDITOR_ROLE", auditor)
    assert again.exit_code == 0
    assert " ".join(again.stdout.split()) == f"{auditor} already holds AUDITOR_ROLE; nothing sent"
    assert sent() == before + 1
    revoked = ok("admin", "roles", "revoke", "auditor", auditor)
    assert revoked["action"] == "role revoked" and not ledger.has_role("AUDITOR_ROLE", auditor)
    gone = cli("admin", "roles", "revoke", "auditor", auditor)
    assert " ".join(gone.stdout.split()) == f"{auditor} does not hold AUDITOR_ROLE; nothing sent"
    assert sent() == before + 2


def _keystore(tmp_path: Path) -> Path:
    account = Account.create()
    path = tmp_path / "operator.json"
    path.write_text(json.dumps(Account.encrypt(account.key, PASSWORD, iterations=2**10)))
    return path


@pytest.mark.parametrize("stdin", ["", None])
def test_a_password_prompt_without_a_terminal_names_the_variable(home: Path, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch, actors: Actors,
                                                                 stdin: str | None) -> None:
    monkeypatch.delenv(PASSWORD_ENV)
    result = cli("admin", "allowlist", "add", actors.other.address, "--keystore", _keystore(tmp_path), input=stdin)
    assert result.exit_code == 1
    assert "Aborted" not in result.output
    assert " ".join(result.stderr.split()) == (
        f"error: password for {tmp_path / 'operator.json'} is needed, and there is no terminal to ask at (stdin "
        f"ended before an answer) hint: set {PASSWORD_ENV} to the keystore's password")


def test_piped_answers_still_answer_prompts(home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(PASSWORD_ENV)
    created = ok("wallet", "new", "--out", tmp_path / "w.json", input="pw\npw\n")
    assert Path(created["keystore"]).is_file()
    mismatch = cli("wallet", "new", "--out", tmp_path / "x.json", input="pw\nother\n")
    assert mismatch.exit_code == 1 and "the two answers do not match" in mismatch.stderr


def test_a_confirmation_without_a_terminal_names_the_flag(home: Path) -> None:
    result = cli("wallet", "import", input="")
    assert result.exit_code == 1 and "Aborted" not in result.output
    assert " ".join(result.stderr.split()).endswith("hint: pass --stdin and pipe the key in (it reads the first line)")
