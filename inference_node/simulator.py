"""vLLM OpenAI-compatible API simulator, the development and CI stand-in for ``vllm serve``.

This module owns everything the simulator is: its configuration (:class:`SimulatorConfig`), the
wire models that mirror vLLM's ``vllm/entrypoints/openai`` protocol classes field for field, a
deterministic word-level tokenizer and chat template, the deterministic text generator, the
engine model (a ``max_num_seqs`` concurrency limit with a waiting queue, time-to-first-token and
per-token latency), vLLM's Prometheus metrics in a registry private to each app, runtime fault
injection, and the FastAPI app factory (:func:`create_simulator_app`) plus the uvicorn runner
(:func:`run_simulator`).

Behaviour follows vLLM's OpenAI server (current ``main``, the 0.3x line):

* ``POST /v1/chat/completions`` and ``POST /v1/completions`` (``stream`` with SSE
  ``data: {...}\\n\\n`` frames closed by ``data: [DONE]\\n\\n``; ``stream_options.include_usage``
  adds a last chunk with ``choices: []`` and the usage; ``continuous_usage_stats`` adds usage to
  every chunk), ``POST /tokenize``, ``GET /v1/models``, ``GET /health``, ``GET /metrics`` and
  ``GET /version``.
* Errors use vLLM's envelope ``{"error": {"message", "type", "param", "code"}}``: 404
  ``NotFoundError`` for an unknown model, 400 ``BadRequestError`` for context-length violations
  (with vLLM's ``(parameter=..., value=...)`` suffix), 400 ``Bad Request`` for schema errors.
* Chat ``max_tokens`` defaults to ``max_model_len - prompt_tokens``; completions default to 16.
* A natural stop ends with an EOS token that counts as a completion token and carries no text,
  as in vLLM, so the last streamed delta of a ``"stop"`` choice is ``""``.

The simulator extension is ``GET``/``POST /sim/faults``: ``error`` answers with an HTTP error
in vLLM's envelope, ``timeout`` hangs before the first byte until the client gives up, and
``drop_mid_stream`` streams ``after_tokens`` tokens and then closes the TCP connection without
``[DONE]`` (a non-stream request loses its connection without any response), and ``delay`` holds
each request ``delay_seconds`` before the engine takes it (a stalled queue).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import random
import re
import secrets
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Sequence
from contextlib import aclosing, asynccontextmanager
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any, ClassVar, Literal, Protocol, TypeVar, cast

import uvicorn
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from pydantic import BaseModel, ConfigDict, Field, model_validator
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import Receive, Scope, Send

from ledger.domain import TierName

logger = logging.getLogger(__name__)

DEFAULT_MODEL_NAME = "sluice/sim-llama-3.1-8b-instruct"
REPORTED_VLLM_VERSION = "0.33.0"
VOCAB_SIZE = 32_000
BOS_TOKEN = "<s>"
EOS_TOKEN = "</s>"
FINISHED_REASONS = ("stop", "length", "abort", "error")

_T = TypeVar("_T")

# ---------------------------------------------------------------------------------------------
# Configuration
# ---------------------------------------------------------------------------------------------


# Each tier's default latency profile: (time to first token, seconds per further output token)
# when the config leaves them unset.
TIER_LATENCY_SECONDS: dict[TierName, tuple[float, float]] = {
    "edge": (0.02, 0.005),
    "regional": (0.05, 0.01),
    "cloud": (0.1, 0.015),
}

FaultMode = Literal["none", "error", "timeout", "drop_mid_stream", "delay"]


class FaultPlan(BaseModel):
    """A fault to inject into the next ``count`` generation requests (``None`` = every one).

    Faults apply to ``/v1/chat/completions`` and ``/v1/completions`` requests that passed
    validation (model, schema, context length); other endpoints are never affected.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    mode: FaultMode = "none"
    status: int = Field(default=500, ge=400, le=599, description="HTTP status for mode 'error'.")
    after_tokens: int = Field(default=3, ge=0, description="Tokens sent before 'drop_mid_stream' drops.")
    count: int | None = Field(default=None, ge=1, description="Requests affected; None means all.")
    message: str | None = Field(default=None, description="Error message for mode 'error'.")
    delay_seconds: float = Field(default=1.0, ge=0, le=60, description="Wait before answering for mode 'delay'.")


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


# ---------------------------------------------------------------------------------------------
# Wire models (mirrors of vLLM's protocol classes; field order is vLLM's serialisation order)
# ---------------------------------------------------------------------------------------------


class OpenAIBaseModel(BaseModel):
    """Like vLLM's base: the OpenAI API allows extra fields, which are accepted and ignored."""

    model_config = ConfigDict(extra="allow")


class ErrorInfo(OpenAIBaseModel):
    message: str
    type: str
    param: str | None = None
    code: int


class ErrorResponse(OpenAIBaseModel):
    error: ErrorInfo


class ModelPermission(OpenAIBaseModel):
    id: str = Field(default_factory=lambda: f"modelperm-{secrets.token_hex(16)}")
    object: str = "model_permission"
    created: int = Field(default_factory=lambda: int(time.time()))
    allow_create_engine: bool = False
    allow_sampling: bool = True
    allow_logprobs: bool = True
    allow_search_indices: bool = False
    allow_view: bool = True
    allow_fine_tuning: bool = False
    organization: str = "*"
    group: str | None = None
    is_blocking: bool = False


class ModelCard(OpenAIBaseModel):
    id: str
    object: str = "model"
    created: int = Field(default_factory=lambda: int(time.time()))
    owned_by: str = "vllm"
    root: str | None = None
    parent: str | None = None
    max_model_len: int | None = None
    permission: list[ModelPermission] = Field(default_factory=list)


class ModelList(OpenAIBaseModel):
    object: str = "list"
    data: list[ModelCard] = Field(default_factory=list)


class PromptTokenUsageInfo(OpenAIBaseModel):
    cached_tokens: int | None = None


class UsageInfo(OpenAIBaseModel):
    prompt_tokens: int = 0
    total_tokens: int = 0
    completion_tokens: int | None = 0
    prompt_tokens_details: PromptTokenUsageInfo | None = None


class StreamOptions(OpenAIBaseModel):
    include_usage: bool | None = True
    continuous_usage_stats: bool | None = False


