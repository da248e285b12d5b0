"""The agent's FastAPI app (:func:`create_agent_app`), its exception handlers and the uvicorn runner.

`POST` on the two generation routes carries all the traffic; FastAPI's middleware stack, route search and
`Request` cost more CPU than the call's own work, so :class:`AgentApp` hands those straight to the agent's
raw ASGI handler (:meth:`NodeAgent.answer`); an exception nobody names is uvicorn's plain 500, as Starlette's
would be. Every other request, a GET on those paths included, goes through FastAPI.
"""

from __future__ import annotations

import importlib.util
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import uvicorn
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from inference_node.agent.bounds import CHAT, COMPLETIONS, Endpoint
from inference_node.agent.config import AgentConfig
from inference_node.agent.errors import ErrorDetail, ErrorEnvelope, InvalidRequestBody, RequestRefused
from inference_node.agent.serving import SHUTDOWN_GRACE_SECONDS, NodeAgent
from inference_node.protocol import PROMPT_TOKENS_PATH

logger = logging.getLogger(__name__)


async def _refused_handler(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestRefused)
    return exc.to_response()


_HTTP_ERROR_CODES = {404: "not_found", 405: "method_not_allowed"}


async def _http_error_handler(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    code = _HTTP_ERROR_CODES.get(exc.status_code, "http_error")
    body = ErrorEnvelope(error=ErrorDetail(message=str(exc.detail), type="invalid_request_error", code=code))
    return Response(body.model_dump_json(), status_code=exc.status_code, media_type="application/json")


async def _validation_error_handler(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    return InvalidRequestBody(str(exc.errors())[:500]).to_response()


class AgentApp(FastAPI):
    """FastAPI, with `POST` on the generation routes answered by their raw ASGI apps before its middleware."""

    def __init__(self, generation: dict[str, ASGIApp], **settings: Any) -> None:
        super().__init__(**settings)
        self.generation = generation
        # Registered with FastAPI too, so that its router still answers other methods on these paths with a 405.
        for path, answer in generation.items():
            self.router.routes.append(Route(path, answer, methods=["POST"]))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            answer = self.generation.get(scope["path"])
            if answer is not None:
                scope["app"] = self
                await answer(scope, receive, send)
                return
        await super().__call__(scope, receive, send)


def _generation_app(agent: NodeAgent, endpoint: Endpoint) -> ASGIApp:
    # An exception the agent does not name reaches uvicorn, which logs it and answers a plain 500.
    async def answer(scope: Scope, receive: Receive, send: Send) -> None:
        await agent.answer(scope, receive, send, endpoint)

    return answer


def create_agent_app(config: AgentConfig) -> AgentApp:
    """Build the agent's app; its state (`app.state.agent`) is started by the lifespan."""
    agent = NodeAgent(config)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await agent.start()
        try:
            yield
        finally:
            await agent.stop()

    # The generation routes take the raw request: the body is forwarded as JSON with every field vLLM knows.
    generation = {endpoint.path: _generation_app(agent, endpoint) for endpoint in (CHAT, COMPLETIONS)}
    app = AgentApp(generation, title="Sluice node agent", lifespan=lifespan, docs_url=None, redoc_url=None,
                   openapi_url=None)  # fmt: skip
    app.state.agent = agent
    app.add_exception_handler(RequestRefused, _refused_handler)
    app.add_exception_handler(StarletteHTTPException, _http_error_handler)
    app.add_exception_handler(RequestValidationError, _validation_error_handler)


    # The prompt-token bound the service holds for (counting.py); nothing is generated or spent.
    for endpoint in (CHAT, COMPLETIONS):
        app.add_api_route(PROMPT_TOKENS_PATH + endpoint.path, _count_route(agent, endpoint), methods=["POST"])

    @app.get("/health")
    async def health() -> Response:
        status, report = await agent.health()
        return Response(report.model_dump_json(), status_code=status, media_type="application/json")

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(agent.metrics.exposition(), media_type=CONTENT_TYPE_LATEST)

    return app


def _count_route(agent: NodeAgent, endpoint: Endpoint) -> Callable[[Request], Awaitable[Response]]:
    async def count_prompt(request: Request) -> Response:
        try:
            bound = await agent.count_prompt(request, endpoint)
        except RequestRefused as refused:
            return refused.to_response()
        return Response(bound.model_dump_json(), media_type="application/json")

    return count_prompt


def build_agent_server(
    config: AgentConfig, host: str = "127.0.0.1", port: int = 9100, *, log_level: str = "info"
) -> uvicorn.Server:
    """A uvicorn server for the agent, on uvloop and httptools when they are installed."""
    uvicorn_config = uvicorn.Config(
        create_agent_app(config),
        host=host,
        port=port,
        loop="uvloop" if importlib.util.find_spec("uvloop") else "asyncio",
        http="httptools" if importlib.util.find_spec("httptools") else "h11",
        log_level=log_level,
        proxy_headers=False,  # the agent uses no client address, so X-Forwarded-* need not be read per request
        access_log=log_level in {"debug", "trace"},
        timeout_graceful_shutdown=int(SHUTDOWN_GRACE_SECONDS),
    )
    return uvicorn.Server(uvicorn_config)


def run_agent(config: AgentConfig, host: str, port: int) -> None:
    """Serve the agent until interrupted (the `sluice node run` command)."""
    server = build_agent_server(config, host, port)
    logger.info("node agent for vLLM at %s on http://%s:%d", config.vllm_url, host, port)
    server.run()
