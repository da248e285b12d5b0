"""Contract bindings' raw material: the compiled artifacts committed in this package.

Artifacts are written by `scripts/compile_contracts.py`; Python never pastes ABIs.
"""

from __future__ import annotations

import json
from functools import cache
from importlib import resources
from typing import Any, TypedDict, cast

CONTRACT_NAMES = ("ComputeToken", "RateCard", "TokenSale", "Settlement", "TestStablecoin", "NodeRegistry")


class Artifact(TypedDict):
    contractName: str
    sourceName: str
    abi: list[dict[str, Any]]
    bytecode: str
    deployedBytecode: str
    methodIdentifiers: dict[str, str]
    compiler: dict[str, Any]


@cache
def load_artifact(name: str) -> Artifact:
    """The compiled artifact of contract `name` (ABI, bytecode, compiler settings)."""
    if name not in CONTRACT_NAMES:
        raise KeyError(f"no artifact for {name!r}; known: {', '.join(CONTRACT_NAMES)}")
    text = resources.files("ledger").joinpath("artifacts", f"{name}.json").read_text()
    return cast(Artifact, json.loads(text))


def abi_of(name: str) -> list[dict[str, Any]]:
    return load_artifact(name)["abi"]