class RequestFieldError(ValueError):
    """A request-model check that names the offending parameter, like vLLM's VLLMValidationError."""

    def __init__(self, message: str, *, parameter: str | None = None) -> None:
        super().__init__(message)
        self.parameter = parameter


class ChatContentPart(OpenAIBaseModel):
    type: str
    text: str | None = None


class ChatMessageParam(OpenAIBaseModel):
    role: str
    content: str | list[ChatContentPart] | None = None
    name: str | None = None


class ChatCompletionRequest(OpenAIBaseModel):
    """The subset of vLLM's ChatCompletionRequest the simulator acts on; other fields are ignored."""

    messages: list[ChatMessageParam]
    model: str | None = None
    logprobs: bool | None = False
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    n: int | None = 1
    seed: int | None = None
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    ignore_eos: bool = False
    min_tokens: int = 0
    echo: bool = False
    add_generation_prompt: bool = True
    continue_final_message: bool = False
    add_special_tokens: bool = False
    request_id: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _check_stream_options(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("stream_options") and not data.get("stream"):
            raise RequestFieldError(
                "Stream options can only be defined when `stream=True`.", parameter="stream_options"
            )
        return data

    @model_validator(mode="before")
    @classmethod
    def _check_generation_prompt(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("continue_final_message") and data.get("add_generation_prompt"):
            raise ValueError("Cannot set both `continue_final_message` and `add_generation_prompt` to True.")
        return data


class CompletionRequest(OpenAIBaseModel):
    """The subset of vLLM's CompletionRequest the simulator acts on; other fields are ignored."""

    model: str | None = None
    prompt: list[int] | list[list[int]] | str | list[str] | None = None
    echo: bool | None = False
    logprobs: int | None = None
    max_tokens: int | None = 16
    n: int = 1
    seed: int | None = None
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    ignore_eos: bool = False
    min_tokens: int = 0
    add_special_tokens: bool = True
    request_id: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _check_stream_options(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("stream_options") and not data.get("stream"):
            raise RequestFieldError(
                "Stream options can only be defined when `stream=True`.", parameter="stream_options"
            )
        return data

    @model_validator(mode="before")
    @classmethod
    def _check_prompt(cls, data: Any) -> Any:
        if isinstance(data, dict):
            prompt = data.get("prompt")
            if prompt is None or prompt == "" or prompt == []:
                raise ValueError("Either prompt or prompt_embeds must be provided and non-empty.")
        return data


class ChatMessage(OpenAIBaseModel):
    role: str
    content: str | None = None
    refusal: str | None = None
    annotations: dict[str, Any] | None = None
    audio: dict[str, Any] | None = None
    function_call: dict[str, Any] | None = None
    tool_calls: list[dict[str, Any]] = Field(default_factory=list)
    reasoning: str | None = None


class ChatCompletionResponseChoice(OpenAIBaseModel):
    index: int
    message: ChatMessage
    logprobs: dict[str, Any] | None = None
    finish_reason: str | None = "stop"
    stop_reason: int | str | None = None
    token_ids: list[int] | None = None


class ChatCompletionResponse(OpenAIBaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatCompletionResponseChoice]
    service_tier: str | None = None
    system_fingerprint: str | None = None
    usage: UsageInfo
    prompt_logprobs: list[Any] | None = None
    prompt_token_ids: list[int] | None = None
    kv_transfer_params: dict[str, Any] | None = None


class DeltaMessage(OpenAIBaseModel):
    role: str | None = None
    content: str | None = None
    tool_calls: list[dict[str, Any]] = Field(default_factory=list)


class ChatCompletionResponseStreamChoice(OpenAIBaseModel):
    index: int
    delta: DeltaMessage
    logprobs: dict[str, Any] | None = None
    finish_reason: str | None = None
    stop_reason: int | str | None = None
    token_ids: list[int] | None = None


class ChatCompletionStreamResponse(OpenAIBaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChatCompletionResponseStreamChoice]
    usage: UsageInfo | None = None
    prompt_token_ids: list[int] | None = None


class CompletionResponseChoice(OpenAIBaseModel):
    index: int
    text: str
    logprobs: dict[str, Any] | None = None
    finish_reason: str | None = None
    stop_reason: int | str | None = None
    token_ids: list[int] | None = None
    prompt_logprobs: list[Any] | None = None
    prompt_token_ids: list[int] | None = None


class CompletionResponse(OpenAIBaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionResponseChoice]
    service_tier: str | None = None
    system_fingerprint: str | None = None
    usage: UsageInfo
    kv_transfer_params: dict[str, Any] | None = None


class CompletionResponseStreamChoice(OpenAIBaseModel):
    index: int
    text: str
    logprobs: dict[str, Any] | None = None
    finish_reason: str | None = None
    stop_reason: int | str | None = None
    prompt_token_ids: list[int] | None = None
    token_ids: list[int] | None = None


class CompletionStreamResponse(OpenAIBaseModel):
    id: str
    object: str = "text_completion"
    created: int
    model: str
    choices: list[CompletionResponseStreamChoice]
    usage: UsageInfo | None = None


class TokenizeCompletionRequest(OpenAIBaseModel):
    model: str | None = None
    prompt: str
    add_special_tokens: bool = True
    return_token_strs: bool | None = False


class TokenizeChatRequest(OpenAIBaseModel):
    model: str | None = None
    messages: list[ChatMessageParam]
    add_generation_prompt: bool = True
    continue_final_message: bool = False
    add_special_tokens: bool = False
    return_token_strs: bool | None = False

    @model_validator(mode="before")
    @classmethod
    def _check_generation_prompt(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("continue_final_message") and data.get("add_generation_prompt"):
            raise ValueError("Cannot set both `continue_final_message` and `add_generation_prompt` to True.")
        return data


class TokenizeResponse(OpenAIBaseModel):
    count: int
    max_model_len: int
    tokens: list[int]
    token_strs: list[str] | None = None


class VersionResponse(BaseModel):
    version: str


class FaultState(BaseModel):
    """The fault currently armed; ``count`` is how many requests it still affects (None = all)."""

    mode: FaultMode
    status: int
    after_tokens: int
    count: int | None
    message: str | None
    delay_seconds: float


# ---------------------------------------------------------------------------------------------
# Errors: one tree, mapped onto vLLM's error envelope in one place (SimulatorError.to_response)
# ---------------------------------------------------------------------------------------------


class SimulatorError(Exception):
    """A request the simulator refuses, answered like vLLM's ``create_error_response``."""

    status: HTTPStatus = HTTPStatus.BAD_REQUEST
    err_type: str = "BadRequestError"

    def __init__(self, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param

    def to_response(self) -> Response:
        body = ErrorResponse(
            error=ErrorInfo(message=self.message, type=self.err_type, param=self.param, code=self.status.value)
        )
        return _json_response(body, status_code=self.status.value)


class InvalidRequestError(SimulatorError):
    """400, like vLLM's VLLMValidationError: the message gains ``(parameter=..., value=...)``."""

    def __init__(self, message: str, *, parameter: str | None = None, value: object = None) -> None:
        extras = []
        if parameter is not None:
            extras.append(f"parameter={parameter}")
        if value is not None:
            extras.append(f"value={value}")
        super().__init__(f"{message} ({', '.join(extras)})" if extras else message, param=parameter)


class ModelNotFoundError(SimulatorError):
    """404 for a model name the server does not serve."""

    status = HTTPStatus.NOT_FOUND
    err_type = "NotFoundError"

    def __init__(self, model: str | None) -> None:
        super().__init__(f"The model `{model}` does not exist.", param="model")


class InjectedError(SimulatorError):
    """An error answered because fault injection is armed in mode ``error``."""

    _TYPES: ClassVar[dict[int, str]] = {
        400: "BadRequestError",
        404: "NotFoundError",
        500: "InternalServerError",
        501: "NotImplementedError",
    }

    def __init__(self, status: int, message: str | None) -> None:
        http_status = HTTPStatus(status)
        default_message = "Internal server error" if status == 500 else http_status.phrase
        super().__init__(message or default_message)
        self.status = http_status
        self.err_type = self._TYPES.get(status, http_status.phrase.replace(" ", "").replace("-", "") + "Error")


class SimulatedConnectionDrop(RuntimeError):
    """Raised to drop a connection when the ASGI server exposes no transport to close."""


def _json_response(model: BaseModel, *, status_code: int = 200) -> Response:
    return Response(content=model.model_dump_json(), status_code=status_code, media_type="application/json")


# ---------------------------------------------------------------------------------------------
# Tokenizer, chat template and deterministic text
# ---------------------------------------------------------------------------------------------

_TOKEN_PATTERN = re.compile(r"<\|[a-z_]+\|>|</?s>|\w+|[^\w\s]")
_SPECIAL_TOKEN_IDS = {
    "<unk>": 0,
    BOS_TOKEN: 1,
    EOS_TOKEN: 2,
    "<|system|>": 3,
    "<|user|>": 4,
    "<|assistant|>": 5,
    "<|tool|>": 6,
    "<|developer|>": 7,
    "<|end|>": 8,
}
_FIRST_HASHED_ID = 1000

# fmt: off
VOCABULARY = (
    "the", "of", "and", "to", "in", "is", "that", "for", "it", "as", "with", "was", "on", "be", "by", "at", "this",
    "from", "are", "or", "an", "which", "have", "not", "one", "all", "were", "when", "there", "can", "more", "time",
    "will", "some", "what", "about", "into", "than", "them", "only", "other", "new", "also", "these", "two", "may",
    "first", "then", "do", "any", "like", "my", "now", "over", "such", "our", "man", "me", "even", "most", "made",
    "after", "many", "before", "must", "through", "back", "years", "where", "much", "your", "way", "well", "down",
    "should", "because", "each", "just", "those", "people", "how", "too", "little", "state", "good", "very", "make",
    "world", "still", "own", "see", "men", "work", "long", "get", "here", "between", "both", "life", "being",
    "under", "never", "day", "same", "another", "know", "while", "last", "might", "us", "great", "old", "year",
    "off", "come", "since", "against", "go", "came", "right", "used", "take", "three", "small", "large", "next",
    "early", "young", "important", "few", "public", "bad", "able", "model", "token", "compute", "ledger", "node",
    "signal", "river", "market", "engine", "value", "stream", "batch", "cloud", "edge", "region", "settle",
    "budget", "answer", "reason", "number", "system", "network", "energy", "light", "water", "stone", "garden",
    "letter", "window", "morning", "evening", "history", "science", "music", "paper", "story",
)
# fmt: on
_VOCABULARY_IDS = {word: 100 + index for index, word in enumerate(VOCABULARY)}


class WordTokenizer:
    """A deterministic tokenizer: every word, punctuation mark or special tag is one token.

    Whitespace is not a token, so ``pieces(text)`` of a generated completion counts exactly its
    text tokens. ``<s>`` (BOS) and ``</s>`` (EOS) are special tokens, as in Llama tokenizers.
    """

    def pieces(self, text: str) -> list[str]:
        return _TOKEN_PATTERN.findall(text)

    def token_id(self, piece: str) -> int:
        known = _SPECIAL_TOKEN_IDS.get(piece)
        if known is None:
            known = _VOCABULARY_IDS.get(piece)
        if known is not None:
            return known
        digest = hashlib.blake2b(piece.encode(), digest_size=8).digest()
        return _FIRST_HASHED_ID + int.from_bytes(digest, "big") % (VOCAB_SIZE - _FIRST_HASHED_ID)

    def encode(self, text: str, *, add_special_tokens: bool) -> list[int]:
        ids = [self.token_id(piece) for piece in self.pieces(text)]
        return [_SPECIAL_TOKEN_IDS[BOS_TOKEN], *ids] if add_special_tokens else ids

    def encode_with_pieces(self, text: str, *, add_special_tokens: bool) -> tuple[list[int], list[str]]:
        pieces = self.pieces(text)
        if add_special_tokens:
            pieces = [BOS_TOKEN, *pieces]
        return [self.token_id(piece) for piece in pieces], pieces


def message_text(message: ChatMessageParam) -> str:
    """The text of a chat message; text parts are joined with newlines as vLLM's parser does."""
    if message.content is None:
        return ""
    if isinstance(message.content, str):
        return message.content
    texts = []
    for part in message.content:
        if part.type != "text" or part.text is None:
            raise InvalidRequestError(f"The simulated model is text-only and cannot take a `{part.type}` content part.")
        texts.append(part.text)
    return "\n".join(texts)


def render_chat_prompt(
    messages: Sequence[ChatMessageParam], *, add_generation_prompt: bool, continue_final_message: bool
) -> str:
    """Render messages through the simulator's chat template (BOS, role tags, end tags)."""
    parts = [BOS_TOKEN]
    for position, message in enumerate(messages):
        open_ended = continue_final_message and position == len(messages) - 1
        parts.append(f"<|{message.role}|>\n{message_text(message)}")
        if not open_ended:
            parts.append("<|end|>\n")
    if add_generation_prompt:
        parts.append("<|assistant|>\n")
    return "".join(parts)


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
) -> PlannedChoice:
    """Plan one choice: a pure function of (config seed, request seed, sample index, prompt)."""
    material = f"{config.seed}\x1f{request_seed}\x1f{sample_index}\x1f{prompt.seed_text}".encode()
    rng = random.Random(int.from_bytes(hashlib.sha256(material).digest()[:8], "big"))
    natural_length = max(rng.randint(config.natural_min_tokens, config.natural_max_tokens), min_tokens, 2)
    if ignore_eos or natural_length > max_tokens:
        pieces = _draw_text_pieces(rng, max_tokens)
        return PlannedChoice(index=index, prompt_index=prompt_index, pieces=pieces, finish_reason="length")
    # A natural stop: prose ending in a full stop, then the EOS token, which carries no text.
    text = _draw_text_pieces(rng, natural_length - 2)
    if text and text[-1] in {".", ","}:
        text[-1] = f" {rng.choice(VOCABULARY)}"
    text.append("." if text else rng.choice(VOCABULARY).capitalize())
    return PlannedChoice(index=index, prompt_index=prompt_index, pieces=[*text, ""], finish_reason="stop")


def resolve_max_tokens(config: SimulatorConfig, prompt_tokens: int, requested: int | None, *, output_param: str) -> int:
    """Validate lengths and return the effective max_tokens, as vLLM's renderer and SamplingParams do.

    The messages (including the missing space and the ``=`` debug rendering in the first one)
    are vLLM's verbatim, so clients parsing them behave the same against the simulator.
    """
    max_model_len = config.max_model_len
    max_output_tokens = requested or 0
    if max_output_tokens > max_model_len:
        raise InvalidRequestError(
            f"{output_param}={max_output_tokens}cannot be greater than "
            f"max_model_len=max_total_tokens={max_model_len}. Please request fewer output tokens.",
            parameter=output_param,
            value=max_output_tokens,
        )
    max_input_tokens = max_model_len - max_output_tokens
    if prompt_tokens > max_input_tokens:
        raise InvalidRequestError(
            f"You passed {prompt_tokens} input tokens and requested {max_output_tokens} output tokens. "
            f"However, the model's context length is only {max_model_len} tokens, resulting in a maximum "
            f"input length of {max_input_tokens} tokens. Please reduce the length of the input prompt.",
            parameter="input_tokens",
            value=prompt_tokens,
        )
    default_max_tokens = max_model_len - prompt_tokens
    effective = default_max_tokens if requested is None else min(requested, default_max_tokens)
    if effective < 1:
        raise InvalidRequestError(
            f"max_tokens must be at least 1, got {effective}.", parameter="max_tokens", value=effective
        )
    return effective


def base_request_id(request: Request, body_request_id: str | None) -> str:
    """vLLM's ``_base_request_id``: the X-Request-Id header, else the body's id, else random hex."""
    return request.headers.get("X-Request-Id") or body_request_id or secrets.token_hex(16)


# ---------------------------------------------------------------------------------------------
# Metrics
# ---------------------------------------------------------------------------------------------


def build_1_2_5_buckets(max_value: int) -> list[float]:
    """vLLM's ``build_1_2_5_buckets``: 1, 2, 5, 10, 20, 50, ... up to ``max_value``."""
    buckets: list[float] = []
    exponent = 0
    while True:
        for mantissa in (1, 2, 5):
            value = mantissa * 10**exponent
            if value > max_value:
                return buckets
            buckets.append(float(value))
        exponent += 1


_TTFT_BUCKETS = [
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0,
    2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0,
]  # fmt: skip
_TPOT_BUCKETS = [
    0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0,
]  # fmt: skip
_REQUEST_LATENCY_BUCKETS = [
    0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0,
    120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0,
]  # fmt: skip


class VllmMetrics:
    """vLLM v1's Prometheus metrics (``vllm/v1/metrics/loggers.py``) in a registry of their own.

    Every series carries the labels ``model_name`` (the first served name) and ``engine="0"``.
    """

    def __init__(self, model_name: str, max_model_len: int) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        names = ["model_name", "engine"]
        values = (model_name, "0")
        registry = self.registry

        def histogram(name: str, documentation: str, buckets: Sequence[float]) -> Histogram:
            return Histogram(name, documentation, names, buckets=buckets, registry=registry).labels(*values)

        self.num_requests_running = Gauge(
            "vllm:num_requests_running", "Number of requests in model execution batches.", names, registry=registry
        ).labels(*values)
        self.num_requests_waiting = Gauge(
            "vllm:num_requests_waiting", "Number of requests waiting to be processed.", names, registry=registry
        ).labels(*values)
        self.num_preemptions = Counter(
            "vllm:num_preemptions_total", "Cumulative number of preemption from the engine.", names, registry=registry
        ).labels(*values)
        self.prompt_tokens = Counter(
            "vllm:prompt_tokens_total", "Number of prefill tokens processed.", names, registry=registry
        ).labels(*values)
        self.generation_tokens = Counter(
            "vllm:generation_tokens_total", "Number of generation tokens processed.", names, registry=registry
        ).labels(*values)
        success = Counter(
            "vllm:request_success_total",
            "Count of successfully processed requests.",
            [*names, "finished_reason"],
            registry=registry,
        )
        self.request_success = {reason: success.labels(*values, reason) for reason in FINISHED_REASONS}
        token_buckets = build_1_2_5_buckets(max_model_len)
        self.request_prompt_tokens = histogram(
            "vllm:request_prompt_tokens", "Number of prefill tokens processed.", token_buckets
        )
        self.request_generation_tokens = histogram(
            "vllm:request_generation_tokens", "Number of generation tokens processed.", token_buckets
        )
        self.request_params_n = histogram(
            "vllm:request_params_n", "Histogram of the n request parameter.", [1, 2, 5, 10, 20]
        )
        self.request_params_max_tokens = histogram(
            "vllm:request_params_max_tokens", "Histogram of the max_tokens request parameter.", token_buckets
        )
        self.time_to_first_token = histogram(
            "vllm:time_to_first_token_seconds", "Histogram of time to first token in seconds.", _TTFT_BUCKETS
        )
        self.time_per_output_token = histogram(
            "vllm:time_per_output_token_seconds", "Histogram of time per output token in seconds.", _TPOT_BUCKETS
        )
        self.inter_token_latency = histogram(
            "vllm:inter_token_latency_seconds", "Histogram of inter-token latency in seconds.", _TPOT_BUCKETS
        )
        self.e2e_request_latency = histogram(
            "vllm:e2e_request_latency_seconds", "Histogram of e2e request latency in seconds.", _REQUEST_LATENCY_BUCKETS
        )
        self.request_queue_time = histogram(
            "vllm:request_queue_time_seconds",
            "Histogram of time spent in WAITING phase for request.",
            _REQUEST_LATENCY_BUCKETS,
        )
        self.request_inference_time = histogram(
            "vllm:request_inference_time_seconds",
            "Histogram of time spent in RUNNING phase for request.",
            _REQUEST_LATENCY_BUCKETS,
        )
        self.request_prefill_time = histogram(
            "vllm:request_prefill_time_seconds",
            "Histogram of time spent in PREFILL phase for request.",
            _REQUEST_LATENCY_BUCKETS,
        )
        self.request_decode_time = histogram(
            "vllm:request_decode_time_seconds",
            "Histogram of time spent in DECODE phase for request.",
            _REQUEST_LATENCY_BUCKETS,
        )

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


# ---------------------------------------------------------------------------------------------
# Engine model: queue, latency, token timeline
# ---------------------------------------------------------------------------------------------


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

        Close the iterator (``contextlib.aclosing``) to abort: the request is then counted with
        ``finished_reason="abort"``.
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
        metrics = self._metrics
        finished = time.monotonic()
        for choice in plan.choices:
            reason = choice.finish_reason if completed else "abort"
            metrics.request_success[reason].inc()
            metrics.request_generation_tokens.observe(produced[choice.index])
        for prompt, max_tokens in zip(plan.prompts, plan.max_tokens, strict=True):
            metrics.request_prompt_tokens.observe(len(prompt.token_ids))
            metrics.request_params_max_tokens.observe(max_tokens)
        metrics.request_params_n.observe(len(plan.choices) // len(plan.prompts))
        if not completed:
            return
        prefill_end = first_token_at if first_token_at is not None else finished
        metrics.e2e_request_latency.observe(finished - arrival)
        metrics.request_queue_time.observe(admitted - arrival)
        metrics.request_inference_time.observe(finished - admitted)
        metrics.request_prefill_time.observe(prefill_end - admitted)
        metrics.request_decode_time.observe(finished - prefill_end)
        longest = max(produced.values())
        if longest > 1:
            metrics.time_per_output_token.observe((finished - prefill_end) / (longest - 1))


# ---------------------------------------------------------------------------------------------
# Faults and the client connection
# ---------------------------------------------------------------------------------------------


class FaultInjector:
    """Holds the armed fault and counts down the requests it still applies to."""

    def __init__(self, plan: FaultPlan) -> None:
        self._plan = plan
        self._remaining = plan.count

    def arm(self, plan: FaultPlan) -> None:
        self._plan = plan
        self._remaining = plan.count

    def take(self) -> FaultPlan | None:
        """The fault for the request at hand, or None; consumes one use of a counted fault."""
        plan = self._plan
        if plan.mode == "none":
            return None
        if self._remaining is not None:
            self._remaining -= 1
            if self._remaining == 0:
                self.arm(FaultPlan())
        return plan

    def state(self) -> FaultState:
        plan = self._plan
        return FaultState(
            mode=plan.mode,
            status=plan.status,
            after_tokens=plan.after_tokens,
            count=self._remaining,
            message=plan.message,
            delay_seconds=plan.delay_seconds,
        )


class _Closable(Protocol):
    def close(self) -> None: ...


_TRANSPORT_SCOPE_KEY = "sluice.simulator.transport"
_DISCONNECT_GRACE_SECONDS = 5.0


class ClientConnection:
    """The HTTP connection of one request: wait for the client to leave, or cut it off."""

    def __init__(self, request: Request) -> None:
        self._request = request

    async def wait_for_disconnect(self) -> None:
        while (await self._request.receive())["type"] != "http.disconnect":
            pass

    async def run_unless_disconnected(self, work: Awaitable[_T]) -> tuple[bool, _T | None]:
        """Run ``work`` but cancel it if the client disconnects first (vLLM's with_cancellation).

        Returns ``(True, result)`` when the work finished, ``(False, None)`` when the client left.
        """
        task = asyncio.ensure_future(work)
        watcher = asyncio.ensure_future(self.wait_for_disconnect())
        try:
            done, _ = await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
        except BaseException:
            task.cancel()
            raise
        finally:
            watcher.cancel()
        if task in done:
            return True, task.result()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        return False, None

    async def drop(self) -> None:
        """Close the TCP connection without completing the response, then await the disconnect."""
        transport = cast(_Closable | None, self._request.scope.get(_TRANSPORT_SCOPE_KEY))
        if transport is None:
            raise SimulatedConnectionDrop("fault injection dropped the connection")
        transport.close()
        try:
            await asyncio.wait_for(self.wait_for_disconnect(), _DISCONNECT_GRACE_SECONDS)
        except TimeoutError:
            logger.warning("connection dropped by fault injection did not report a disconnect")


class _SimulatorApp(FastAPI):
    """FastAPI that remembers each request's transport so fault injection can cut it.

    Under uvicorn the ``send`` callable is a bound method of the request-response cycle, which
    holds the connection's transport; other ASGI servers fall back to raising.
    """

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            scope[_TRANSPORT_SCOPE_KEY] = getattr(getattr(send, "__self__", None), "transport", None)
        await super().__call__(scope, receive, send)


# ---------------------------------------------------------------------------------------------
# The simulator: request handling shared by the endpoints
# ---------------------------------------------------------------------------------------------


def _sse(payload: str) -> str:
    return f"data: {payload}\n\n"


_SSE_DONE = "data: [DONE]\n\n"


def _usage_flags(stream_options: StreamOptions | None) -> tuple[bool, bool]:
    """vLLM's ``should_include_usage``: (final usage chunk, usage on every chunk)."""
    if stream_options is None:
        return False, False
    include_usage = bool(stream_options.include_usage)
    return include_usage, include_usage and bool(stream_options.continuous_usage_stats)


class Simulator:
    """One simulated vLLM server: config, tokenizer, engine, metrics and faults."""

    def __init__(self, config: SimulatorConfig) -> None:
        self.config = config
        self.tokenizer = WordTokenizer()
        self.metrics = VllmMetrics(config.model_name, config.max_model_len)
        self.engine = SimulatedEngine(config, self.metrics)
        self.faults = FaultInjector(config.faults)

    def check_model(self, model: str | None) -> None:
        if model and model not in self.config.served_model_names:
            raise ModelNotFoundError(model)

    def model_list(self) -> ModelList:
        root = self.config.model_path or self.config.model_name
        return ModelList(
            data=[
                ModelCard(id=name, root=root, max_model_len=self.config.max_model_len, permission=[ModelPermission()])
                for name in self.config.served_model_names
            ]
        )

    def plan(
        self,
        *,
        request_id: str,
        prompts: list[PromptInput],
        n: int,
        requested_max_tokens: int | None,
        output_param: str,
        request_seed: int | None,
        ignore_eos: bool,
        min_tokens: int,
    ) -> GenerationPlan:
        if n < 1:
            raise InvalidRequestError(f"n must be at least 1, got {n}.", parameter="n", value=n)
        max_tokens = [
            resolve_max_tokens(self.config, len(prompt.token_ids), requested_max_tokens, output_param=output_param)
            for prompt in prompts
        ]
        choices = [
            plan_choice(
                self.config,
                prompt,
                index=prompt_index * n + sample,
                prompt_index=prompt_index,
                sample_index=sample,
                max_tokens=max_tokens[prompt_index],
                request_seed=request_seed,
                ignore_eos=ignore_eos,
                min_tokens=min_tokens,
            )
            for prompt_index, prompt in enumerate(prompts)
            for sample in range(n)
        ]
        return GenerationPlan(
            request_id=request_id,
            model=self.config.model_name,
            created=int(time.time()),
            prompts=prompts,
            choices=choices,
            max_tokens=max_tokens,
        )

    async def serve(
        self,
        plan: GenerationPlan,
        request: Request,
        *,
        stream: bool,
        stream_options: StreamOptions | None,
        render_full: _FullRenderer,
        render_stream: _StreamRenderer,
    ) -> Response:
        """Apply any armed fault, then answer in full or as an SSE stream."""
        connection = ClientConnection(request)
        fault = self.faults.take()
        if fault is not None and fault.mode == "error":
            return InjectedError(fault.status, fault.message).to_response()
        if fault is not None and fault.mode == "timeout":
            await connection.wait_for_disconnect()
            return Response(status_code=HTTPStatus.GATEWAY_TIMEOUT.value)
        if fault is not None and fault.mode == "delay":
            # A queue stall: the request waits before the engine takes it, then runs normally.
            await asyncio.sleep(fault.delay_seconds)
        drop_after = fault.after_tokens if fault is not None and fault.mode == "drop_mid_stream" else None
        if stream:
            include_usage, continuous = _usage_flags(stream_options)
            body = render_stream(plan, include_usage, continuous, drop_after, connection)
            return StreamingResponse(body, media_type="text/event-stream")
        completed, _ = await connection.run_unless_disconnected(self._run_to_end(plan, drop_after))
        if drop_after is not None and completed:
            await connection.drop()
        if drop_after is not None or not completed:
            return Response(status_code=HTTPStatus.BAD_GATEWAY.value)  # never reaches the client
        return _json_response(render_full(plan))

    async def _run_to_end(self, plan: GenerationPlan, stop_after_tokens: int | None) -> None:
        """Let the engine produce every token, or abort it once ``stop_after_tokens`` were made."""
        produced = 0
        async with aclosing(self.engine.steps(plan)) as steps:
            async for emitted in steps:
                if stop_after_tokens is not None and produced >= stop_after_tokens:
                    return
                produced += len(emitted)

    # -- chat ---------------------------------------------------------------------------------

    def chat_response(self, plan: GenerationPlan) -> ChatCompletionResponse:
        return ChatCompletionResponse(
            id=plan.request_id,
            created=plan.created,
            model=plan.model,
            choices=[
                ChatCompletionResponseChoice(
                    index=choice.index,
                    message=ChatMessage(role="assistant", content=choice.text),
                    logprobs=None,
                    finish_reason=choice.finish_reason,
                    stop_reason=None,
                    token_ids=None,
                )
                for choice in plan.choices
            ],
            usage=plan.usage(),
        )

    async def chat_stream(
        self,
        plan: GenerationPlan,
        include_usage: bool,
        continuous: bool,
        drop_after: int | None,
        connection: ClientConnection,
    ) -> AsyncIterator[str]:
        """vLLM's chat_completion_stream_generator: role chunk, one chunk per token, usage, [DONE]."""
        prompt_tokens = plan.prompt_tokens
        produced = {choice.index: 0 for choice in plan.choices}

        def chunk(choice: ChatCompletionResponseStreamChoice, *, first: bool) -> str:
            response = ChatCompletionStreamResponse(
                id=plan.request_id,
                object="chat.completion.chunk",
                created=plan.created,
                choices=[choice],
                model=plan.model,
            )
            if first:
                response.prompt_token_ids = None  # vLLM sets it (to null) on the first chunk only
            if continuous:
                completion = produced[choice.index]
                response.usage = UsageInfo(
                    prompt_tokens=prompt_tokens, completion_tokens=completion, total_tokens=prompt_tokens + completion
                )
            return _sse(response.model_dump_json(exclude_unset=True))

        sent = 0
        async with aclosing(self.engine.steps(plan)) as steps:
            async for emitted in steps:
                if drop_after is not None and sent >= drop_after:
                    await connection.drop()
                    return
                if emitted and emitted[0][1] == 0:
                    for choice in plan.choices:
                        role = ChatCompletionResponseStreamChoice(
                            index=choice.index,
                            delta=DeltaMessage(role="assistant", content=""),
                            logprobs=None,
                            finish_reason=None,
                        )
                        yield chunk(role, first=True)
                for choice, position in emitted:
                    if drop_after is not None and sent >= drop_after:
                        await connection.drop()
                        return
                    produced[choice.index] += 1
                    delta = DeltaMessage(content=choice.pieces[position])
                    if position == len(choice.pieces) - 1:
                        token = ChatCompletionResponseStreamChoice(
                            index=choice.index,
                            delta=delta,
                            logprobs=None,
                            finish_reason=choice.finish_reason,
                            stop_reason=None,
                            token_ids=None,
                        )
                    else:
                        token = ChatCompletionResponseStreamChoice(
                            index=choice.index, delta=delta, logprobs=None, finish_reason=None, token_ids=None
                        )
                    yield chunk(token, first=False)
                    sent += 1
        if drop_after is not None:
            await connection.drop()
            return
        if include_usage:
            final = ChatCompletionStreamResponse(
                id=plan.request_id,
                object="chat.completion.chunk",
                created=plan.created,
                choices=[],
                model=plan.model,
                usage=plan.usage(),
            )
            yield _sse(final.model_dump_json(exclude_unset=True, exclude_none=True))
        yield _SSE_DONE

    # -- completions --------------------------------------------------------------------------

    def completion_response(self, plan: GenerationPlan) -> CompletionResponse:
        return CompletionResponse(
            id=plan.request_id,
            created=plan.created,
            model=plan.model,
            choices=[
                CompletionResponseChoice(
                    index=choice.index, text=choice.text, logprobs=None, finish_reason=choice.finish_reason
                )
                for choice in plan.choices
            ],
            usage=plan.usage(),
        )

    async def completion_stream(
        self,
        plan: GenerationPlan,
        include_usage: bool,
        continuous: bool,
        drop_after: int | None,
        connection: ClientConnection,
    ) -> AsyncIterator[str]:
        """vLLM's completion_stream_generator: one chunk per token, usage, [DONE]."""
        produced = {choice.index: 0 for choice in plan.choices}
        sent = 0
        async with aclosing(self.engine.steps(plan)) as steps:
            async for emitted in steps:
                for choice, position in emitted:
                    if drop_after is not None and sent >= drop_after:
                        await connection.drop()
                        return
                    produced[choice.index] += 1
                    last = position == len(choice.pieces) - 1
                    response = CompletionStreamResponse(
                        id=plan.request_id,
                        created=plan.created,
                        model=plan.model,
                        choices=[
                            CompletionResponseStreamChoice(
                                index=choice.index,
                                text=choice.pieces[position],
                                logprobs=None,
                                finish_reason=choice.finish_reason if last else None,
                                stop_reason=None,
                            )
                        ],
                    )
                    if continuous:
                        prompt_tokens = len(plan.prompts[choice.prompt_index].token_ids)
                        completion = produced[choice.index]
                        response.usage = UsageInfo(
                            prompt_tokens=prompt_tokens,
                            completion_tokens=completion,
                            total_tokens=prompt_tokens + completion,
                        )
                    yield _sse(response.model_dump_json())
                    sent += 1
        if drop_after is not None:
            await connection.drop()
            return
        if include_usage:
            final = CompletionStreamResponse(
                id=plan.request_id, created=plan.created, model=plan.model, choices=[], usage=plan.usage()
            )
            yield _sse(final.model_dump_json(exclude_none=True))
        yield _SSE_DONE


class _FullRenderer(Protocol):
    def __call__(self, plan: GenerationPlan, /) -> BaseModel: ...


class _StreamRenderer(Protocol):
    def __call__(
        self,
        plan: GenerationPlan,
        include_usage: bool,
        continuous: bool,
        drop_after: int | None,
        connection: ClientConnection,
        /,
    ) -> AsyncIterator[str]: ...


def _reject_unsupported(**flags: bool) -> None:
    for name, requested in flags.items():
        if requested:
            raise InvalidRequestError(f"`{name}` is not supported by the Sluice vLLM simulator.", parameter=name)


def _completion_prompts(tokenizer: WordTokenizer, body: CompletionRequest) -> list[PromptInput]:
    """Normalise the four prompt shapes vLLM accepts; token-id prompts get no BOS, as in vLLM."""

    def from_text(text: str) -> PromptInput:
        return PromptInput(tokenizer.encode(text, add_special_tokens=body.add_special_tokens), seed_text=text)

    def from_ids(ids: list[int]) -> PromptInput:
        return PromptInput(list(ids), seed_text="token-ids:" + ",".join(map(str, ids)))

    prompt = body.prompt
    if isinstance(prompt, str):
        return [from_text(prompt)]
    if not prompt:
        raise InvalidRequestError("Either prompt or prompt_embeds must be provided and non-empty.")
    if isinstance(prompt[0], str):
        return [from_text(text) for text in prompt]
    if isinstance(prompt[0], int):
        return [from_ids(prompt)]
    return [from_ids(ids) for ids in prompt]


# ---------------------------------------------------------------------------------------------
# Exception handlers (vLLM's shapes)
# ---------------------------------------------------------------------------------------------


def _summarize_input(value: object) -> object:
    """Bound what an error echoes back, as vLLM does: containers are described, text is cut."""
    if isinstance(value, (list, tuple, dict, set)):
        return f"<{type(value).__name__} of {len(value)} items>"
    text = value if isinstance(value, str) else str(value)
    return text if len(text) <= 200 else text[:200] + "...[truncated]"


def _clean_loc(loc: Sequence[object]) -> str:
    parts = [str(part) for part in loc if not re.search(r"[\[\](){}]", str(part))]
    return ".".join(parts) if parts else ".".join(str(part) for part in loc)


async def _validation_error_handler(request: Request, exc: Exception) -> Response:
    """vLLM's validation_exception_handler: 400 ``Bad Request`` listing the schema errors."""
    errors = cast(RequestValidationError, exc).errors()
    param: str | None = None
    for error in errors:
        ctx_error = error.get("ctx", {}).get("error")
        if isinstance(ctx_error, RequestFieldError):
            param = ctx_error.parameter
            break
    if param is None and errors and errors[0].get("loc"):
        param = _clean_loc(errors[0]["loc"])
    if errors:
        label = "error" if len(errors) == 1 else "errors"
        lines = []
        for error in errors[:10]:
            raw = dict(error)
            entry = {key: raw[key] for key in ("type", "loc", "msg", "input") if key in raw}
            entry["loc"] = _clean_loc(raw.get("loc", ()))
            if "input" in entry:
                entry["input"] = _summarize_input(entry["input"])
            lines.append(f"  {entry}")
        message = f"{len(errors)} validation {label}:\n" + "\n".join(lines)
    else:
        message = "Validation error"
    body = ErrorResponse(error=ErrorInfo(message=message, type=HTTPStatus.BAD_REQUEST.phrase, param=param, code=400))
    return _json_response(body, status_code=400)


async def _http_error_handler(request: Request, exc: Exception) -> Response:
    """vLLM's http_exception_handler: HTTP errors (404 route, 405 method) in the error envelope."""
    http_exc = cast(StarletteHTTPException, exc)
    status = HTTPStatus(http_exc.status_code)
    body = ErrorResponse(error=ErrorInfo(message=str(http_exc.detail), type=status.phrase, code=status.value))
    return _json_response(body, status_code=status.value)


async def _simulator_error_handler(request: Request, exc: Exception) -> Response:
    return cast(SimulatorError, exc).to_response()


# ---------------------------------------------------------------------------------------------
# App factory and runner
# ---------------------------------------------------------------------------------------------


def create_simulator_app(config: SimulatorConfig) -> FastAPI:
    """Build the simulator's FastAPI app; its state (``app.state.simulator``) is private to it."""
    sim = Simulator(config)
    app = _SimulatorApp(title="Sluice vLLM simulator", version=config.vllm_version)
    app.state.simulator = sim
    app.add_exception_handler(RequestValidationError, _validation_error_handler)
    app.add_exception_handler(StarletteHTTPException, _http_error_handler)
    app.add_exception_handler(SimulatorError, _simulator_error_handler)

    @app.get("/health")
    async def health() -> Response:
        """200 with an empty body while the engine is alive, like vLLM."""
        return Response(status_code=200)

    @app.get("/version")
    async def version() -> VersionResponse:
        return VersionResponse(version=config.vllm_version)

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(content=sim.metrics.exposition(), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/models")
    async def show_available_models() -> Response:
        return _json_response(sim.model_list())

    @app.post("/tokenize")
    async def tokenize(body: TokenizeCompletionRequest | TokenizeChatRequest) -> Response:
        sim.check_model(body.model)
        if isinstance(body, TokenizeChatRequest):
            text = render_chat_prompt(
                body.messages,
                add_generation_prompt=body.add_generation_prompt,
                continue_final_message=body.continue_final_message,
            )
        else:
            text = body.prompt
        ids, pieces = sim.tokenizer.encode_with_pieces(text, add_special_tokens=body.add_special_tokens)
        response = TokenizeResponse(
            count=len(ids),
            max_model_len=config.max_model_len,
            tokens=ids,
            token_strs=pieces if body.return_token_strs else None,
        )
        return _json_response(response)

    @app.post("/v1/chat/completions")
    async def create_chat_completion(body: ChatCompletionRequest, request: Request) -> Response:
        sim.check_model(body.model)
        _reject_unsupported(logprobs=bool(body.logprobs), echo=body.echo)
        rendered = render_chat_prompt(
            body.messages,
            add_generation_prompt=body.add_generation_prompt,
            continue_final_message=body.continue_final_message,
        )
        prompt = PromptInput(
            token_ids=sim.tokenizer.encode(rendered, add_special_tokens=body.add_special_tokens), seed_text=rendered
        )
        output_param = "max_completion_tokens" if body.max_completion_tokens is not None else "max_tokens"
        plan = sim.plan(
            request_id=f"chatcmpl-{base_request_id(request, body.request_id)}",
            prompts=[prompt],
            n=1 if body.n is None else body.n,
            requested_max_tokens=body.max_completion_tokens or body.max_tokens,
            output_param=output_param,
            request_seed=body.seed,
            ignore_eos=body.ignore_eos,
            min_tokens=body.min_tokens,
        )
        return await sim.serve(
            plan,
            request,
            stream=bool(body.stream),
            stream_options=body.stream_options,
            render_full=sim.chat_response,
            render_stream=sim.chat_stream,
        )

    @app.post("/v1/completions")
    async def create_completion(body: CompletionRequest, request: Request) -> Response:
        sim.check_model(body.model)
        _reject_unsupported(logprobs=body.logprobs is not None, echo=bool(body.echo))
        plan = sim.plan(
            request_id=f"cmpl-{base_request_id(request, body.request_id)}",
            prompts=_completion_prompts(sim.tokenizer, body),
            n=body.n,
            requested_max_tokens=body.max_tokens,
            output_param="max_tokens",
            request_seed=body.seed,
            ignore_eos=body.ignore_eos,
            min_tokens=body.min_tokens,
        )
        return await sim.serve(
            plan,
            request,
            stream=bool(body.stream),
            stream_options=body.stream_options,
            render_full=sim.completion_response,
            render_stream=sim.completion_stream,
        )

    @app.get("/sim/faults")
    async def get_faults() -> FaultState:
        """The armed fault (simulator extension, not part of vLLM)."""
        return sim.faults.state()

    @app.post("/sim/faults")
    async def set_faults(plan: FaultPlan) -> FaultState:
        """Arm a fault for the next ``count`` generation requests; mode ``none`` disarms."""
        sim.faults.arm(plan)
        return sim.faults.state()

    return app


def build_simulator_server(
    config: SimulatorConfig, host: str = "127.0.0.1", port: int = 8000, *, log_level: str = "info"
) -> uvicorn.Server:
    """A uvicorn server for the simulator; hung requests are cancelled 2 s into a shutdown."""
    uvicorn_config = uvicorn.Config(
        create_simulator_app(config),
        host=host,
        port=port,
        log_level=log_level,
        access_log=log_level in {"debug", "trace"},
        timeout_graceful_shutdown=2,
    )
    return uvicorn.Server(uvicorn_config)


def run_simulator(config: SimulatorConfig, host: str, port: int) -> None:
    """Serve the simulator until interrupted (the ``sluice node sim`` command)."""
    server = build_simulator_server(config, host, port)
    logger.info("vLLM simulator for %s on http://%s:%d", ", ".join(config.served_model_names), host, port)
    server.run()
