"""The simulator's FastAPI app (:func:`create_simulator_app`), its exception handlers and the uvicorn runner.

Routes: ``POST /v1/chat/completions``, ``POST /v1/completions``, ``POST /tokenize``,
``GET /v1/models``, ``GET /health``, ``GET /metrics``, ``GET /version`` and the simulator's own
``GET``/``POST /sim/faults``. Errors use vLLM's envelope ``{"error": {"message", "type", "param",
"code"}}``: 404 ``NotFoundError`` for an unknown model, 400 ``BadRequestError`` for
context-length violations (with vLLM's ``(parameter=..., value=...)`` suffix), 400
``Bad Request`` for schema errors.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from http import HTTPStatus
from typing import cast

import uvicorn
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import Receive, Scope, Send

from inference_node.sim.config import SimulatorConfig
from inference_node.sim.errors import SimulatorError
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
    return json_response(body, status_code=400)


async def _http_error_handler(request: Request, exc: Exception) -> Response:
    """vLLM's http_exception_handler: HTTP errors (404 route, 405 method) in the error envelope."""
    http_exc = cast(StarletteHTTPException, exc)
    status = HTTPStatus(http_exc.status_code)
    body = ErrorResponse(error=ErrorInfo(message=str(http_exc.detail), type=status.phrase, code=status.value))
    return json_response(body, status_code=status.value)


async def _simulator_error_handler(request: Request, exc: Exception) -> Response:
    return cast(SimulatorError, exc).to_response()


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
