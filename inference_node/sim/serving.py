"""Request handling: plan a generation, apply any armed fault, render the answer in vLLM's shapes.

Behaviour follows vLLM's OpenAI server (``serving_chat.py`` and ``serving_completion.py``): chat
``max_tokens`` defaults to ``max_model_len - prompt_tokens`` and completions to 16; streams send
SSE ``data: {...}\\n\\n`` frames closed by ``data: [DONE]\\n\\n``, ``stream_options.include_usage``
adds a last chunk with ``choices: []`` and the usage, and ``continuous_usage_stats`` adds usage
to every chunk. A natural stop ends with an EOS token that counts as a completion token and
carries no text, so the last streamed delta of a ``"stop"`` choice is ``""``.
"""

from __future__ import annotations

import asyncio
import hashlib
import secrets
import time
from collections import deque
from collections.abc import AsyncIterator
from contextlib import aclosing
from http import HTTPStatus
from typing import Protocol

from fastapi import Request
from fastapi.responses import Response, StreamingResponse
from pydantic import BaseModel

from inference_node.sim.config import SimulatorConfig
from inference_node.sim.engine import GenerationPlan, PromptInput, SimulatedEngine, plan_choice
from inference_node.sim.errors import InjectedError, InvalidRequestError, ModelNotFoundError
from inference_node.sim.faults import ClientConnection, FaultInjector
from inference_node.sim.metrics import VllmMetrics
from inference_node.sim.protocol import (
    ChatCompletionRequest,
    ChatCompletionResponse,
    ChatCompletionResponseChoice,
    ChatCompletionResponseStreamChoice,
    ChatCompletionStreamResponse,
    ChatMessage,
    CompletionRequest,
    CompletionResponse,
    CompletionResponseChoice,
    CompletionResponseStreamChoice,
    CompletionStreamResponse,
    DeltaMessage,
    ModelCard,
    ModelList,
    ModelPermission,
    StreamOptions,
    TokenizeChatRequest,
    TokenizeCompletionRequest,
    TokenizeResponse,
    UsageInfo,
    json_response,
)
from inference_node.sim.tokenizer import EOS_TOKEN_ID, Tokenizer, load_tokenizer, render_chat_prompt


def resolve_max_tokens(
    config: SimulatorConfig, prompt: PromptInput, requested: int | None, *, output_param: str
) -> int:
    """Validate lengths and return the effective max_tokens, as vLLM 0.32's renderer and ``get_max_tokens`` do.

    A limit over the context is refused, and so is a prompt over the context by itself; a prompt and a
    limit that only overflow together are answered, the limit cut to what the prompt leaves. Text prompts
    are tokenized to at most one token past the context, so vLLM says "at least" that many. The messages
    are vLLM's verbatim, so clients parsing them behave the same against the simulator.
    """
    max_model_len = config.max_model_len
    max_output_tokens = requested or 0
    if max_output_tokens > max_model_len:
        raise InvalidRequestError(
            f"{output_param}={max_output_tokens} cannot be greater than max_model_len={max_model_len}. "
            "Please request fewer output tokens.",
            parameter=output_param,
            value=max_output_tokens,
        )
    prompt_tokens = len(prompt.token_ids)
    if prompt_tokens > max_model_len:
        counted = min(prompt_tokens, max_model_len + 1) if prompt.from_text else prompt_tokens
        qualifier = "at least " if counted == max_model_len + 1 else ""
        raise InvalidRequestError(
            f"This model's maximum context length is {max_model_len} tokens. However, your prompt contains "
            f"{qualifier}{counted} input tokens, which exceeds this limit even without any output tokens. "
            "Please reduce the length of the input prompt.",
            parameter="input_tokens",
            value=counted,
        )
    context_left = max_model_len - prompt_tokens
    effective = context_left if requested is None else min(requested, context_left)
    if effective < 1:
        raise InvalidRequestError(
            f"max_tokens must be at least 1, got {effective}.", parameter="max_tokens", value=effective
        )
    return effective


def base_request_id(request: Request, body_request_id: str | None) -> str:
    """vLLM's ``_base_request_id``: the X-Request-Id header, else the body's id, else random hex."""
    return request.headers.get("X-Request-Id") or body_request_id or secrets.token_hex(8)


def _sse(payload: str) -> str:
    return f"data: {payload}\n\n"


_SSE_DONE = "data: [DONE]\n\n"
# Generation request ids kept for `GET /sim/requests`, newest last.
REQUESTS_KEPT = 100_000


def _usage_flags(stream_options: StreamOptions | None) -> tuple[bool, bool]:
    """vLLM's ``should_include_usage``: (final usage chunk, usage on every chunk)."""
    if stream_options is None:
        return False, False
    include_usage = bool(stream_options.include_usage)
    return include_usage, include_usage and bool(stream_options.continuous_usage_stats)


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


