"""Prometheus metrics of the redemption service (its own registry, served at /metrics)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

# The billable routes, as `sluice_calls_total{endpoint}` names them, and the outcomes it counts.
CALL_ENDPOINTS = {"/v1/chat/completions": "chat", "/v1/completions": "completions"}
CALL_OUTCOMES = ("answered", "refused", "failed")
# Why a node receipt is refused (redemption.metering's checks, and the two the service adds).
BAD_RECEIPT_REASONS = ("malformed", "unknown_node", "signer", "signature", "fields", "cost", "over_max_cost")


class ServiceMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.calls = Counter("sluice_calls", "Billable calls by endpoint (chat, completions) and outcome "
                             "(answered, refused, failed)", ["endpoint", "outcome"],
                             registry=self.registry)
        self.refusals = Counter("sluice_refusals", "Refused calls by error code", ["code"], registry=self.registry)
        self.metered_cost = Counter("sluice_metered_cost_base_units", "Compute-token base units metered",
                                    registry=self.registry)
        self.dispatch_retries = Counter("sluice_dispatch_retries", "Dispatches retried on another node",
                                        registry=self.registry)
        self.bad_receipts = Counter("sluice_bad_receipts", "Node receipts refused", ["reason"],
                                    registry=self.registry)
        self.unreceipted = Counter("sluice_unreceipted_calls", "Calls charged fail-closed from relayed usage, "
                                   "without an acceptable node receipt", ["reason"], registry=self.registry)
        self.overhead = Histogram("sluice_gateway_overhead_seconds", "Time spent in the service outside the node",
                                  buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.5),
                                  registry=self.registry)
        self.mirror_lag = Gauge("sluice_mirror_lag_blocks", "Chain mirror lag behind the head",
                                registry=self.registry)
        self.open_holds = Gauge("sluice_open_holds", "Holds taken and not yet metered", registry=self.registry)
        # Every series a dashboard asks for exists from the start, at 0, not only after its first event.
        for endpoint in CALL_ENDPOINTS.values():
            for outcome in CALL_OUTCOMES:
                self.calls.labels(endpoint, outcome)
        for reason in BAD_RECEIPT_REASONS:
            self.bad_receipts.labels(reason)




def call_outcome(status: int) -> str:
    """`sluice_calls_total{outcome}`: answered (2xx), refused (4xx: signature, funds, input, limits) or failed."""
    if status < 400:
        return "answered"
    return "refused" if status < 500 else "failed"


class CallCounter:
    """ASGI middleware: counts every billable call by endpoint and outcome once its status is sent.

    A streamed call counts when its headers go out (its status is settled then). A call whose
    client left before any answer counts as failed.
    """

    def __init__(self, app: Any, metrics: Callable[[], ServiceMetrics | None]) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        endpoint = CALL_ENDPOINTS.get(scope.get("path", "")) if scope["type"] == "http" else None
        if endpoint is None or scope.get("method") != "POST":
            await self.app(scope, receive, send)
            return
        status: list[int] = []

        async def counted(message: Any) -> None:
            if message["type"] == "http.response.start" and not status:
                status.append(int(message["status"]))
                self._count(endpoint, int(message["status"]))
            await send(message)

        try:
            await self.app(scope, receive, counted)
        finally:
            if not status:
                self._count(endpoint, 500)

    def _count(self, endpoint: str, status: int) -> None:
        metrics = self.metrics()
        if metrics is not None:
            metrics.calls.labels(endpoint, call_outcome(status)).inc()
