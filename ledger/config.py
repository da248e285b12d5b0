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
    chain_port: int = Field(8545, description="port of the embedded Anvil chain")
    api_port: int = Field(8000, description="port of the redemption service")
    node_base_port: int = Field(8100, description="first port of the embedded simulated nodes")
    worker_metrics_port: int = Field(9808, ge=0, description="Prometheus port of the settlement worker (0: none)")
    chain_id: int = Field(31337, description="chain id of the embedded Anvil chain")
    anvil_bin: Path | None = Field(None, description="Anvil binary (default: the pinned npm package in node_modules)")
    operator_key: SecretStr | None = Field(None, description="operator private key (default: embedded key #0)")
    settler_key: SecretStr | None = Field(None, description="settler private key (default: embedded key #1)")
    payment_token: str | None = Field(
        None, description="payment ERC-20 of the sale on a production chain (the embedded chain deploys a test one)"
    )
    confirmations: int = Field(0, ge=0, description="blocks to wait after a transaction's receipt")
    tx_timeout: float = Field(120.0, gt=0, description="seconds to wait for a transaction receipt")
    models: str = Field(
        "meta-llama/Llama-3.1-8B-Instruct:20:60:edge,Qwen/Qwen2.5-72B-Instruct:120:360:regional",
        description="initial rate card: name:input_tokens_per_1M:output_tokens_per_1M:tier, comma separated",
    )

    @property
    def embedded_chain(self) -> bool:
        """True when no external RPC endpoint is configured."""
        return self.rpc_url is None

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
