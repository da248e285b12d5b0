"""OpenAI-compatible generation endpoints, paid by signed calls."""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.responses import Response

from redemption.api.deps import State
from redemption.calls import handle_call

router = APIRouter(tags=["inference"])


@router.post("/v1/chat/completions")
async def chat_completions(request: Request, state: State) -> Response:
    """A chat completion (optionally streamed), paid from Sluice-Payer's compute tokens."""
    return await handle_call(request, state, "/v1/chat/completions")


@router.post("/v1/completions")
async def completions(request: Request, state: State) -> Response:
    """A text completion (optionally streamed), paid from Sluice-Payer's compute tokens."""
    return await handle_call(request, state, "/v1/completions")
