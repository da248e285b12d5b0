"""`sluice wallet keys` and `sluice dev budgets` against the real service: signed key policy changes and reads,
tables that fit 80 columns, and --json / --csv with every field."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from eth_account import Account
from eth_account.signers.local import LocalAccount
from typer.testing import CliRunner, Result

from ledger.cli import dev_budgets as dev_budgets_cli
from ledger.cli import dev_call
from ledger.cli.app import app
from ledger.config import get_settings
from tests.support import escrow
from tests.support.stack import Deployed

PASSWORD = "keys cli password"


@pytest.fixture
def env(deployed: Deployed, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for var in ("DATABASE_URL", "SLUICE_DATABASE_URL", "SLUICE_API_URL"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("SLUICE_HOME", str(deployed.settings.home))
    monkeypatch.setenv("RPC_URL", deployed.settings.effective_rpc_url)
    monkeypatch.setenv("SLUICE_KEYSTORE_PASSWORD", PASSWORD)
    monkeypatch.setenv("COLUMNS", "80")
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


def keystore(tmp_path: Path, account: LocalAccount) -> str:
    path = tmp_path / f"{account.address}.json"
    path.write_text(json.dumps(Account.encrypt(account.key, PASSWORD, kdf="scrypt", iterations=2**10)))
    return str(path)


def cli(deployed: Deployed, *args: str) -> Result:
    get_settings.cache_clear()
    return CliRunner().invoke(app, [*args, "--api", deployed.api])


def ok(deployed: Deployed, *args: str) -> object:
    result = cli(deployed, *args, "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def dev_budgets(capsys: pytest.CaptureFixture[str], deployed: Deployed, dev: LocalAccount, *args: str) -> str:
    """`sluice dev budgets ARGS` in-process (the light command), with the key from $SLUICE_DEVELOPER_KEY."""
    capsys.readouterr()
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(dev_call.KEY_ENV, "0x" + dev.key.hex())
        assert dev_budgets_cli.main(["--api", deployed.api, *args]) == 0
    return capsys.readouterr().out


def test_a_payer_labels_limits_lists_and_deletes_its_keys_and_the_developer_sees_them(
        deployed: Deployed, env: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    enterprise = deployed.fund(10)
    dev = deployed.developer(enterprise, 10**17)
    other = deployed.fund(1)
    escrow.set_budget(deployed.ledger, other, dev.address, 5 * 10**16)
    deployed.wait_mirrored()
    payer_ks, dev_ks = keystore(tmp_path, enterprise), keystore(tmp_path, dev)
    deployed.wait_mirrored()
    labelled = ok(deployed, "wallet", "keys", "label", dev.address, "ci runner", "--keystore", payer_ks)
    assert isinstance(labelled, dict) and labelled["label"] == "ci runner"
    limited = ok(deployed, "wallet", "keys", "limit", dev.address, "--rpm", "2", "--tpm", "5000",
                 "--expires", "2030-01-01", "--keystore", payer_ks)
    assert isinstance(limited, dict)
    assert (limited["requests_per_minute"], limited["tokens_per_minute"], limited["expires_at"]) == (
        2, 5000, 1893456000)
    listed = ok(deployed, "wallet", "keys", "list", "--keystore", payer_ks)
    assert listed == {"payer": enterprise.address, "keys": [{
        "spender": dev.address, "label": "ci runner", "requests_per_minute": 2, "tokens_per_minute": 5000,
        "expires_at": 1893456000, "updated_at": limited["updated_at"], "budget_effective": str(10**17),
        "budget_reserved": "0", "budget_available": str(10**17), "pending_cut": None, "pending_cut_at": None}]}
    csv = cli(deployed, "wallet", "keys", "list", "--keystore", payer_ks, "--csv")
    assert csv.stdout.splitlines() == [
        "spender,label,requests_per_minute,tokens_per_minute,expires_at,updated_at,budget_effective,"
        "budget_reserved,budget_available,pending_cut,pending_cut_at",
        f"{dev.address},ci runner,2,5000,1893456000,{limited['updated_at']},{10**17},0,{10**17},,"]
    table = cli(deployed, "wallet", "keys", "list", "--keystore", payer_ks)
    assert table.exit_code == 0 and max(len(line) for line in table.stdout.splitlines()) <= 80
    assert dev.address in table.stdout and "ci runner" in table.stdout and "0.1" in table.stdout

    budgets = json.loads(dev_budgets(capsys, deployed, dev, "--json"))
    assert budgets == {"spender": dev.address, "budgets": [
        {"payer": enterprise.address, "left": 10**17, "budget_available": 10**17, "escrow_available": 10 * 10**18,
         "label": "ci runner", "requests_per_minute": 2, "tokens_per_minute": 5000, "expires_at": 1893456000,
         "rate_window_seconds": 60},
        {"payer": other.address, "left": 5 * 10**16, "budget_available": 5 * 10**16, "escrow_available": 10**18,
         "label": None, "requests_per_minute": None, "tokens_per_minute": None, "expires_at": None,
         "rate_window_seconds": 60}]}
    assert dev_budgets(capsys, deployed, dev).splitlines() == [
        f"budgets of {dev.address}:",
        "payer                                        left (tokens)      rpm        tpm",
        f"{enterprise.address}             0.1        2      5,000",
        "  ci runner; expires 2030-01-01 00:00 UTC",
        f"{other.address}            0.05        -          -",
        "limits are per minute; left = the budget, capped by the payer's escrow (--json: base units)"]
    assert dev_budgets(capsys, deployed, dev, "--csv").splitlines()[1:] == [
        f"{enterprise.address},{10**17},{10**17},{10 * 10**18},ci runner,2,5000,1893456000,60",
        f"{other.address},{5 * 10**16},{5 * 10**16},{10**18},,,,,60"]

    # the developer key cannot lift its own limits: it is no payer of itself
    refused = cli(deployed, "wallet", "keys", "limit", dev.address, "--rpm", "0", "--keystore", dev_ks)
    assert refused.exit_code == 1 and "403 not_allowlisted" in refused.stderr
    assert ok(deployed, "wallet", "keys", "delete", dev.address, "--keystore", payer_ks) == {
        "spender": dev.address, "deleted": True}
    [key] = ok(deployed, "wallet", "keys", "list", "--keystore", payer_ks)["keys"]  # type: ignore[index]
    assert (key["label"], key["requests_per_minute"]) == (None, None)
