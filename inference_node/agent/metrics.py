"""The agent's own Prometheus metrics (``sluice_node_*``); vLLM's stay on vLLM's ``/metrics``."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest


class AgentMetrics:
    """The agent's Prometheus metrics, in a registry of its own (vLLM's stay on vLLM's /metrics)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "sluice_node_requests", "Generation requests by endpoint and HTTP status answered.",
            ["endpoint", "status"], registry=self.registry,
        )  # fmt: skip
        self.model_tokens = Counter(
            "sluice_node_model_tokens", "Model tokens in signed receipts.", ["kind"], registry=self.registry
        )
        self.ticket_rejections = Counter(
            "sluice_node_ticket_rejections", "Requests refused for their ticket, by code.", ["code"],
            registry=self.registry,
        )  # fmt: skip
        self.forward_latency = Histogram(
            "sluice_node_forward_latency_seconds",
            "Time vLLM took to answer: the whole body, or the response head for streams.",
            ["endpoint", "stream"],
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0),
            registry=self.registry,
        )
        self.receipts = Counter(
            "sluice_node_receipts", "Receipts signed, by how they went to the service.", ["delivery"],
            registry=self.registry,
        )  # fmt: skip
        self.receipt_post_failures = Counter(
            "sluice_node_receipt_post_failures", "Abort receipts the service never acknowledged.",
            registry=self.registry,
        )  # fmt: skip
        self.streams = Counter("sluice_node_streams", "Streams by how they ended.", ["outcome"], registry=self.registry)
        # Every call counts into a few labelled children: each is looked up once, not by `.labels()` per call.
        self._counted: dict[tuple[Counter, tuple[str, ...]], Counter] = {}
        self._timed: dict[tuple[str, str], Histogram] = {}

    def _count(self, metric: Counter, *labels: str) -> Counter:
        child = self._counted.get((metric, labels))
        if child is None:
            child = self._counted[metric, labels] = metric.labels(*labels)
        return child

    def request_answered(self, endpoint: str, status: int) -> None:
        self._count(self.requests, endpoint, str(status)).inc()

    def ticket_rejected(self, code: str) -> None:
        self._count(self.ticket_rejections, code).inc()

    def stream_ended(self, outcome: str) -> None:
        self._count(self.streams, outcome).inc()

    def receipted(self, delivery: str, prompt_tokens: int, completion_tokens: int) -> None:
        self._count(self.receipts, delivery).inc()
        self._count(self.model_tokens, "prompt").inc(prompt_tokens)
        self._count(self.model_tokens, "completion").inc(completion_tokens)

    def forwarded(self, endpoint: str, stream: bool, seconds: float) -> None:
        """How long vLLM took to answer (the whole body, or a stream's head)."""
        key = (endpoint, "true" if stream else "false")
        child = self._timed.get(key)
        if child is None:
            child = self._timed[key] = self.forward_latency.labels(*key)
        child.observe(seconds)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
