"""Simulator configuration."""

from __future__ import annotations

import pytest

from inference_node.sim.config import SimulatorConfig


def test_latency_defaults_come_from_the_tier_and_zero_is_allowed() -> None:
    edge = SimulatorConfig(tier="edge")
    assert (edge.ttft_seconds, edge.per_token_seconds) == (0.02, 0.005)
    regional = SimulatorConfig()
    assert (regional.tier, regional.ttft_seconds, regional.per_token_seconds) == ("regional", 0.05, 0.01)
    cloud = SimulatorConfig.model_validate({"tier": "cloud"})
    assert (cloud.ttft_seconds, cloud.per_token_seconds) == (0.1, 0.015)
    bench = SimulatorConfig(tier="cloud", ttft_seconds=0, per_token_seconds=0)
    assert (bench.ttft_seconds, bench.per_token_seconds) == (0, 0)
    with pytest.raises(ValueError, match="greater than or equal to 0"):
        SimulatorConfig(ttft_seconds=-0.1)
