"""The simulator's FastAPI app (:func:`create_simulator_app`), its exception handlers and the uvicorn runner.

Routes: ``POST /v1/chat/completions``, ``POST /v1/completions``, ``POST /tokenize``,
``GET /v1/models``, ``GET /health``, ``GET /metrics``, ``GET /version`` and the simulator's own
``GET``/``POST /sim/faults`` and ``GET /sim/requests``. Errors use vLLM's envelope ``{"error": {"message",
"type", "param", "code"}}``: 404 ``NotFoundError`` for an unknown model, 400 ``BadRequestError`` for
context-length violations (with vLLM's ``(parameter=..., value=...)`` suffix), 400
``Bad Request`` for schema errors. An unknown route or method gets FastAPI's own
``{"detail": ...}``, as from vLLM.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from http import HTTPStatus
from typing import Any, cast

import uvicorn
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.types import Receive, Scope, Send

from inference_node.sim.config import SimulatorConfig
from inference_node.sim.errors import InvalidRequestError, SimulatorError
from inference_node.sim.faults import FaultPlan, FaultState, remember_transport
from inference_node.sim.protocol import (
    ChatCompletionRequest,
    CompletionRequest,
    ErrorInfo,
    ErrorResponse,
    RequestFieldError,
    TokenizeChatRequest,
    TokenizeCompletionRequest,
    VersionResponse,
    json_response,
)
from inference_node.sim.serving import Simulator

logger = logging.getLogger(__name__)


class _SimulatorApp(FastAPI):
    """FastAPI that remembers each request's transport so fault injection can cut it."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        remember_transport(scope, send)
        await super().__call__(scope, receive, send)


_INTERNAL_LOC_MARKERS = frozenset({
    "function-wrap", "function-after", "function-before", "function-plain", "json-or-python", "lax-or-strict",
    "chain", "default", "nullable", "tagged-union", "union", "call", "arguments", "is-instance", "is-subclass",
    "callable", "str", "int", "float", "bool", "bytes", "bytearray", "list", "tuple", "dict", "set", "frozenset",
    "complex", "none", "nonetype",
})  # fmt: skip


def _summarize_input(value: object) -> object:
    """Bound what an error echoes back, as vLLM does: containers are described, text is cut."""
    if isinstance(value, (bytes, bytearray)):
        return f"<{type(value).__name__} of {len(value)} bytes>"
    if isinstance(value, (list, tuple, dict, set, frozenset)):
        return f"<{type(value).__name__} of {len(value)} items>"
    text = value if isinstance(value, str) else str(value)
    return text if len(text) <= 200 else text[:200] + "...[truncated]"


def _clean_loc(loc: Sequence[object]) -> str:
    """vLLM's clean_loc_for_param: the dotted path without pydantic's wrapper and union-branch markers."""
    parts = [str(part) for part in loc
             if not (re.search(r"[\[\](){}]", str(part)) or str(part).lower() in _INTERNAL_LOC_MARKERS)]  # fmt: skip
    return ".".join(parts) if parts else ".".join(str(part) for part in loc)


def _format_error(error: dict[str, Any]) -> str:
    entry = dict(error)
    if "input" in entry:
        entry["input"] = _summarize_input(entry["input"])
    if isinstance(entry.get("loc"), (tuple, list)):
        entry["loc"] = _clean_loc(entry["loc"])
    text = str(entry)
    return text if len(text) <= 1000 else text[:1000] + "...[truncated]"


async def _validation_error_handler(request: Request, exc: Exception) -> Response:
    """vLLM's validation_exception_handler: 400 ``Bad Request`` listing the schema errors.

    A request check that names its parameter (vLLM raises those from its serving code) is answered
    as vLLM answers it there: ``BadRequestError`` with the ``(parameter=...)`` suffix.
    """
    errors = cast(RequestValidationError, exc).errors()
    for error in errors:
        ctx_error = error.get("ctx", {}).get("error")
        if isinstance(ctx_error, RequestFieldError):
            return InvalidRequestError(str(ctx_error), parameter=ctx_error.parameter).to_response()
    param = _clean_loc(errors[0]["loc"]) if errors and errors[0].get("loc") else None
    if errors:
        label = "error" if len(errors) == 1 else "errors"
        message = f"{len(errors)} validation {label}:\n" + "".join(f"  {_format_error(e)}\n" for e in errors[:10])
        if len(errors) > 10:
            message += f"  ...and {len(errors) - 10} more {label}\n"
        message = message.rstrip()
    else:
        message = "Validation error"
    body = ErrorResponse(error=ErrorInfo(message=message, type=HTTPStatus.BAD_REQUEST.phrase, param=param, code=400))
    return json_response(body, status_code=400)


async def _simulator_error_handler(request: Request, exc: Exception) -> Response:
    return cast(SimulatorError, exc).to_response()


def create_simulator_app(config: SimulatorConfig) -> FastAPI:
    """Build the simulator's FastAPI app; its state (``app.state.simulator``) is private to it."""
    sim = Simulator(config)
    app = _SimulatorApp(title="Sluice vLLM simulator", version=config.vllm_version)
    app.state.simulator = sim
    app.add_exception_handler(RequestValidationError, _validation_error_handler)
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
        return json_response(sim.model_list())

    @app.post("/tokenize")
    async def tokenize(body: TokenizeCompletionRequest | TokenizeChatRequest) -> Response:
        return json_response(sim.tokenize(body))

    @app.post("/v1/chat/completions")
    async def create_chat_completion(body: ChatCompletionRequest, request: Request) -> Response:
        return await sim.create_chat_completion(body, request)

    @app.post("/v1/completions")
    async def create_completion(body: CompletionRequest, request: Request) -> Response:
        return await sim.create_completion(body, request)

    @app.get("/sim/faults")
    async def get_faults() -> FaultState:
        """The armed fault (simulator extension, not part of vLLM)."""
        return sim.faults.state()

    @app.get("/sim/requests")
    async def get_requests() -> dict[str, list[str]]:
        """The request ids of the generation requests taken, oldest first (simulator extension)."""
        return {"request_ids": list(sim.requests)}

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
