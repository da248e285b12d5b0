"""The Solidity fuzz and invariant tests (contracts/test, run by forge from node_modules with the npm
solc, offline) pass, and run as many cases as configured.

`scripts/forge.py test --json` reports every test; this checks each one succeeded, that fuzz tests
ran their 256 cases and invariant tests 48 runs of 32 calls, and that the suites cover the
properties the contracts promise (supply, escrow conservation, no burn without budget or escrow, one
settlement per root, registry roles).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
FUZZ_RUNS = 256
INVARIANT_RUNS, INVARIANT_DEPTH = 48, 32

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def forge_results() -> dict[str, dict[str, Any]]:
    """test name (Suite.test) -> forge's result for it."""
    out = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "forge.py"), "test", "--json"],
        cwd=REPO, capture_output=True, text=True, timeout=540,
    )
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-4000:]
    suites = json.loads(out.stdout)
    results: dict[str, dict[str, Any]] = {}
    for suite, body in suites.items():
        for test, result in body["test_results"].items():
            results[f"{suite.split(':')[1]}.{test.split('(')[0]}"] = result
    return results


def test_every_forge_test_passes(forge_results: dict[str, dict[str, Any]]) -> None:
    failed = {name: r["reason"] for name, r in forge_results.items() if r["status"] != "Success"}
    assert failed == {}
    assert len(forge_results) == 20


def test_fuzz_tests_run_their_cases(forge_results: dict[str, dict[str, Any]]) -> None:
    fuzz = {name: r["kind"]["Fuzz"] for name, r in forge_results.items() if "Fuzz" in r["kind"]}
    assert len(fuzz) == 15
    assert {name: k["runs"] for name, k in fuzz.items()} == dict.fromkeys(fuzz, FUZZ_RUNS)


def test_invariant_tests_run_their_sequences(forge_results: dict[str, dict[str, Any]]) -> None:
    invariants = {name: r["kind"]["Invariant"] for name, r in forge_results.items() if "Invariant" in r["kind"]}
    assert set(invariants) == {
        "SettlementInvariantTest.invariant_supplyIsMintedLessBurned",
        "SettlementInvariantTest.invariant_escrowIsConserved",
        "SettlementInvariantTest.invariant_burnsAreRedemptions",
        "NodeRegistryInvariantTest.invariant_retiredKeysStayRetired",
        "NodeRegistryInvariantTest.invariant_onlyTheRegistrarChangesTheRegistry",
    }
    for kind in invariants.values():
        assert kind["runs"] == INVARIANT_RUNS
        assert kind["calls"] == INVARIANT_RUNS * INVARIANT_DEPTH
        assert kind["reverts"] == 0  # handlers bound their inputs: every call does something


def test_the_named_properties_are_covered(forge_results: dict[str, dict[str, Any]]) -> None:
    for name in (
        "SettlementFuzzTest.testFuzz_noBurnWithoutEscrow",
        "SettlementFuzzTest.testFuzz_noBurnWithoutBudget",
        "SettlementFuzzTest.testFuzz_aRootSettlesOnce",
        "SettlementFuzzTest.testFuzz_settlePaysWithinEscrowAndBudget",
        "NodeRegistryFuzzTest.testFuzz_onlyRegistrarRegisters",
        "NodeRegistryFuzzTest.testFuzz_aRetiredKeyNeverReturns",
    ):
        assert forge_results[name]["status"] == "Success"
