"""The path of one billable call: verify, price, hold, dispatch, meter."""

from __future__ import annotations

import time

import orjson
from pydantic import BaseModel, ValidationError
from starlette.responses import Response
from starlette.types import Receive, Scope

from ledger.domain import TIER_NAMES
from ledger.protocol.keccak import keccak256 as keccak
from redemption import errors
from redemption.auth import call_headers, receive_body, verify_headers
from redemption.dispatch import no_capacity
from redemption.metering import HeldCall
from redemption.models import ChatCompletionRequest, CompletionRequest
from redemption.pricing import plan_cost
from redemption.prompts import prompt_bound
from redemption.state import ServiceState

# vLLM's defaults when a request gives no max_tokens: the rest of the context for chat, 16 for completions.
DEFAULT_MAX_TOKENS = {"/v1/chat/completions": 32_768, "/v1/completions": 16}
REQUEST_MODELS: dict[str, type[ChatCompletionRequest] | type[CompletionRequest]] = {
    "/v1/chat/completions": ChatCompletionRequest,
    "/v1/completions": CompletionRequest,
}

JSON_KINDS = {list: "array", str: "string", int: "number", float: "number", bool: "boolean", type(None): "null"}


def job_id_for(spender: str, digest: bytes) -> bytes:
    """Deterministic per accepted (signer, nonce): two keys signing the same struct get different jobs."""
    return keccak(b"sluice-job:" + bytes.fromhex(spender[2:]) + digest)


def _validation_error(exc: ValidationError) -> errors.InvalidRequest:
    first = exc.errors()[0]
    where = ".".join(str(p) for p in first["loc"]) or None
    return errors.InvalidRequest(f"invalid request body: {where}: {first['msg']}", where)


def _parse(body: bytes, model: type[BaseModel]) -> tuple[dict[str, object], BaseModel]:
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise errors.MalformedJson(f"the request body is not valid JSON ({exc}); send one JSON object") from None
    if not isinstance(payload, dict):
        kind = JSON_KINDS.get(type(payload), "value")
        raise errors.MalformedJson(f"the request body is a JSON {kind}; send one JSON object")
    try:
        return payload, model.model_validate(payload)
    except ValidationError as exc:
        raise _validation_error(exc) from None


async def handle_call(scope: Scope, receive: Receive, state: ServiceState, path: str) -> Response:
    received = time.perf_counter()
    settings = state.settings
    headers = call_headers(scope)
    body = await receive_body(receive, headers, settings.max_body_bytes)
    call = verify_headers(headers, body, state.domains.redemption, settings.max_deadline_seconds)
    payload, parsed = _parse(body, REQUEST_MODELS[path])
    assert isinstance(parsed, ChatCompletionRequest | CompletionRequest)
    rate = state.rates.get(parsed.model)
    if rate is None:
        known = ", ".join(sorted(state.rates)) or "none"
        raise errors.UnknownModel(f"The model `{parsed.model}` does not exist. Models on the rate card: {known}",
                                  "model")
    tier = headers.get("sluice-tier")
    if tier is not None and tier not in TIER_NAMES:
        raise errors.InvalidHeader(f"Sluice-Tier must be one of {', '.join(TIER_NAMES)}", "Sluice-Tier")
    region = headers.get("sluice-region")
    if not state.registry.serves(parsed.model):
        raise errors.NoCapacity(f"no node serves model {parsed.model!r} right now; nothing was charged", "model")
    bound = await prompt_bound(state.dispatcher.client, state.registry, path, payload, body, tier, region,
                               min_bytes=settings.prompt_count_min_bytes,
                               timeout=settings.prompt_count_timeout_seconds)  # fmt: skip
    plan = plan_cost(body, parsed.requested_max_tokens(), DEFAULT_MAX_TOKENS[path], call.max_cost,
                     rate.input_rate, rate.output_rate, prompt_bound=bound)
    # The node is chosen before the hold, which records it: one commit holds the funds and binds the job.
    candidates = state.registry.candidates(parsed.model, tier, region)
    if not candidates:
        raise no_capacity(parsed.model, tier, region)
    node = candidates[0]
    figures = await state.chain_figures(call.payer, call.spender)
    job_id = job_id_for(call.spender, call.digest)
    outcome = await state.store.reserve_hold(job_id, call, plan.hold, parsed.model, settings.window, figures,
                                             plan.prompt_bound + plan.max_tokens, settings.rate_window_seconds,
                                             (node.node, plan.max_tokens, plan.prompt_bound))
    if outcome != "ok":
        raise errors.hold_refusal(outcome, settings.rate_window_seconds)
    held = HeldCall(job_id, call, path, payload, rate, plan, parsed.stream, tier, region, received)
    if parsed.stream:
        return await state.dispatcher.stream(held, node)
    return await state.dispatcher.complete(held, node)
