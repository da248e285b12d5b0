"""Start-up configuration of one simulated vLLM server (:class:`SimulatorConfig`)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator

from inference_node.sim.faults import FaultPlan
from ledger.domain import TierName

DEFAULT_MODEL_NAME = "sluice/sim-llama-3.1-8b-instruct"
REPORTED_VLLM_VERSION = "0.32.0"  # the vLLM release it is checked against (tests/inference_node/recorded)

# Each tier's default latency profile: (time to first token, seconds per further output token)
# when the config leaves them unset.
TIER_LATENCY_SECONDS: dict[TierName, tuple[float, float]] = {
    "edge": (0.02, 0.005),
    "regional": (0.05, 0.01),
    "cloud": (0.1, 0.015),
}


class SimulatorConfig(BaseModel):
    """Start-up configuration of one simulated vLLM server.

    ``ttft_seconds`` and ``per_token_seconds`` default from ``tier``
    (edge 0.02/0.005, regional 0.05/0.01, cloud 0.1/0.015); zero is allowed for benchmarks.
    Like ``vllm serve --served-model-name a b``, all names are aliases of one model and every
    response reports the first name.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    served_model_names: list[str] = Field(default_factory=lambda: [DEFAULT_MODEL_NAME], min_length=1)
    model_path: str | None = Field(default=None, description="ModelCard.root; the first served name if unset.")
    tokenizer: str | None = Field(
        default=None, description="A byte-level BPE tokenizer.json to count with; unset: the built-in word tokenizer."
    )
    tier: TierName = "regional"
    ttft_seconds: float = Field(default_factory=lambda data: TIER_LATENCY_SECONDS[data["tier"]][0], ge=0)
    per_token_seconds: float = Field(default_factory=lambda data: TIER_LATENCY_SECONDS[data["tier"]][1], ge=0)
    max_model_len: int = Field(default=8192, ge=16)
    max_num_seqs: int = Field(default=256, ge=1, description="Requests running at once; the rest wait.")
    seed: int = 0
    natural_min_tokens: int = Field(default=16, ge=2, description="Shortest natural completion, EOS included.")
    natural_max_tokens: int = Field(default=128, ge=2, description="Longest natural completion, EOS included.")
    vllm_version: str = REPORTED_VLLM_VERSION
    faults: FaultPlan = Field(default_factory=FaultPlan)

    @model_validator(mode="after")
    def _check_consistency(self) -> SimulatorConfig:
        if self.natural_min_tokens > self.natural_max_tokens:
            raise ValueError("natural_min_tokens must not exceed natural_max_tokens")
        if len(set(self.served_model_names)) != len(self.served_model_names):
            raise ValueError("served_model_names must be unique")
        return self

    @property
    def model_name(self) -> str:
        """The name vLLM reports in responses and in the ``model_name`` metric label."""
        return self.served_model_names[0]
