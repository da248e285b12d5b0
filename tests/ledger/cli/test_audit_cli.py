"""`sluice audit verify`, `history` and `index` against a whole running deployment
(`tests.support.audit.history`): exit codes, JSON and tables, an auditor-only refusal, and an index
backfilled into a fresh database to the same rows the service's indexer holds."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from uuid import uuid4

import psycopg
import pytest
from eth_account import Account
from typer.testing import CliRunner

from ledger.cli.app import app as cli
from tests.support.audit import History, execute, first_job
from tests.support.stack import Deployed, with_database

PASSWORD = "auditor-pw"


def keystore(directory: Path, key: bytes) -> str:
    """An encrypted keystore of `key` (the CLI takes keys only as keystores or from the environment)."""
    path = directory / f"{Account.from_key(key).address}.json"
    path.write_text(json.dumps(Account.encrypt(key, PASSWORD)))
    return str(path)


@pytest.fixture
def auditor_keystore(history: History, tmp_path: Path) -> str:
    return keystore(tmp_path, bytes(history.auditor.key))


def test_key_option_refuses_a_raw_private_key(deployed: Deployed, history: History) -> None:
    raw = "0x" + bytes(history.auditor.key).hex()
    for value in (raw, raw[2:]):
        result = CliRunner().invoke(cli, ["audit", "verify", "--rpc", deployed.settings.effective_rpc_url,
                                          "--api", deployed.api, "--key", value], env={"COLUMNS": "200"})
        assert result.exit_code == 2, result.output
        assert "not a raw private key" in result.output and "SLUICE_AUDITOR_KEY" in result.output


def test_verify_cli_exits_1_on_the_shortfall_of_an_otherwise_honest_history(deployed: Deployed, history: History,
                                                                           auditor_keystore: str) -> None:
    result = CliRunner().invoke(cli, ["audit", "verify", "--rpc", deployed.settings.effective_rpc_url,
                                      "--api", deployed.api, "--key", auditor_keystore, "--json"],
                                input=PASSWORD + "\n")
    assert result.exit_code == 1, result.output
    report = json.loads(result.stdout[result.stdout.index("{"):])
    assert report["ok"] is False
    assert [(d["check"], d["batch"]) for d in report["discrepancies"]] == [
        ("shortfall", "0x" + history.batches[1].hex())]


def test_verify_tables_fit_80_columns_and_the_csv_has_every_pair(deployed: Deployed, history: History,
                                                                 auditor_keystore: str) -> None:
    args = ["audit", "verify", "--rpc", deployed.settings.effective_rpc_url, "--api", deployed.api,
            "--key", auditor_keystore]
    table = CliRunner().invoke(cli, args, env={"COLUMNS": "80"}, input=PASSWORD + "\n")
    assert table.exit_code == 1, table.output  # the history's shortfall
    report = table.stdout[table.stdout.index("sluice audit verify"):]
    assert max(len(line) for line in report.splitlines()) <= 80
    assert "left out at 80 columns: debt cleared" in " ".join(report.split())
    as_json = CliRunner().invoke(cli, [*args, "--json"], input=PASSWORD + "\n")
    pairs = json.loads(as_json.stdout[as_json.stdout.index("{"):])["pairs"]
    as_csv = CliRunner().invoke(cli, [*args, "--csv"], input=PASSWORD + "\n")
    assert as_csv.exit_code == 1
    lines = as_csv.stdout[as_csv.stdout.index("payer,spender"):].splitlines()
    assert lines[0] == "payer,spender,receipts,metered,redeemed,shortfall_unpaid,debt_cleared"
    assert len(lines) - 1 == len(pairs) > 0
    for line in lines[1:]:
        payer, spender, *figures = line.split(",")
        assert payer.startswith("0x") and len(payer) == len(spender) == 42 and all(f.isdigit() for f in figures)


def test_verify_cli_exits_1_and_prints_every_discrepancy(deployed: Deployed, history: History,
                                                         auditor_keystore: str) -> None:
    job = first_job(deployed, history)
    execute(deployed, "UPDATE usage_records SET prompt_tokens = prompt_tokens + 3 WHERE job_id = %s", job)
    try:
        result = CliRunner().invoke(cli, ["audit", "verify", "--rpc", deployed.settings.effective_rpc_url,
                                          "--api", deployed.api, "--key", auditor_keystore],
                                    env={"COLUMNS": "200"}, input=PASSWORD + "\n")
    finally:
        execute(deployed, "UPDATE usage_records SET prompt_tokens = prompt_tokens - 3 WHERE job_id = %s", job)
    assert result.exit_code == 1, result.output
    assert "node_signature" in result.output and "discrepancies" in result.output


def test_history_cli_prints_the_redemptions(deployed: Deployed, history: History, auditor_keystore: str,
                                            tmp_path: Path) -> None:
    key = auditor_keystore
    shown = CliRunner().invoke(cli, ["audit", "history", "--api", deployed.api, "--key", key, "--kind", "redemption",
                                     "--json", "--all", "--limit", "2"], input=PASSWORD + "\n")
    assert shown.exit_code == 0, shown.output
    rows = json.loads(shown.stdout[shown.stdout.index("{"):])["data"]
    assert len(rows) == 5 and all(r["event"] == "Redeemed" for r in rows)  # 2 + 2 pairs, then the debt
    table = CliRunner().invoke(cli, ["audit", "history", "--api", deployed.api, "--key", key, "--kind", "shortfall"],
                               env={"COLUMNS": "200"}, input=PASSWORD + "\n")
    assert table.exit_code == 0 and "Shortfall" in table.output
    refused = CliRunner().invoke(cli, ["audit", "history", "--api", deployed.api, "--key",
                                       keystore(tmp_path, bytes(Account.create().key))], input=PASSWORD + "\n")
    assert refused.exit_code == 1 and "not_auditor" in refused.output


def test_index_cli_backfills_a_fresh_database_to_the_same_rows(
    deployed: Deployed, history: History, postgres_url: str, make_db: Callable[[], str]
) -> None:
    db_url = make_db()
    env = {**os.environ, "SLUICE_HOME": str(deployed.settings.home), "RPC_URL": deployed.settings.effective_rpc_url,
           "DATABASE_URL": db_url}
    out = subprocess.run([sys.executable, "-c", "from ledger.cli.app import main; main()", "audit", "index", "--json"],
                         env=env,
                         capture_output=True, text=True, timeout=60, check=False)
    assert out.returncode == 0, out.stderr
    figures = json.loads(out.stdout)
    with psycopg.connect(db_url) as conn:
        fresh = conn.execute("SELECT block, log_index, tx_hash, args FROM chain_events"
                             " WHERE block <= %s ORDER BY 1, 2", (figures["block"],)).fetchall()
    served = deployed.sql("SELECT block, log_index, tx_hash, args FROM chain_events WHERE block <= %s ORDER BY 1, 2",
                          figures["block"])
    assert fresh == served and figures["events"] == len(fresh) and figures["lag"] == 0


@pytest.fixture
def make_db(postgres_url: str) -> Iterator[Callable[[], str]]:
    made: list[str] = []

    def make() -> str:
        name = f"audit_index_{uuid4().hex[:10]}"
        with psycopg.connect(postgres_url, autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name}".encode())
        made.append(name)
        return with_database(postgres_url, name)

    yield make
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        for name in made:
            conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)".encode())
