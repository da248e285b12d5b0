"""The `sluice` command line driven in-process, against the session chain and a fresh database.

`home` is a state dir holding the session deployment's record (the session Anvil's state is
reverted after each test, see tests/support/ledger.py), with the CLI's environment pointed at it;
`fresh_db` a new migrated database on the session PostgreSQL; `service` the real redemption service
on that database. `cli` / `ok` / `refused` run one command the way a shell would.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from uuid import uuid4

import psycopg
import pytest
import uvicorn
from typer.testing import CliRunner, Result

from ledger.chain.client import Ledger
from ledger.chain.deployment import Deployment, save_deployment
from ledger.cli import keystores
from ledger.cli.app import app
from ledger.cli.common import PASSWORD_ENV
from ledger.config import Settings, get_settings
from ledger.db import migrate
from ledger.polling import poll_until
from ledger.stack.probes import free_port
from tests.support.stack import with_database

PASSWORD = "correct horse battery staple"


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, ledger: Ledger, ledger_settings: Settings,
         session_deployment: Deployment) -> Iterator[Path]:
    """A state dir holding the session deployment's record, with the CLI pointed at it and the session Anvil."""
    state = (tmp_path / "sluice").resolve()
    save_deployment(state, session_deployment)
    for var in ("DATABASE_URL", "SLUICE_DATABASE_URL", "SLUICE_API_URL", "SLUICE_CONFIRMATIONS"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("SLUICE_HOME", str(state))
    monkeypatch.setenv("RPC_URL", ledger_settings.effective_rpc_url)
    monkeypatch.setenv(PASSWORD_ENV, PASSWORD)
    monkeypatch.setattr(keystores, "SCRYPT_N", 2**10)  # fast keystores; one test checks the real cost
    get_settings.cache_clear()
    yield state
    get_settings.cache_clear()


def cli(*args: Any, input: str | None = None) -> Result:
    get_settings.cache_clear()  # each invocation reads the environment afresh, like a new process
    return CliRunner().invoke(app, [str(a) for a in args], input=input)


def ok(*args: Any, input: str | None = None) -> Any:
    """Run a command with --json; assert it succeeded and return its JSON."""
    result = cli(*args, "--json", input=input)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def refused(*args: Any, input: str | None = None) -> str:
    """Run a command that must fail with exit code 1; return its stderr (message and hint)."""
    result = cli(*args, input=input)
    assert result.exit_code == 1, result.output
    return " ".join(result.stderr.split())


@pytest.fixture
def fresh_db(postgres_url: str) -> Iterator[str]:
    """A new, migrated database on the session PostgreSQL, dropped afterwards."""
    name = f"wallet_{uuid4().hex[:10]}"
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}".encode())
    url = with_database(postgres_url, name)
    migrate(url)
    yield url
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)".encode())


@pytest.fixture
def service(home: Path, fresh_db: str, ledger_settings: Settings) -> Iterator[str]:
    """The real redemption service (no chain mirror or indexer) on the fresh database; yields its URL."""
    from redemption.app import create_app
    from redemption.config import ServiceSettings

    port = free_port()
    settings = ServiceSettings(home=home, rpc_url=ledger_settings.effective_rpc_url, database_url=fresh_db,
                               api_port=port, run_mirror=False, run_indexer=False)
    server = uvicorn.Server(uvicorn.Config(create_app(settings), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, name="redemption-service", daemon=True)
    thread.start()
    poll_until(lambda: server.started or not thread.is_alive(), 30, "the redemption service starting")
    assert server.started, "the redemption service did not start"
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(10)
