"""Fixtures of the simulator tests: the servers each test module starts once."""

from __future__ import annotations

from collections.abc import Iterator

import openai
import pytest

from inference_node.sim.config import SimulatorConfig
from tests.inference_node.sim.support import ALIAS, MAX_MODEL_LEN, MODEL, RunningSimulator


@pytest.fixture(scope="module")
def sim() -> Iterator[RunningSimulator]:
    """Zero-latency simulator; natural completions (20..60 tokens) outrun the completions default of 16."""
    config = SimulatorConfig(
        served_model_names=[MODEL, ALIAS],
        ttft_seconds=0,
        per_token_seconds=0,
        max_model_len=MAX_MODEL_LEN,
        seed=7,
        natural_min_tokens=20,
        natural_max_tokens=60,
    )
    server = RunningSimulator(config)
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def slow_sim() -> Iterator[RunningSimulator]:
    """One sequence at a time, 0.1 s to the first token and 0.02 s per further token."""
    config = SimulatorConfig(
        served_model_names=[MODEL],
        ttft_seconds=0.1,
        per_token_seconds=0.02,
        max_model_len=MAX_MODEL_LEN,
        max_num_seqs=1,
    )
    server = RunningSimulator(config)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def client(sim: RunningSimulator) -> Iterator[openai.OpenAI]:
    with sim.openai_client() as api:
        yield api


@pytest.fixture
def faulty(sim: RunningSimulator) -> Iterator[RunningSimulator]:
    """The zero-latency simulator, disarmed again after the test."""
    yield sim
    sim.arm(mode="none")
