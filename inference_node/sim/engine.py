"""The simulated engine: deterministic generation plans and the scheduler that releases their tokens.

A plan fixes every output token of a request before any latency is modelled; the engine admits
at most ``max_num_seqs`` requests at once (the rest wait in FIFO order) and releases each plan's
tokens on a time-to-first-token plus per-token timeline, recording vLLM's metrics as it goes.
"""

from __future__ import annotations

import asyncio
import hashlib
import random
import time
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Literal

from inference_node.sim.config import SimulatorConfig
from inference_node.sim.metrics import VllmMetrics
from inference_node.sim.protocol import UsageInfo
from inference_node.sim.tokenizer import VOCABULARY

DECISIVE_LOGIT_BIAS = 100.0


def _draw_text_pieces(rng: random.Random, count: int) -> list[str]:
    """Draw ``count`` text tokens of sentence-like prose; each piece is exactly one token."""
    pieces: list[str] = []
    sentence_words = 0
    sentence_length = rng.randint(5, 14)
    capitalise = True
    while len(pieces) < count:
        if sentence_words >= sentence_length:
            pieces.append(".")
            sentence_words = 0
            sentence_length = rng.randint(5, 14)
            capitalise = True
            continue
        word = rng.choice(VOCABULARY)
        if capitalise:
            word = word.capitalize()
        pieces.append(word if not pieces else f" {word}")
        capitalise = False
        sentence_words += 1
        if sentence_words < sentence_length - 1 and rng.random() < 0.08:
            pieces.append(",")
    return pieces[:count]


@dataclass(frozen=True)
class PromptInput:
    """One tokenized prompt and the text that seeds its deterministic completion."""

    token_ids: list[int]
    seed_text: str
    from_text: bool = True  # token-id prompts are taken as they are; text is tokenized (and cut past the context)


@dataclass(frozen=True)
class PlannedChoice:
    """One output sequence: a text piece per output token (``""`` for the final EOS token)."""

    index: int
    prompt_index: int
    pieces: list[str]
    finish_reason: Literal["stop", "length"]

    @property
    def text(self) -> str:
        return "".join(self.pieces)


@dataclass(frozen=True)
class GenerationPlan:
    """Everything a generation request will produce, fixed before any latency is modelled."""

    request_id: str
    model: str
    created: int
    prompts: list[PromptInput]
    choices: list[PlannedChoice]
    max_tokens: list[int]

    @property
    def prompt_tokens(self) -> int:
        return sum(len(prompt.token_ids) for prompt in self.prompts)

    @property
    def completion_tokens(self) -> int:
        return sum(len(choice.pieces) for choice in self.choices)

    def usage(self) -> UsageInfo:
        return UsageInfo(
            prompt_tokens=self.prompt_tokens,
            completion_tokens=self.completion_tokens,
            total_tokens=self.prompt_tokens + self.completion_tokens,
        )


def plan_choice(
    config: SimulatorConfig,
    prompt: PromptInput,
    *,
    index: int,
    prompt_index: int,
    sample_index: int,
    max_tokens: int,
    request_seed: int | None,
    ignore_eos: bool,
    min_tokens: int,
    eos_bias: float = 0.0,
) -> PlannedChoice:
    """Plan one choice: a pure function of (config seed, request seed, sample index, prompt).

    As in vLLM, ``min_tokens`` tokens come before EOS can, and a ``logit_bias`` of +-100 (vLLM's bound)
    on EOS decides it: +100 ends the choice at the first token EOS is allowed, -100 never lets it end.
    """
    material = f"{config.seed}\x1f{request_seed}\x1f{sample_index}\x1f{prompt.seed_text}".encode()
    rng = random.Random(int.from_bytes(hashlib.sha256(material).digest()[:8], "big"))
    if eos_bias >= DECISIVE_LOGIT_BIAS:
        natural_length = min_tokens + 1
    else:
        natural_length = max(rng.randint(config.natural_min_tokens, config.natural_max_tokens), min_tokens + 1, 2)
    if ignore_eos or eos_bias <= -DECISIVE_LOGIT_BIAS or natural_length > max_tokens:
        pieces = _draw_text_pieces(rng, max_tokens)
        return PlannedChoice(index=index, prompt_index=prompt_index, pieces=pieces, finish_reason="length")
    if natural_length == 1:
        return PlannedChoice(index=index, prompt_index=prompt_index, pieces=[""], finish_reason="stop")
    # A natural stop: prose ending in a full stop, then the EOS token, which carries no text.
    text = _draw_text_pieces(rng, natural_length - 2)
    if text and text[-1] in {".", ","}:
        text[-1] = f" {rng.choice(VOCABULARY)}"
    text.append("." if text else rng.choice(VOCABULARY).capitalize())
    return PlannedChoice(index=index, prompt_index=prompt_index, pieces=[*text, ""], finish_reason="stop")


