"""The settlement workers' settings: the ledger settings plus batching, retry and sweep figures (`SLUICE_*`)."""

from __future__ import annotations

from functools import lru_cache

from pydantic import Field, model_validator

from ledger.config import Settings


class SettlementSettings(Settings):
    """The ledger settings plus the settlement workers' own (`SLUICE_*`)."""

    batch_interval: float = Field(2.0, gt=0, description="seconds between batch cuts (Celery beat)")
    # Gas is paid per (payer, spender) item, not per record, so items decide when a batch is full;
    # the record cap only bounds one cut's memory and transaction.
    batch_max_items: int = Field(
        400, ge=1, description="most (payer, spender) items per batch: bounds its gas (~12-18k per item); "
        "a batch is cut at once when this many pairs wait"
    )
    batch_max: int = Field(50_000, ge=1, description="most usage records per batch (bounds one cut's work, "
                           "not its gas)")
    settlement_wait: float = Field(
        20.0, gt=0, description="seconds a submit task waits for mining or confirmations before it retries later"
    )
    settlement_stuck: float = Field(
        60.0, gt=0, description="a settlement transaction pending this long is sent again at its nonce"
    )
    settlement_retry_max: float = Field(
        10.0, gt=0, description="longest back-off between two retries of a submit task"
    )
    settlement_sweep: float = Field(
        15.0, gt=0, description="an unconfirmed batch no attempt touched this long is enqueued again "
        "(must exceed SLUICE_SETTLEMENT_RETRY_MAX, so a task still retrying is never doubled)"
    )
    settlement_max_open: int = Field(
        16, ge=1, description="no batch is cut while this many are unconfirmed: an outage of the chain ends "
        "in a few full batches rather than many small ones"
    )
    settlement_queue: str = Field("sluice.settlement", min_length=1,
                                  description="broker queue of the settlement tasks (one per deployment)")
    worker_metrics_port: int = Field(9808, ge=0, description="Prometheus port of `sluice worker` (0: none)")

    @model_validator(mode="after")
    def _sweep_after_retries(self) -> SettlementSettings:
        if self.settlement_sweep <= self.settlement_retry_max:
            raise ValueError("SLUICE_SETTLEMENT_SWEEP must be longer than SLUICE_SETTLEMENT_RETRY_MAX")
        return self


@lru_cache(maxsize=1)
def get_settlement_settings() -> SettlementSettings:
    """The process-wide settlement settings, read once."""
    return SettlementSettings()