def _completion_prompts(tokenizer: Tokenizer, body: CompletionRequest) -> list[PromptInput]:
    """Normalise the four prompt shapes vLLM accepts; token-id prompts get no BOS, as in vLLM."""

    def from_text(text: str) -> PromptInput:
        return PromptInput(tokenizer.encode(text, add_special_tokens=body.add_special_tokens), seed_text=text)

    def from_ids(ids: list[int]) -> PromptInput:
        return PromptInput(list(ids), seed_text="token-ids:" + ",".join(map(str, ids)), from_text=False)

    prompt = body.prompt
    if isinstance(prompt, str):
        return [from_text(prompt)]
    if not prompt:
        raise InvalidRequestError("Either prompt or prompt_embeds must be provided and non-empty.", parameter="prompt")
    if isinstance(prompt[0], str):
        return [from_text(text) for text in prompt]
    if isinstance(prompt[0], int):
        return [from_ids(prompt)]
    return [from_ids(ids) for ids in prompt]


class Simulator:
    """One simulated vLLM server: config, tokenizer, engine, metrics and faults."""

    def __init__(self, config: SimulatorConfig) -> None:
        self.config = config
        self.tokenizer = load_tokenizer(config.tokenizer)
        self.metrics = VllmMetrics(config.model_name, config.max_model_len)
        self.engine = SimulatedEngine(config, self.metrics)
        self.faults = FaultInjector(config.faults)
        # Request ids of the generation requests taken, oldest first (`GET /sim/requests`): what a test checks
        # against the service's records to see which jobs a node ran.
        self.requests: deque[str] = deque(maxlen=REQUESTS_KEPT)
        # vLLM's fingerprint is its version and a hash of the server's configuration.
        digest = hashlib.sha256(config.model_dump_json().encode()).hexdigest()[:8]
        self.fingerprint = f"vllm-{config.vllm_version}-{digest}"

    def check_model(self, model: str | None) -> None:
        if model and model not in self.config.served_model_names:
            raise ModelNotFoundError(model, self.config.served_model_names)

    def model_list(self) -> ModelList:
        root = self.config.model_path or self.config.model_name
        return ModelList(
            data=[
                ModelCard(id=name, root=root, max_model_len=self.config.max_model_len, permission=[ModelPermission()])
                for name in self.config.served_model_names
            ]
        )

    # -- endpoints (the routes of api_server call these) --------------------------------------

    def tokenize(self, body: TokenizeCompletionRequest | TokenizeChatRequest) -> TokenizeResponse:
        self.check_model(body.model)
        if isinstance(body, TokenizeChatRequest):
            text = render_chat_prompt(
                body.messages,
                add_generation_prompt=body.add_generation_prompt,
                continue_final_message=body.continue_final_message,
            )
        else:
            text = body.prompt
        ids, pieces = self.tokenizer.encode_with_pieces(text, add_special_tokens=body.add_special_tokens)
        return TokenizeResponse(
            count=len(ids),
            max_model_len=self.config.max_model_len,
            tokens=ids,
            token_strs=pieces if body.return_token_strs else None,
        )

    async def create_chat_completion(self, body: ChatCompletionRequest, request: Request) -> Response:
        self.check_model(body.model)
        _reject_unsupported(logprobs=bool(body.logprobs), echo=body.echo)
        rendered = render_chat_prompt(
            body.messages,
            add_generation_prompt=body.add_generation_prompt,
            continue_final_message=body.continue_final_message,
        )
        prompt = PromptInput(
            token_ids=self.tokenizer.encode(rendered, add_special_tokens=body.add_special_tokens), seed_text=rendered
        )
        output_param = "max_completion_tokens" if body.max_completion_tokens is not None else "max_tokens"
        plan = self.plan(
            request_id=f"chatcmpl-{base_request_id(request, body.request_id)}",
            prompts=[prompt],
            n=1 if body.n is None else body.n,
            requested_max_tokens=body.max_completion_tokens or body.max_tokens,
            output_param=output_param,
            request_seed=body.seed,
            ignore_eos=body.ignore_eos,
            min_tokens=body.min_tokens,
            eos_bias=(body.logit_bias or {}).get(str(EOS_TOKEN_ID), 0.0),
        )
        return await self.serve(
            plan,
            request,
            stream=bool(body.stream),
            stream_options=body.stream_options,
            render_full=self.chat_response,
            render_stream=self.chat_stream,
        )

    async def create_completion(self, body: CompletionRequest, request: Request) -> Response:
        self.check_model(body.model)
        _reject_unsupported(logprobs=body.logprobs is not None, echo=bool(body.echo))
        plan = self.plan(
            request_id=f"cmpl-{base_request_id(request, body.request_id)}",
            prompts=_completion_prompts(self.tokenizer, body),
            n=body.n,
            requested_max_tokens=body.max_tokens,
            output_param="max_tokens",
            request_seed=body.seed,
            ignore_eos=body.ignore_eos,
            min_tokens=body.min_tokens,
            eos_bias=(body.logit_bias or {}).get(str(EOS_TOKEN_ID), 0.0),
        )
        return await self.serve(
            plan,
            request,
            stream=bool(body.stream),
            stream_options=body.stream_options,
            render_full=self.completion_response,
            render_stream=self.completion_stream,
        )

    # -- generation ---------------------------------------------------------------------------

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
        eos_bias: float,
    ) -> GenerationPlan:
        if n < 1:
            raise InvalidRequestError(f"n must be at least 1, got {n}.")  # vLLM names no parameter here
        max_tokens = [
            resolve_max_tokens(self.config, prompt, requested_max_tokens, output_param=output_param)
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
                eos_bias=eos_bias,
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
        self.requests.append(plan.request_id)
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
        return json_response(render_full(plan))

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
            system_fingerprint=self.fingerprint,
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
        """vLLM's chat_completion_stream_generator: role chunks, one chunk per token, usage, [DONE].

        Only the fields vLLM sets are sent (``exclude_unset``); the last chunk carries the fingerprint.
        """
        prompt_tokens = plan.prompt_tokens
        produced = {choice.index: 0 for choice in plan.choices}
        remaining = len(plan.choices)

        def chunk(choice: ChatCompletionResponseStreamChoice, *, first: bool, last: bool) -> str:
            response = ChatCompletionStreamResponse(
                id=plan.request_id, object="chat.completion.chunk", created=plan.created, choices=[choice],
                model=plan.model,
            )  # fmt: skip
            if continuous:
                completion = produced[choice.index]
                response.usage = UsageInfo(
                    prompt_tokens=prompt_tokens, completion_tokens=completion, total_tokens=prompt_tokens + completion,
                    completion_tokens_details=None,
                )  # fmt: skip
            if last and not include_usage:
                response.system_fingerprint = self.fingerprint
            if first:
                response.prompt_token_ids = None  # vLLM sets both (to null) on the role chunks only
                response.prompt_text = None
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
                            index=choice.index, delta=DeltaMessage(role="assistant", content=""), logprobs=None,
                            finish_reason=None,
                        )  # fmt: skip
                        yield chunk(role, first=True, last=False)
                for choice, position in emitted:
                    if drop_after is not None and sent >= drop_after:
                        await connection.drop()
                        return
                    produced[choice.index] += 1
                    delta = DeltaMessage(content=choice.pieces[position])
                    if position == len(choice.pieces) - 1:
                        remaining -= 1
                        token = ChatCompletionResponseStreamChoice(
                            index=choice.index, delta=delta, logprobs=None, finish_reason=choice.finish_reason,
                            stop_reason=None, token_ids=None,
                        )  # fmt: skip
                    else:
                        token = ChatCompletionResponseStreamChoice(
                            index=choice.index, delta=delta, logprobs=None, finish_reason=None, token_ids=None
                        )
                    yield chunk(token, first=False, last=remaining == 0)
                    sent += 1
        if drop_after is not None:
            await connection.drop()
            return
        if include_usage:
            final = ChatCompletionStreamResponse(
                id=plan.request_id, object="chat.completion.chunk", created=plan.created, choices=[],
                model=plan.model, usage=plan.usage(), system_fingerprint=self.fingerprint,
            )  # fmt: skip
            yield _sse(final.model_dump_json(exclude_unset=True))
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
            system_fingerprint=self.fingerprint,
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
        """vLLM's completion_stream_generator: a chunk per token, usage, [DONE]; the last chunk has the fingerprint."""
        produced = {choice.index: 0 for choice in plan.choices}
        remaining = len(plan.choices)
        sent = 0
        async with aclosing(self.engine.steps(plan)) as steps:
            async for emitted in steps:
                for choice, position in emitted:
                    if drop_after is not None and sent >= drop_after:
                        await connection.drop()
                        return
                    produced[choice.index] += 1
                    last = position == len(choice.pieces) - 1
                    remaining -= last
                    response = CompletionStreamResponse(
                        id=plan.request_id,
                        object="text_completion",
                        created=plan.created,
                        model=plan.model,
                        choices=[
                            CompletionResponseStreamChoice(
                                index=choice.index, text=choice.pieces[position], logprobs=None,
                                finish_reason=choice.finish_reason if last else None, stop_reason=None,
                                prompt_token_ids=None, token_ids=None,
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
                    if remaining == 0 and not include_usage:
                        response.system_fingerprint = self.fingerprint
                    yield _sse(response.model_dump_json(exclude_unset=True))
                    sent += 1
        if drop_after is not None:
            await connection.drop()
            return
        if include_usage:
            final = CompletionStreamResponse(
                id=plan.request_id, object="text_completion", created=plan.created, model=plan.model, choices=[],
                usage=plan.usage(), system_fingerprint=self.fingerprint,
            )  # fmt: skip
            yield _sse(final.model_dump_json(exclude_unset=True))
        yield _SSE_DONE
