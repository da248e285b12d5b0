"""Deploy the Sluice contracts with their roles wired, once per chain.

`ensure_deployed` is idempotent: a recorded deployment whose code is still on
the chain is reused; otherwise everything is deployed and recorded under the
state dir. Roles: the sale and the operator may mint; Settlement is the token's
escrow (`setEscrow`) and its only burner (REDEEMER_ROLE); the sale may credit
what it mints into escrow (DEPOSITOR_ROLE); the settler key holds SETTLER_ROLE;
the operator registers nodes in NodeRegistry. The unlock period is set at deploy
(`Settings.effective_unlock_period`: 15 minutes embedded, 24 hours elsewhere).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from eth_account.signers.local import LocalAccount
from web3 import Web3

from ledger.chain.artifacts import load_artifact
from ledger.chain.client import Ledger
from ledger.chain.connection import connect
from ledger.chain.deployment import Deployment, load_deployment, save_deployment
from ledger.chain.sender import TxSender
from ledger.config import Settings
from ledger.domain import Tier
from ledger.errors import DeploymentMissing, LedgerError
from ledger.keys import operator_account, settler_account
from ledger.units import ONE_TOKEN

# Volume tiers: (minimum purchase in base units, price per token in payment units).
# Payment token has 6 decimals: 10_000 units = 0.01 per compute token.
DEFAULT_SALE_TIERS = ((0, 10_000), (100_000 * ONE_TOKEN, 9_500), (1_000_000 * ONE_TOKEN, 9_000))

Progress = Callable[[str], None]


def parse_models(spec: str) -> list[tuple[str, int, int, Tier]]:
    """Parse `name:input_rate:output_rate:tier,...` (rates in whole tokens per 1M model tokens)."""
    models = []
    for part in filter(None, (p.strip() for p in spec.split(","))):
        fields = part.split(":")
        if len(fields) < 4:
            raise ValueError(f"model spec {part!r} must be name:input_rate:output_rate:tier")
        name = ":".join(fields[:-3])
        input_rate, output_rate, tier = fields[-3:]
        models.append((name, int(input_rate) * ONE_TOKEN, int(output_rate) * ONE_TOKEN, Tier[tier.upper()]))
    return models


def deploy_contract(sender: TxSender, name: str, *args: Any) -> tuple[str, int]:
    """Deploy artifact `name`; returns (address, block number)."""
    artifact = load_artifact(name)
    factory = sender.w3.eth.contract(abi=artifact["abi"], bytecode=artifact["bytecode"])
    data = factory.constructor(*args).data_in_transaction
    result = sender.transact({"data": data})
    address = result.receipt["contractAddress"]
    if address is None:
        raise LedgerError(f"deploying {name} produced no contract address (tx {result.tx_hash})")
    return str(address), result.block_number


def existing_deployment(settings: Settings, w3: Web3) -> Deployment | None:
    """The recorded deployment for this chain, if its contracts are still there."""
    try:
        record = load_deployment(settings.state_dir, int(w3.eth.chain_id))
    except DeploymentMissing:
        return None
    if not record.complete:  # recorded by an older release: its contracts lack the escrow
        return None
    if all(len(w3.eth.get_code(Web3.to_checksum_address(a))) > 0 for a in record.contracts.values()):
        return record
    return None


def deploy_all(settings: Settings, w3: Web3, operator: LocalAccount, settler: LocalAccount,
               progress: Progress = lambda _msg: None) -> Deployment:
    sender = TxSender(w3, operator, timeout=settings.tx_timeout, confirmations=settings.confirmations)
    if settings.payment_token:
        payment_token, first_block = settings.payment_token, int(w3.eth.block_number)
    else:
        progress("deploying TestStablecoin (embedded payment token)")
        payment_token, first_block = deploy_contract(sender, "TestStablecoin", operator.address)
    progress("deploying ComputeToken")
    token, block = deploy_contract(sender, "ComputeToken", operator.address)
    first_block = min(first_block, block)
    progress("deploying RateCard")
    rate_card, _ = deploy_contract(sender, "RateCard", operator.address)
    progress(f"deploying Settlement (unlock period {settings.effective_unlock_period} s)")
    settlement, _ = deploy_contract(sender, "Settlement", token, operator.address, settings.effective_unlock_period)
    progress("deploying TokenSale")
    sale, _ = deploy_contract(sender, "TokenSale", token, payment_token, settlement, operator.address,
                              operator.address, [list(t) for t in DEFAULT_SALE_TIERS])
    progress("deploying NodeRegistry")
    node_registry, _ = deploy_contract(sender, "NodeRegistry", operator.address)
    deployment = Deployment(
        chain_id=int(w3.eth.chain_id),
        rpc_url=settings.effective_rpc_url,
        deploy_block=first_block,
        contracts={"token": token, "sale": sale, "rate_card": rate_card, "settlement": settlement,
                   "payment_token": payment_token, "node_registry": node_registry},
    )
    ledger = Ledger(w3, deployment, timeout=settings.tx_timeout, confirmations=settings.confirmations)
    ledger._senders[operator.address] = sender
    progress("wiring roles")
    ledger.set_escrow(operator, settlement)
    ledger.grant_role(operator, "MINTER_ROLE", sale)
    ledger.grant_role(operator, "MINTER_ROLE", operator.address)
    ledger.grant_role(operator, "REDEEMER_ROLE", settlement)
    ledger.grant_role(operator, "DEPOSITOR_ROLE", sale)
    ledger.grant_role(operator, "SETTLER_ROLE", settler.address)
    for name, input_rate, output_rate, tier in parse_models(settings.models):
        progress(f"setting rate for {name}")
        ledger.set_rate(operator, name, input_rate, output_rate, tier)
    return deployment


def ensure_deployed(settings: Settings, progress: Progress = lambda _msg: None) -> dict[str, Any]:
    """Deploy unless a live deployment is recorded for the chain; returns the deployment JSON."""
    w3 = connect(settings.effective_rpc_url)
    record = existing_deployment(settings, w3)
    if record is None:
        record = deploy_all(settings, w3, operator_account(settings), settler_account(settings), progress)
        save_deployment(settings.state_dir, record)
    return record.to_json()
