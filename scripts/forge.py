"""Run Foundry's forge (the pinned npm package) with the npm solc, offline.

forge reads paths and test settings from foundry.toml; the compiler settings come from
hardhat.config.json (the one place they live) as FOUNDRY_* variables, and the compiler is
scripts/solc-shim.js, which answers `--version` and compiles standard JSON with npm's solc.
Nothing is downloaded.

One setting differs unless asked for: forge compiles with the legacy pipeline, not via-IR. The
wasm solc takes minutes per via-IR build of the test contracts and seconds without; the sources
are the same, and the deployed (via-IR) bytecode is what the Python contract suites exercise.
`--via-ir` (first argument) builds exactly as deployed.

    python scripts/forge.py test            # fuzz + invariant tests in contracts/test
    python scripts/forge.py test --json     # machine-readable results
    python scripts/forge.py --via-ir test   # the same, compiled as deployed
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FORGE = ROOT / "node_modules" / "@foundry-rs" / "forge-linux-amd64" / "bin" / "forge"
SHIM = ROOT / "scripts" / "solc-shim.js"


def forge_env(*, via_ir: bool = False) -> dict[str, str]:
    settings = json.loads((ROOT / "hardhat.config.json").read_text())["solidity"]["settings"]
    env = dict(os.environ)
    env.update({
        "FOUNDRY_SOLC": str(SHIM),
        "FOUNDRY_OFFLINE": "true",
        "FOUNDRY_AUTO_DETECT_SOLC": "false",
        "FOUNDRY_OPTIMIZER": "true" if settings["optimizer"]["enabled"] else "false",
        "FOUNDRY_OPTIMIZER_RUNS": str(settings["optimizer"]["runs"]),
        "FOUNDRY_EVM_VERSION": settings["evmVersion"],
        "FOUNDRY_VIA_IR": "true" if via_ir and settings.get("viaIR") else "false",
        "FOUNDRY_BYTECODE_HASH": settings.get("metadata", {}).get("bytecodeHash", "ipfs"),
        "FOUNDRY_DISABLE_NIGHTLY_WARNING": "1",
        "NO_COLOR": "1",
    })
    return env


def main(argv: list[str]) -> int:
    if not FORGE.is_file():
        print("node_modules has no forge: run `npm ci` (it is a devDependency)", file=sys.stderr)
        return 2
    via_ir = bool(argv) and argv[0] == "--via-ir"
    args = argv[1:] if via_ir else argv
    return subprocess.call([str(FORGE), *args], cwd=ROOT, env=forge_env(via_ir=via_ir))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
