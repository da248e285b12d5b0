"""Everything the service builds once at start-up, shared by the routes, and how it is built."""

from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from eth_account import Account
from psycopg_pool import AsyncConnectionPool

from ledger.chain.client import Ledger
from ledger.chain.connection import connect
from ledger.chain.deployment import Deployment, load_deployment
from ledger.chain.registry_events import RegistryLog
from ledger.chain.rpc import JsonRpc
from ledger.chain.views import read_direct
from ledger.domain import ChainFigures
from ledger.errors import LedgerError
from ledger.followers.indexer import ChainIndexer
from ledger.followers.mirror import ChainMirror
from ledger.followers.shared import SharedFollower
from ledger.keys import KeyUnavailable
from ledger.keys import dispatch_key as ticket_key
from ledger.protocol.eip712 import Domains
from redemption.audit.auth import AuditorRoles
from redemption.batching import GatherWindow
from redemption.config import ServiceSettings
from redemption.dispatch import Dispatcher
from redemption.metering import Meter
from redemption.metrics import ServiceMetrics
from redemption.models import TokenInfo
from redemption.routing import NodeRegistry
from redemption.store import ModelRate, Store


class WorkersWithMetricsPort(LedgerError):
    """SLUICE_API_WORKERS > 1 together with a fixed SLUICE_METRICS_PORT."""


# A mirror that has not completed a sync for this long is treated as lagging (never longer than the
# window's mirror lag allowance).
MIRROR_STALE_SECONDS = 5.0


@dataclass
class ServiceState:
    settings: ServiceSettings
    deployment: Deployment
    ledger: Ledger
    domains: Domains
    store: Store
    registry: NodeRegistry
    meter: Meter
    dispatcher: Dispatcher
    auditors: AuditorRoles
    metrics: ServiceMetrics
    dispatch_signer: str
    mirror: ChainMirror | None = None
    indexer: ChainIndexer | None = None
    follower: SharedFollower | None = None
    rates: dict[str, ModelRate] = field(default_factory=dict)
    unlock_period: int = 0
    token: TokenInfo = field(default_factory=lambda: TokenInfo(name="", symbol="", decimals=18))
    stop: threading.Event = field(default_factory=threading.Event)
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    gather: GatherWindow = field(default_factory=lambda: GatherWindow(0.0, 0))

    def mirror_lag(self) -> int | None:
        """Blocks the mirror trails the head by at its last sync; None when unknown or that sync is stale."""
        if self.mirror is None or self.mirror.last_status is None:
            return None
        stale = min(MIRROR_STALE_SECONDS, self.settings.mirror_lag_allowance_seconds)
        if time.monotonic() - self.mirror.last_synced > stale:
            return None
        lag: int = self.mirror.last_status.lag
        return lag

    async def chain_figures(self, payer: str, spender: str) -> ChainFigures | None:
        """None while the mirror is current; else the figures read from the chain itself."""
        lag = self.mirror_lag()
        if lag is not None and lag <= self.settings.mirror_max_lag_blocks:
            return None
        return await asyncio.to_thread(read_direct, self.ledger, payer, spender)


def resolve_dispatch_key(settings: ServiceSettings) -> bytes:
    """SLUICE_DISPATCH_KEY (never a well-known key off the embedded chain); KeyUnavailable otherwise."""
    configured = settings.dispatch_key
    try:
        given = None if configured is None else bytes.fromhex(configured.get_secret_value().removeprefix("0x"))
    except ValueError:
        raise KeyUnavailable("SLUICE_DISPATCH_KEY is not a 0x-hex private key") from None
    if given is not None and len(given) != 32:
        raise KeyUnavailable("SLUICE_DISPATCH_KEY is not a 32-byte private key")
    return ticket_key(given, settings)


def build_state(
    settings: ServiceSettings, pool: AsyncConnectionPool[Any], client: aiohttp.ClientSession,
) -> ServiceState:
    w3 = connect(settings.effective_rpc_url)
    deployment = load_deployment(settings.state_dir, int(w3.eth.chain_id))
    ledger = Ledger(w3, deployment, timeout=settings.tx_timeout, confirmations=settings.confirmations)
    # Invariant 7: refuse to start when what the service admits could outlast the chain's unlock period.
    unlock_period = int(ledger.settlement.functions.unlockPeriod().call())
    settings.window.check(unlock_period)
    erc20 = ledger.token.functions
    token = TokenInfo(name=erc20.name().call(), symbol=erc20.symbol().call(), decimals=int(erc20.decimals().call()))
    domains = Domains(deployment.chain_id, deployment.contracts["settlement"])
    dispatch_key = resolve_dispatch_key(settings)
    metrics = ServiceMetrics()
    chain_nodes = RegistryLog(JsonRpc(settings.effective_rpc_url, timeout=10), deployment.contracts["node_registry"],
                              deployment.deploy_block)
    chain_nodes.sync()  # before the first heartbeat: only the chain's nodes are ever admitted
    registry = NodeRegistry(settings.node_stale_seconds, chain_nodes)
    gather = GatherWindow(settings.db_gather_ms / 1000, settings.db_gather_siblings)
    store = Store(pool, gather)
    meter = Meter(store=store, domains=domains, metrics=metrics)
    dispatcher = Dispatcher(client=client, registry=registry, meter=meter, domains=domains, dispatch_key=dispatch_key,
                            ticket_ttl=settings.ticket_ttl_seconds, first_byte_timeout=settings.node_timeout_seconds,
                            attempts=settings.dispatch_attempts, metrics=metrics,
                            hold_lifetime=settings.hold_lifetime_seconds)
    return ServiceState(
        settings=settings, deployment=deployment, ledger=ledger, domains=domains, store=store, registry=registry,
        meter=meter, dispatcher=dispatcher, auditors=AuditorRoles(ledger, settings.auditor_cache_seconds),
        metrics=metrics, dispatch_signer=Account.from_key(dispatch_key).address, unlock_period=unlock_period,
        token=token, gather=gather,
    )
