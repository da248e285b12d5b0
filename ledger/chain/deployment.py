"""The record of a Sluice deployment on one chain, kept under the state dir."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ledger.errors import DeploymentMissing

CONTRACT_KEYS = ("token", "sale", "rate_card", "settlement", "payment_token", "node_registry")


@dataclass(frozen=True)
class Deployment:
    chain_id: int
    rpc_url: str
    deploy_block: int
    contracts: dict[str, str]

    def to_json(self) -> dict[str, Any]:
        return {
            "chain_id": self.chain_id,
            "rpc_url": self.rpc_url,
            "deploy_block": self.deploy_block,
            "contracts": {k: self.contracts[k] for k in CONTRACT_KEYS if k in self.contracts},
        }

    @property
    def complete(self) -> bool:
        """Whether the record names every contract this release deploys (older records do not)."""
        return all(k in self.contracts for k in CONTRACT_KEYS)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Deployment:
        return cls(int(data["chain_id"]), str(data["rpc_url"]), int(data["deploy_block"]), dict(data["contracts"]))


def record_path(state_dir: Path, chain_id: int) -> Path:
    return state_dir / "deployments" / f"{chain_id}.json"


def load_deployment(state_dir: Path, chain_id: int) -> Deployment:
    path = record_path(state_dir, chain_id)
    try:
        return Deployment.from_json(json.loads(path.read_text()))
    except FileNotFoundError:
        raise DeploymentMissing(
            f"no Sluice deployment recorded for chain {chain_id} in {path.parent}; run `sluice deploy` first"
        ) from None


def save_deployment(state_dir: Path, deployment: Deployment) -> Path:
    path = record_path(state_dir, deployment.chain_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(deployment.to_json(), indent=2) + "\n")
    tmp.replace(path)  # atomic: a crash never leaves a half-written record
    return path
