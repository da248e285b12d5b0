"""OpenAI-compatible generation endpoints, paid by signed calls.

Plain Starlette routes rather than FastAPI ones: these two carry all the traffic, take the
raw body (its keccak is signed) and need no dependency injection, which costs ~0.1 ms a call.
"""

from __future__ import annotations

from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import Response

from redemption.calls import handle_call
from redemption.state import ServiceState

router = APIRouter(tags=["inference"])


async def chat_completions(request: Request) -> Response:
    """A chat completion (optionally streamed), paid from Sluice-Payer's compute tokens."""
    state: ServiceState = request.app.state.sluice
    return await handle_call(request.scope, request.receive, state, "/v1/chat/completions")


async def completions(request: Request) -> Response:
    """A text completion (optionally streamed), paid from Sluice-Payer's compute tokens."""
    state: ServiceState = request.app.state.sluice
    return await handle_call(request.scope, request.receive, state, "/v1/completions")


router.add_route("/v1/chat/completions", chat_completions, methods=["POST"])
router.add_route("/v1/completions", completions, methods=["POST"])
