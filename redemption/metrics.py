"""Prometheus metrics of the redemption service (its own registry, served at /metrics)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class ServiceMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.calls = Counter("sluice_calls", "Signed calls by outcome", ["endpoint", "outcome"],
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
