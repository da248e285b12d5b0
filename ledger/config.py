"""The one settings object of a Sluice process, read from the environment.

Embedded defaults (`sluice up`) need no variables at all; production points the
same code at real endpoints with `RPC_URL`, `DATABASE_URL` and `BROKER_URL`.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import AliasChoices, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from ledger.paths import StatePaths, broker_url, postgres_url
from ledger.window import (
    EMBEDDED_SETTLEMENT_BOUND,
    HOLD_LIFETIME,
    MIRROR_LAG_ALLOWANCE,
    PRODUCTION_SETTLEMENT_BOUND,
    RECEIPT_ALLOWANCE,
    Window,
)

# Anvil's well-known development mnemonic: keys for the embedded chain only.
EMBEDDED_MNEMONIC = "test test test test test test test test test test test junk"


class Settings(BaseSettings):
    """Configuration from `SLUICE_*` variables plus the standard endpoint variables."""

    model_config = SettingsConfigDict(env_prefix="SLUICE_", extra="ignore")

    home: Path = Field(Path(".sluice"), description="state dir: chain state, database, broker, deployments")
    rpc_url: str | None = Field(
        None, validation_alias=AliasChoices("RPC_URL", "SLUICE_RPC_URL"), description="EVM JSON-RPC endpoint"
    )
    database_url: str | None = Field(
        None, validation_alias=AliasChoices("DATABASE_URL", "SLUICE_DATABASE_URL"), description="PostgreSQL URL"
    )
    broker_url: str | None = Field(
        None, validation_alias=AliasChoices("BROKER_URL", "SLUICE_BROKER_URL"), description="Celery broker URL"
    )
    chain_ws_url: str | None = Field(
        None, description="websocket endpoint of the chain for newHeads (default: the RPC URL as ws://, as Anvil "
        "serves it; without one the followers poll eth_blockNumber every 0.25 s)",
    )
    chain_port: int = Field(8545, description="port of the embedded Anvil chain")
    api_port: int = Field(8000, description="port of the redemption service")
    node_base_port: int = Field(8100, description="first port of the embedded simulated nodes")
    worker_metrics_port: int = Field(9808, ge=0, description="Prometheus port of the settlement worker (0: none)")
    chain_id: int = Field(31337, description="chain id of the embedded Anvil chain")
    block_time: float = Field(
        0.0, ge=0, le=60,
        description="seconds between blocks of the embedded Anvil chain (interval mining, like a QBFT chain's "
        "block period); 0: a block per transaction",
    )
    anvil_bin: Path | None = Field(None, description="Anvil binary (default: the pinned npm package in node_modules)")
    operator_key: SecretStr | None = Field(None, description="operator private key (default: embedded key #0)")
    settler_key: SecretStr | None = Field(None, description="settler private key (default: embedded key #1)")
    payment_token: str | None = Field(
        None, description="payment ERC-20 of the sale on a production chain (the embedded chain deploys a test one)"
    )
    confirmations: int = Field(0, ge=0, description="blocks to wait after a transaction's receipt")
    tx_timeout: float = Field(120.0, gt=0, description="seconds to wait for a transaction receipt")
    unlock_period: int | None = Field(
        None, ge=60, le=30 * 24 * 60 * 60,
        description="seconds Settlement makes withdrawals and budget cuts wait, set at deploy "
        "(default: 900 on the embedded chain, 86400 elsewhere)",
    )
    models: str = Field(
        "meta-llama/Llama-3.1-8B-Instruct:20:60:edge,Qwen/Qwen2.5-72B-Instruct:120:360:regional",
        description="initial rate card: name:input_tokens_per_1M:output_tokens_per_1M:tier, comma separated",
    )

    hold_lifetime_seconds: int = Field(
        HOLD_LIFETIME, ge=5, description="longest a call may run: it is cut then and charged for what was served"
    )
    receipt_allowance_seconds: int = Field(
        RECEIPT_ALLOWANCE, ge=1, description="how long after the cut a node's receipt may still arrive"
    )
    settlement_bound_seconds: int | None = Field(
        None, ge=1, description="oldest unsettled usage allowed before new calls are refused "
        f"(default {EMBEDDED_SETTLEMENT_BOUND} s on the embedded chain, {PRODUCTION_SETTLEMENT_BOUND} s otherwise)",
    )
    mirror_lag_allowance_seconds: int = Field(
        MIRROR_LAG_ALLOWANCE, ge=1, description="how stale the chain mirror may be before calls read the chain"
    )

    @property
    def effective_settlement_bound(self) -> int:
        if self.settlement_bound_seconds is not None:
            return self.settlement_bound_seconds
        return EMBEDDED_SETTLEMENT_BOUND if self.embedded_chain else PRODUCTION_SETTLEMENT_BOUND

    @property
    def window(self) -> Window:
        """The service's side of Invariant 7, checked against the chain's unlockPeriod at start-up."""
        return Window(self.hold_lifetime_seconds, self.receipt_allowance_seconds, self.effective_settlement_bound,
                      self.mirror_lag_allowance_seconds)

    @property
    def embedded_chain(self) -> bool:
        """True when no external RPC endpoint is configured."""
        return self.rpc_url is None

    @property
    def effective_unlock_period(self) -> int:
        """The unlock period a deployment gets: configured, else the embedded or production default."""
        from ledger.domain import EMBEDDED_UNLOCK_PERIOD, PRODUCTION_UNLOCK_PERIOD

        if self.unlock_period is not None:
            return self.unlock_period
        return EMBEDDED_UNLOCK_PERIOD if self.embedded_chain else PRODUCTION_UNLOCK_PERIOD

    @property
    def effective_rpc_url(self) -> str:
        return self.rpc_url or f"http://127.0.0.1:{self.chain_port}"

    @property
    def state_dir(self) -> Path:
        return self.home.resolve()

    @property
    def effective_database_url(self) -> str:
        """DATABASE_URL, else the embedded PostgreSQL under the state dir."""
        return self.database_url or postgres_url(StatePaths(self.state_dir))

    @property
    def effective_broker_url(self) -> str:
        """BROKER_URL (Redis or RabbitMQ), else the embedded Redis under the state dir."""
        return self.broker_url or broker_url(StatePaths(self.state_dir))

    # secrets read by the CLI and node processes
    keystore_password: SecretStr | None = Field(
        None, description="password of the encrypted keystore a command opens (instead of a prompt)"
    )
    auditor_key: SecretStr | None = Field(None, description="private key of an AUDITOR_ROLE holder for `sluice audit`")
    node_key: SecretStr | None = Field(None, description="receipt-signing private key of an inference node agent")


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read once."""
    return Settings()
