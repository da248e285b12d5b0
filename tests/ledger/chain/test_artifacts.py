"""The committed artifacts must be exactly what the sources compile to."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]


def load_compiler() -> object:
    spec = importlib.util.spec_from_file_location("compile_contracts", ROOT / "scripts" / "compile_contracts.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


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
