"""Everything the service builds once at start-up, shared by the routes."""

from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import aiohttp

from ledger.chain.client import Ledger
from ledger.chain.deployment import Deployment
from ledger.domain import ChainFigures
from ledger.protocol.eip712 import Domains
from redemption.config import ServiceSettings
from redemption.dispatch import Dispatcher
from redemption.metrics import ServiceMetrics
from redemption.routing import NodeRegistry
from redemption.store import ModelRate, Store

if TYPE_CHECKING:
    from redemption.audit.service import AuditorRoles

# A mirror that has not completed a sync for this long is treated as lagging.
MIRROR_STALE_SECONDS = 5.0


@dataclass
class ServiceState:
    settings: ServiceSettings
    deployment: Deployment
    ledger: Ledger
    domains: Domains
    store: Store
    registry: NodeRegistry
    dispatcher: Dispatcher
    client: aiohttp.ClientSession
    metrics: ServiceMetrics
    dispatch_signer: str
    mirror: Any = None
    indexer: Any = None
    auditors: AuditorRoles | None = None
    rates: dict[str, ModelRate] = field(default_factory=dict)
    stop: threading.Event = field(default_factory=threading.Event)
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    def mirror_lag(self) -> int | None:
        """Blocks the mirror trails the head by at its last sync; None when unknown or that sync is stale."""
        if self.mirror is None or self.mirror.last_status is None:
            return None
        if time.monotonic() - self.mirror.last_synced > MIRROR_STALE_SECONDS:
            return None
        lag: int = self.mirror.last_status.lag
        return lag

    async def chain_figures(self, payer: str, spender: str) -> ChainFigures | None:
        """None while the mirror is current; else the figures read from the chain itself."""
        lag = self.mirror_lag()
        if lag is not None and lag <= self.settings.mirror_max_lag_blocks:
            return None
        from ledger.chain.views import read_direct

        return await asyncio.to_thread(read_direct, self.ledger, payer, spender)