async def _sleep_until(deadline: float) -> bool:
    """Sleep until ``time.monotonic() >= deadline``; False if no sleep was needed.

    Timers may fire up to a millisecond early (uvloop rounds to whole milliseconds), so sleep
    again until the deadline has really passed: a token never leaves before its modelled time.
    """
    slept = False
    while (delay := deadline - time.monotonic()) > 0:
        await asyncio.sleep(delay)
        slept = True
    return slept


class SimulatedEngine:
    """Admits at most ``max_num_seqs`` requests at once and releases their tokens on a timeline.

    A request waits in FIFO order for a slot, then its first token arrives ``ttft_seconds``
    after admission and every further token ``per_token_seconds`` after the previous one; all
    choices of a request advance in lock step. Metrics are recorded as vLLM's engine does:
    prompt tokens at admission, generation tokens as they are produced, latencies at the end.
    """

    def __init__(self, config: SimulatorConfig, metrics: VllmMetrics) -> None:
        self._config = config
        self._metrics = metrics
        self._slots = asyncio.Semaphore(config.max_num_seqs)
        self.running = 0
        self.waiting = 0

    def _publish_queue(self) -> None:
        self._metrics.num_requests_running.set(self.running)
        self._metrics.num_requests_waiting.set(self.waiting)
        self._metrics.num_requests_waiting_for_capacity.set(self.waiting)

    @asynccontextmanager
    async def _slot(self) -> AsyncIterator[None]:
        self.waiting += 1
        self._publish_queue()
        try:
            await self._slots.acquire()
        finally:
            self.waiting -= 1
            self._publish_queue()
        self.running += 1
        self._publish_queue()
        try:
            yield
        finally:
            self.running -= 1
            self._slots.release()
            self._publish_queue()

    async def steps(self, plan: GenerationPlan) -> AsyncGenerator[list[tuple[PlannedChoice, int]], None]:
        """Yield, at each modelled token time, the (choice, token position) pairs produced then.

        Close the iterator (``contextlib.aclosing``) to abort. As in vLLM 0.32, where a client that hangs
        up aborts its request, an aborted request counts only the prompt tokens (if it got a slot) and
        the tokens it made: no ``request_success{finished_reason="abort"}``, no per-request histograms.
        """
        metrics = self._metrics
        arrival = time.monotonic()
        async with self._slot():
            admitted = time.monotonic()
            metrics.prompt_tokens.inc(plan.prompt_tokens)
            produced = {choice.index: 0 for choice in plan.choices}
            first_token_at: float | None = None
            previous_token_at = admitted
            completed = False
            try:
                for step in range(max(len(choice.pieces) for choice in plan.choices)):
                    deadline = admitted + self._config.ttft_seconds + step * self._config.per_token_seconds
                    if not await _sleep_until(deadline) and step % 64 == 63:
                        await asyncio.sleep(0)  # keep a zero-latency long request from starving the loop
                    emitted = [(choice, step) for choice in plan.choices if step < len(choice.pieces)]
                    for choice, _ in emitted:
                        produced[choice.index] += 1
                    metrics.generation_tokens.inc(len(emitted))
                    now = time.monotonic()
                    if first_token_at is None:
                        first_token_at = now
                        metrics.time_to_first_token.observe(now - arrival)
                    else:
                        metrics.inter_token_latency.observe(now - previous_token_at)
                    previous_token_at = now
                    yield emitted
                completed = True
            finally:
                self._record_finish(plan, produced, completed, arrival, admitted, first_token_at)

    def _record_finish(
        self,
        plan: GenerationPlan,
        produced: dict[int, int],
        completed: bool,
        arrival: float,
        admitted: float,
        first_token_at: float | None,
    ) -> None:
        if not completed:
            return
        metrics = self._metrics
        finished = time.monotonic()
        for choice in plan.choices:
            metrics.request_success[choice.finish_reason].inc()
            metrics.request_generation_tokens.observe(produced[choice.index])
        for prompt, max_tokens in zip(plan.prompts, plan.max_tokens, strict=True):
            metrics.request_prompt_tokens.observe(len(prompt.token_ids))
            metrics.request_params_max_tokens.observe(max_tokens)
        metrics.request_params_n.observe(len(plan.choices) // len(plan.prompts))
        prefill_end = first_token_at if first_token_at is not None else finished
        metrics.e2e_request_latency.observe(finished - arrival)
        metrics.request_queue_time.observe(admitted - arrival)
        metrics.request_inference_time.observe(finished - admitted)
        metrics.request_prefill_time.observe(prefill_end - admitted)
        metrics.request_decode_time.observe(finished - prefill_end)
        longest = max(produced.values())
        if longest > 1:
            metrics.request_time_per_output_token.observe((finished - prefill_end) / (longest - 1))
