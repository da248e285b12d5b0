"""The simulator tests' server harness and known prompts.

Every test talks HTTP to a real uvicorn server on a free loopback port, started by a fixture that
polls ``/health`` with a deadline. The known prompts below were tokenized by hand with the
simulator's template (``<s><|role|>\\ncontent<|end|>\\n...<|assistant|>\\n``; every word,
punctuation mark and tag is one token), so prompt token counts are asserted as literals.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable
from typing import Any

import httpx
import openai
from openai.types.chat import ChatCompletionMessageParam
from prometheus_client.parser import text_string_to_metric_families

from inference_node.sim.api_server import build_simulator_server
from inference_node.sim.config import SimulatorConfig
from inference_node.sim.tokenizer import WordTokenizer
from tests.support import polling

MODEL = "sim-model"


ALIAS = "sim-alias"


MAX_MODEL_LEN = 256


# "<s>", "<|system|>", "You", "are", "terse", ".", "<|end|>",
# "<|user|>", "Say", "hello", ",", "please", ".", "<|end|>", "<|assistant|>"
CHAT_MESSAGES: list[ChatCompletionMessageParam] = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "Say hello, please."},
]


CHAT_PROMPT_TOKENS = 15


# "<s>", "The", "quick", "brown", "fox"
COMPLETION_PROMPT = "The quick brown fox"


COMPLETION_PROMPT_TOKENS = 5


TOKENIZER = WordTokenizer()


def text_tokens(text: str) -> int:
    return len(TOKENIZER.pieces(text))


class RunningSimulator:
    """A simulator served by uvicorn in a background thread on a pre-bound loopback socket."""

    def __init__(self, config: SimulatorConfig) -> None:
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(128)
        self.port: int = self._sock.getsockname()[1]
        self.base_url = f"http://127.0.0.1:{self.port}"
        self._server = build_simulator_server(config, "127.0.0.1", self.port, log_level="warning")
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [self._sock]}, daemon=True)

    def start(self, deadline_seconds: float = 10.0) -> None:
        self._thread.start()
        wait_until(self._healthy, deadline_seconds, f"the simulator on port {self.port} answering /health")

    def _healthy(self) -> bool:
        try:
            return httpx.get(f"{self.base_url}/health", timeout=1.0).status_code == 200
        except httpx.TransportError:
            return False

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=10)
        self._sock.close()

    def openai_client(self, timeout: float = 10.0) -> openai.OpenAI:
        return openai.OpenAI(base_url=f"{self.base_url}/v1", api_key="unused", max_retries=0, timeout=timeout)

    def arm(self, **fault: Any) -> dict[str, Any]:
        response = httpx.post(f"{self.base_url}/sim/faults", json=fault)
        assert response.status_code == 200, response.text
        state: dict[str, Any] = response.json()
        return state

    def metrics(self) -> MetricSamples:
        return MetricSamples(httpx.get(f"{self.base_url}/metrics").text)

    def metric(self, name: str, **labels: str) -> float:
        return self.metrics().value(name, **labels)


class MetricSamples:
    """One scrape of ``/metrics``."""

    def __init__(self, exposition: str) -> None:
        self._samples = [sample for family in text_string_to_metric_families(exposition) for sample in family.samples]

    def value(self, name: str, **labels: str) -> float:
        """The value of the sample ``name`` (e.g. ``vllm:prompt_tokens_total``) with these labels; 0 if absent."""
        for sample in self._samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
        return 0.0

    def total(self, name: str) -> float:
        """The sum of every sample ``name`` over its label sets."""
        return sum(float(sample.value) for sample in self._samples if sample.name == name)


def wait_until(check: Callable[[], Any], timeout: float = 20.0, what: str = "the condition") -> Any:
    """`tests.support.polling.wait_until` on a steady 10 ms beat: engine states here last under a second."""
    return polling.wait_until(check, timeout, what, max_delay=0.01)
