"""The committed artifacts must be exactly what the sources compile to.

Every run compares the hash of the build inputs (sources, compiler settings, solc and OpenZeppelin
versions) and of each artifact with `ledger/artifacts/build-inputs.json`, which the compile script
writes; the slow test recompiles and compares byte for byte."""

from __future__ import annotations

import hashlib
import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]


def load_compiler() -> object:
    spec = importlib.util.spec_from_file_location("compile_contracts", ROOT / "scripts" / "compile_contracts.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_artifacts_were_built_from_the_sources_and_settings_in_the_tree() -> None:
    compiler = load_compiler()
    out_dir = ROOT / "ledger" / "artifacts"
    recorded = json.loads((out_dir / compiler.BUILD_INPUTS).read_text())  # type: ignore[attr-defined]
    current = compiler.build_inputs()  # type: ignore[attr-defined]
    stale = [part for part in ("sources", "solidity", "packages") if recorded[part] != current[part]]
    assert not stale, (
        f"ledger/artifacts are stale ({', '.join(stale)} changed): run `python scripts/compile_contracts.py`"
    )
    assert recorded["inputs_sha256"] == current["inputs_sha256"]
    names = sorted(path.name for path in out_dir.glob("*.json") if path.name != compiler.BUILD_INPUTS)  # type: ignore[attr-defined]
    assert sorted(recorded["artifacts"]) == names == sorted(f"{n}.json" for n in compiler.DEPLOYABLE)  # type: ignore[attr-defined]
    for name, digest in recorded["artifacts"].items():
        assert hashlib.sha256((out_dir / name).read_bytes()).hexdigest() == digest, (
            f"ledger/artifacts/{name} was edited by hand: run `python scripts/compile_contracts.py`"
        )


@pytest.mark.slow
def test_artifacts_are_fresh() -> None:
    compiler = load_compiler()
    compiled = compiler.compile_artifacts()  # type: ignore[attr-defined]
    config = json.loads((ROOT / "hardhat.config.json").read_text())
    out_dir = ROOT / config["paths"]["artifacts"]
    for name, artifact in compiled.items():
        committed = (out_dir / f"{name}.json").read_text()
        assert committed == compiler.render(artifact), (  # type: ignore[attr-defined]
            f"ledger/artifacts/{name}.json is stale: run `python scripts/compile_contracts.py`"
        )
        assert artifact["compiler"]["settings"] == config["solidity"]["settings"]
        assert artifact["compiler"]["version"].startswith(config["solidity"]["version"] + "+")
    recorded = json.loads((out_dir / compiler.BUILD_INPUTS).read_text())  # type: ignore[attr-defined]
    assert recorded == compiler.build_record(compiled)  # type: ignore[attr-defined]
