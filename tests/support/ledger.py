"""Ledger fixtures: one deployment per test session on a real Anvil, reverted after each test.

`anvil_rpc` (tests/conftest.py) starts the chain. Each test gets a fresh `Ledger`
(fresh nonce caches) and an EVM snapshot that is reverted when it ends, so tests
stay independent without redeploying. `openzeppelin_tree` builds a receipts tree with
OpenZeppelin's own `@openzeppelin/merkle-tree` package (node_modules), the reference the
core's Merkle code is checked against.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from eth_account import Account
from eth_account.signers.local import LocalAccount
from web3 import Web3

from ledger.chain.client import Ledger
from ledger.chain.connection import connect
from ledger.chain.deploy import deploy_all
from ledger.chain.deployment import Deployment
from ledger.config import Settings
from ledger.keys import embedded_account
from ledger.units import ONE_TOKEN

REPO = Path(__file__).resolve().parents[2]
OZ_TREE = """
const { StandardMerkleTree } = require(process.argv[1]);
const values = JSON.parse(require("fs").readFileSync(0, "utf8"));
const tree = StandardMerkleTree.of(values, ["bytes32", "address", "address", "uint256"]);
const proofs = values.map((_, i) => tree.getProof(i));
process.stdout.write(JSON.stringify({ root: tree.root, proofs }));
"""


def openzeppelin_tree(values: list[list[str]]) -> dict[str, object]:
    """OpenZeppelin's StandardMerkleTree of (bytes32, address, address, uint256) rows: root and each row's proof."""
    module = REPO / "node_modules" / "@openzeppelin" / "merkle-tree"
    out = subprocess.run(
        ["node", "-e", OZ_TREE, str(module)], input=json.dumps(values), capture_output=True, text=True, check=True,
        env={**os.environ, "NODE_OPTIONS": ""},
    )
    result: dict[str, object] = json.loads(out.stdout)
    return result


@dataclass
class Actors:
    operator: LocalAccount
    settler: LocalAccount
    enterprise: LocalAccount
    developer: LocalAccount
    other: LocalAccount


@pytest.fixture(scope="session")
def ledger_settings(anvil_rpc: str, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    home: Path = tmp_path_factory.mktemp("sluice-home")
    return Settings(home=home, rpc_url=anvil_rpc)


@pytest.fixture(scope="session")
def session_deployment(ledger_settings: Settings) -> Deployment:
    w3 = connect(ledger_settings.effective_rpc_url)
    return deploy_all(ledger_settings, w3, embedded_account(0), embedded_account(1))


@pytest.fixture(scope="session")
def session_w3(ledger_settings: Settings) -> Web3:
    return connect(ledger_settings.effective_rpc_url)


@pytest.fixture
def actors() -> Actors:
    return Actors(
        operator=embedded_account(0),
        settler=embedded_account(1),
        enterprise=Account.create(),
        developer=Account.create(),
        other=Account.create(),
    )


@pytest.fixture
def ledger(session_w3: Web3, session_deployment: Deployment) -> Iterator[Ledger]:
    snapshot = session_w3.provider.make_request("evm_snapshot", [])["result"]  # type: ignore[arg-type]
    yield Ledger(session_w3, session_deployment, timeout=30)
    reverted = session_w3.provider.make_request("evm_revert", [snapshot])["result"]  # type: ignore[arg-type]
    assert reverted is True


@pytest.fixture
def funded(ledger: Ledger, actors: Actors) -> Actors:
    """The enterprise allowlisted with 1,000 compute tokens and 10,000 test dollars."""
    ledger.set_allowlisted(actors.operator, actors.enterprise.address, True)
    ledger.mint(actors.operator, actors.enterprise.address, 1_000 * ONE_TOKEN)
    ledger.mint_payment(actors.operator, actors.enterprise.address, 10_000 * 10**6)
    return actors


@pytest.fixture
def escrowed(ledger: Ledger, funded: Actors) -> Actors:
    """`funded`, with 600 of the enterprise's 1,000 tokens deposited into its escrow."""
    ledger.deposit(funded.enterprise, 600 * ONE_TOKEN)
    return funded


def advance_time(ledger: Ledger, seconds: int) -> int:
    """Move the chain's clock `seconds` forward and mine a block there; returns its timestamp."""
    ledger.w3.provider.make_request("evm_increaseTime", [seconds])  # type: ignore[arg-type]
    ledger.w3.provider.make_request("evm_mine", [])  # type: ignore[arg-type]
    return int(ledger.w3.eth.get_block("latest")["timestamp"])
