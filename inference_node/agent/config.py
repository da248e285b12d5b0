"""The agent's configuration: :class:`AgentConfig` for the app, :class:`AgentSettings` for the process's secrets."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from inference_node.protocol import DispatchInfo
from ledger.domain import TierName

NODE_KEY_ENV = "SLUICE_NODE_KEY"
DEFAULT_MAX_BODY_BYTES = 8 << 20


class AgentSettings(BaseSettings):
    """The secrets of an agent process, from the environment (never the command line, where ``ps`` shows it)."""

    model_config = SettingsConfigDict(extra="ignore", env_ignore_empty=True)

    node_key: SecretStr | None = Field(
        default=None, validation_alias=NODE_KEY_ENV, description="the node's hex private key; unset or empty: none"
    )


class AgentConfig(BaseModel):
    """Start-up configuration of one node agent.

    With `service_url` the agent learns the chain, Settlement address and dispatch signer from the
    service (`GET /internal/dispatch`), heartbeats to it and POSTs abort receipts to it. Without it
    the agent runs standalone and needs `chain_id`, `settlement` and `dispatch_signer` given here.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    vllm_url: str = Field(default="http://127.0.0.1:8000", description="base URL of the vLLM OpenAI server")
    vllm_api_key: SecretStr | None = Field(default=None, description="the `--api-key` vLLM was started with, if any")
    node_key: SecretStr = Field(description="hex private key; its address signs receipts and heartbeats")
    service_url: str | None = Field(default=None, description="redemption service base URL; None runs standalone")
    public_url: str | None = Field(default=None, description="URL the service dispatches to (required with a service)")
    models: list[str] | None = Field(default=None, description="served model names; None reads vLLM's GET /v1/models")
    tier: TierName = "regional"
    region: str = "local"
    capacity: int = Field(default=256, ge=1, description="concurrent sequences the node serves (vLLM max_num_seqs)")
    heartbeat_interval: float = Field(default=2.0, gt=0, description="seconds between heartbeats")
    chain_id: int | None = Field(default=None, description="standalone: chain id of the EIP-712 domains")
    settlement: str | None = Field(default=None, description="standalone: Settlement address (verifyingContract)")
    dispatch_signer: str | None = Field(default=None, description="standalone: address that signs dispatch tickets")
    ticket_max_lifetime: float = Field(default=600.0, gt=0, description="refuse tickets expiring later ahead")
    clock_skew: float = Field(default=5.0, ge=0, description="seconds of clock drift tolerated")
    dispatch_info_wait: float = Field(default=5.0, ge=0, description="seconds start-up waits for DispatchInfo")
    vllm_timeout: float | None = Field(default=600.0, gt=0, description="seconds per vLLM read; None: forever")
    max_connections: int = Field(default=1024, ge=1, description="connection pool size (vLLM and the service)")
    receipt_post_attempts: int = Field(default=4, ge=1, description="tries to POST an abort receipt to the service")
    # Well above the service's own 1 MiB limit (ServiceSettings.max_body_bytes): it forwards a re-encoded body.
    max_body_bytes: int = Field(default=DEFAULT_MAX_BODY_BYTES, ge=1024,
                                description="largest generation request body read; larger ones are refused (413)")

    @field_validator("vllm_url", "service_url", "public_url")
    @classmethod
    def _strip_trailing_slash(cls, value: str | None) -> str | None:
        return None if value is None else value.rstrip("/")

    @field_validator("node_key")
    @classmethod
    def _check_node_key(cls, value: SecretStr) -> SecretStr:
        text = value.get_secret_value().removeprefix("0x")
        try:
            raw = bytes.fromhex(text)
        except ValueError:
            raise ValueError("node_key must be a hex private key") from None
        if len(raw) != 32:
            raise ValueError("node_key must be 32 bytes")
        return value

    @model_validator(mode="after")
    def _check_topology(self) -> AgentConfig:
        pinned = (self.chain_id, self.settlement, self.dispatch_signer)
        if self.service_url is None and None in pinned:
            raise ValueError("a standalone agent (no service_url) needs chain_id, settlement and dispatch_signer")
        if any(value is not None for value in pinned) and None in pinned:
            raise ValueError("chain_id, settlement and dispatch_signer are given together or not at all")
        if self.service_url is not None and self.public_url is None:
            raise ValueError("public_url is required with service_url: heartbeats tell the service where to dispatch")
        return self

    @property
    def pinned_dispatch(self) -> DispatchInfo | None:
        """The dispatch settings given in the config, which then need not be fetched."""
        if self.chain_id is None or self.settlement is None or self.dispatch_signer is None:
            return None
        return DispatchInfo(chain_id=self.chain_id, settlement=self.settlement, dispatch_signer=self.dispatch_signer)
