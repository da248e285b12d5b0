"""Settings of the redemption service process (the ledger settings plus the service's own)."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import Field, SecretStr

from ledger.config import Settings


class ServiceSettings(Settings):
    api_host: str = Field("127.0.0.1", description="address the API listens on")
    public_rpc_url: str | None = Field(None, description="RPC URL advertised in discovery (default: the one used)")
    max_deadline_seconds: int = Field(300, ge=1, description="how far ahead a signed call's deadline may be")
    max_body_bytes: int = Field(1 << 20, ge=1024, description="largest request body accepted")
    mirror_max_lag_blocks: int = Field(2, ge=0, description="read the chain directly when the mirror is further behind")
    ticket_ttl_seconds: int = Field(120, ge=5, description="lifetime of a dispatch ticket")
    node_stale_seconds: float = Field(10.0, gt=0, description="a node silent this long is not routed to")
    dispatch_key: SecretStr | None = Field(None,
                                        description="key signing dispatch tickets (required off the embedded chain)")
    api_workers: int = Field(
        1, ge=1, le=64, description="service processes sharing the API port (uvicorn workers); one of them follows "
        "the chain for all")
    db_pool_size: int = Field(10, ge=1, description="PostgreSQL connections of the service")
    db_gather_ms: float = Field(
        1.0, ge=0, le=50, description="a busy process's hold and metering statements wait this long for company, "
        "to share one round trip and commit (0: never wait)")
    db_gather_siblings: int = Field(
        4, ge=0, description="a process is busy with more than this many calls open (fewer never wait)")
    node_timeout_seconds: float = Field(30.0, gt=0, description="wait this long for a node's first byte")
    run_mirror: bool = Field(True, description="follow the chain into the mirror tables from this process")
    run_indexer: bool = Field(True, description="index every contract event into chain_events from this process")
    auditor_cache_seconds: float = Field(5.0, ge=0, description="how long an AUDITOR_ROLE check is reused")
    prompt_count_min_bytes: int = Field(
        2048, ge=0, description="bodies this large have their prompt counted by a node instead of bounded by size")
    prompt_count_timeout_seconds: float = Field(
        1.0, gt=0, description="how long admission waits for a node's prompt count before falling back")
    registry_poll_seconds: float = Field(0.5, gt=0, description="how often NodeRegistry's logs are read")
    header_timeout_seconds: float = Field(10.0, gt=0, description="a request's headers must arrive this fast (408)")
    body_timeout_seconds: float = Field(30.0, gt=0, description="a request's body must arrive this fast (408)")
    max_connections: int = Field(1024, ge=1, description="open connections beyond this get 503 too_many_connections")
    metrics_host: str = Field("127.0.0.1", description="address of the operator-only /metrics listener")
    metrics_port: int | None = Field(None, ge=1, le=65535,
                                     description="serve /metrics only on this port (not on the API's)")
    dispatch_attempts: int = Field(3, ge=1, description="nodes tried before answering 503 no_capacity")
    cors_origins: str = Field(
        "", description="comma-separated browser origins allowed to call the public API (/v1, /.well-known, "
        "/audit), or * for any; empty: no CORS headers and preflights refused")
    rate_window_seconds: int = Field(
        60, ge=1, le=3600, description="length of the fixed windows key policies count requests and tokens in "
        "(60: the limits are per minute)")
    chain_name: str = Field("Sluice", description="the chain's name in discovery's wallet_add_ethereum_chain")
    native_currency_name: str = Field("Ether", description="the chain's gas currency, for wallets")
    native_currency_symbol: str = Field("ETH", description="the chain's gas currency symbol, for wallets")
    portal_dir: Path | None = Field(None, description="the built web portal served at /portal/ "
                                    "(default: the repository's portal/dist)")

    @property
    def allowed_origins(self) -> frozenset[str]:
        return frozenset(o.strip().rstrip("/") for o in self.cors_origins.split(",") if o.strip())


@lru_cache(maxsize=1)
def get_service_settings() -> ServiceSettings:
    return ServiceSettings()
