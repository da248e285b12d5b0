"""Compile the Solidity sources in contracts/ into the ledger package's artifacts.

Compiler settings come from hardhat.config.json (the one place they live). The npm
`solc` package is driven through py-solc-x by `scripts/solc-shim.js`. Artifacts hold
the ABI, bytecode, compiler version and settings; they are committed with
`build-inputs.json` beside them: a hash of what they were built from (the sources, the
compiler settings, the solc and OpenZeppelin versions pinned in package-lock.json) and of
each artifact. `tests/ledger/chain/test_artifacts.py` compares that hash with the tree on
every run and recompiles only in its slow test.

    python scripts/compile_contracts.py          # write ledger/artifacts/*.json
    python scripts/compile_contracts.py --check  # exit 1 if the artifacts are stale
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path
from typing import Any

import solcx
import solcx.wrapper

ROOT = Path(__file__).resolve().parent.parent
SHIM = ROOT / "scripts" / "solc-shim.js"
# Contracts that get an artifact; other sources (libraries, interfaces) are compiled in.
DEPLOYABLE = ("ComputeToken", "RateCard", "TokenSale", "Settlement", "TestStablecoin", "NodeRegistry")


def load_config() -> dict[str, Any]:
    config: dict[str, Any] = json.loads((ROOT / "hardhat.config.json").read_text())
    return config


def standard_input(config: dict[str, Any]) -> dict[str, Any]:
    sources_dir = ROOT / config["paths"]["sources"]
    sources = {
        f"contracts/{path.name}": {"content": path.read_text()}
        for path in sorted(sources_dir.glob("*.sol"))
    }
    settings = dict(config["solidity"]["settings"])
    settings["outputSelection"] = {
        "*": {"*": ["abi", "evm.bytecode.object", "evm.deployedBytecode.object", "evm.methodIdentifiers"]}
    }
    return {"language": "Solidity", "sources": sources, "settings": settings}


def compile_artifacts() -> dict[str, dict[str, Any]]:
    """Compile every source and return the artifact of each deployable contract by name."""
    config = load_config()
    wanted = config["solidity"]["version"]
    if not (ROOT / "node_modules" / "solc").is_dir():
        raise SystemExit("node_modules/solc is missing: run `npm ci` in the project root first")
    version = solcx.wrapper.get_version_str_from_solc_binary(SHIM)
    if not version.startswith(wanted):
        raise SystemExit(f"node_modules has solc {version}, hardhat.config.json asks for {wanted}: run `npm ci`")
    output = solcx.compile_standard(standard_input(config), solc_binary=SHIM)
    errors = [e for e in output.get("errors", []) if e.get("severity") == "error"]
    if errors:
        raise SystemExit("\n".join(e["formattedMessage"] for e in errors))
    artifacts: dict[str, dict[str, Any]] = {}
    for source_name, contracts in output["contracts"].items():
        for name, compiled in contracts.items():
            if name not in DEPLOYABLE:
                continue
            artifacts[name] = {
                "contractName": name,
                "sourceName": source_name,
                "abi": compiled["abi"],
                "bytecode": "0x" + compiled["evm"]["bytecode"]["object"],
                "deployedBytecode": "0x" + compiled["evm"]["deployedBytecode"]["object"],
                "methodIdentifiers": compiled["evm"]["methodIdentifiers"],
                "compiler": {"version": version, "settings": config["solidity"]["settings"]},
            }
    missing = set(DEPLOYABLE) - set(artifacts)
    if missing:
        raise SystemExit(f"no output for {sorted(missing)}")
    return artifacts


def render(artifact: dict[str, Any]) -> str:
    return json.dumps(artifact, indent=2, sort_keys=True) + "\n"


BUILD_INPUTS = "build-inputs.json"
# The npm packages whose code the compiler reads: solc itself and the imported OpenZeppelin sources.
COMPILER_PACKAGES = ("solc", "@openzeppelin/contracts")


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def build_inputs(config: dict[str, Any] | None = None) -> dict[str, Any]:
    """What the artifacts are built from, each part hashed, and one hash over them all."""
    config = load_config() if config is None else config
    sources_dir = ROOT / config["paths"]["sources"]
    lock = json.loads((ROOT / "package-lock.json").read_text())
    parts = {
        "sources": {f"contracts/{p.name}": _sha256(p.read_text()) for p in sorted(sources_dir.glob("*.sol"))},
        "solidity": config["solidity"],
        "packages": {name: lock["packages"][f"node_modules/{name}"]["version"] for name in COMPILER_PACKAGES},
    }
    return {"inputs_sha256": _sha256(json.dumps(parts, sort_keys=True)), **parts}


def build_record(artifacts: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The content of build-inputs.json: the build inputs and the hash of each artifact file they gave."""
    return {**build_inputs(), "artifacts": {f"{n}.json": _sha256(render(a)) for n, a in sorted(artifacts.items())}}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="only report whether the artifacts are stale")
    args = parser.parse_args()
    out_dir = ROOT / load_config()["paths"]["artifacts"]
    artifacts = compile_artifacts()
    stale = [n for n, a in artifacts.items() if not (out_dir / f"{n}.json").is_file()
             or (out_dir / f"{n}.json").read_text() != render(a)]
    if args.check:
        for name in stale:
            print(f"stale: ledger/artifacts/{name}.json", file=sys.stderr)
        return 1 if stale else 0
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, artifact in sorted(artifacts.items()):
        (out_dir / f"{name}.json").write_text(render(artifact))
        size = (len(artifact["deployedBytecode"]) - 2) // 2
        print(f"{name:16} {size:6} bytes deployed  {'updated' if name in stale else 'unchanged'}")
    (out_dir / BUILD_INPUTS).write_text(json.dumps(build_record(artifacts), indent=2, sort_keys=True) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
