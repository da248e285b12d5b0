"""The OpenAPI document and its offline docs pages.

FastAPI describes its own routes; this adds what it cannot see: the two generation endpoints
(plain Starlette routes, raw body signed), the five signing headers as one combined security
requirement (apiKey-in-header schemes), and the OpenAI error envelope with its stable codes on
every operation in place of FastAPI's 422 (which the service never answers: it answers 400).
`/docs` (Swagger UI) and `/redoc` load their JavaScript and CSS from `/docs-assets`, served from
the installed `fastapi-offline` package: no CDN, so they render without a network.
"""

from __future__ import annotations

from importlib.resources import files
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel, ConfigDict, Field
from starlette.requests import Request
from starlette.responses import HTMLResponse
from starlette.staticfiles import StaticFiles

from ledger.protocol.signed_call import SIGNED_HEADERS
from redemption import errors
from redemption.models import ChatCompletionRequest, CompletionRequest, KeyPolicyDelete, KeyPolicyUpdate

ASSETS_PATH = "/docs-assets"
SECURITY = {
    "Sluice-Payer": "0x address whose escrow pays: the signer itself, or an account that gave the signer a budget",
    "Sluice-Max-Cost": "decimal base units: the most this call may cost (0 for account and audit reads)",
    "Sluice-Nonce": "decimal uint256, never reused by the same signer (random 128-bit is fine)",
    "Sluice-Deadline": "unix seconds; rejected when past, or further ahead than max_deadline_seconds",
    "Sluice-Signature": "0x 65-byte EIP-712 signature (low-s) of Redemption(payer, keccak256(body), maxCost, "
                        "nonce, deadline) under /.well-known/sluice.json's eip712_domain",
}
# One security requirement naming all five schemes: a signed call carries every header together.
SIGNED_CALL: list[dict[str, list[str]]] = [{name.replace("-", ""): [] for name in SIGNED_HEADERS}]
# Codes answered outside the ApiError tree (the HTTP-level handlers and a few call sites).
EXTRA_CODES = ("not_found", "method_not_allowed", "http_error", "context_length_exceeded", "upstream_dropped",
               "node_not_registered", "node_retired", "cors_origin_not_allowed")


def error_codes() -> dict[str, list[str]]:
    """Every stable error code the service answers, by HTTP status."""
    by_status: dict[str, set[str]] = {}
    pending: list[type[errors.ApiError]] = [errors.ApiError]
    while pending:
        cls = pending.pop()
        by_status.setdefault(str(cls.status), set()).add(cls.code)
        pending.extend(cls.__subclasses__())
    return {status: sorted(codes) for status, codes in sorted(by_status.items())}


class ChatCompletion(BaseModel):
    """OpenAI's chat completion object, as vLLM answers it (fields beyond these pass through)."""

    model_config = ConfigDict(extra="allow")
    id: str
    object: str = "chat.completion"
    created: int
    model: str
    choices: list[dict[str, Any]]
    usage: dict[str, Any] | None = Field(None, description="prompt_tokens, completion_tokens, total_tokens")


class Completion(BaseModel):
    """OpenAI's text completion object, as vLLM answers it (fields beyond these pass through)."""

    model_config = ConfigDict(extra="allow")
    id: str
    object: str = "text_completion"
    created: int
    model: str
    choices: list[dict[str, Any]]
    usage: dict[str, Any] | None = None


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None
    code: str = Field(description="a stable code; see the x-sluice-error-codes extension for every one by status")


class ErrorEnvelope(BaseModel):
    """OpenAI's error envelope: every refusal of the service."""

    error: ErrorDetail


GENERATION = {
    "/v1/chat/completions": (ChatCompletionRequest, ChatCompletion, "Create a chat completion",
                             "A chat completion (optionally streamed), paid from Sluice-Payer's escrow."),
    "/v1/completions": (CompletionRequest, Completion, "Create a completion",
                        "A text completion (optionally streamed), paid from Sluice-Payer's escrow."),
}
GENERATION_ERRORS = ("400", "401", "402", "403", "404", "413", "429", "502", "503", "504")
RATE_LIMITED = {"Retry-After": {"description": "429: whole seconds until the key's rate window opens again",
                                "schema": {"type": "integer"}}}
SIGNED_READ_ERRORS = ("400", "401", "403", "404", "429")
PLAIN_ERRORS = ("400",)
RESPONSE_HEADERS = {
    "Sluice-Job-Id": {"description": "0x job id of the metered call", "schema": {"type": "string"}},
    "Sluice-Cost": {"description": "what the call cost, base units (streams: in the final usage chunk)",
                    "schema": {"type": "string"}},
}


def _error_responses(statuses: tuple[str, ...]) -> dict[str, Any]:
    return {status: {"description": "refused: the OpenAI error envelope with a stable code",
                     "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorEnvelope"}}}}
            for status in statuses}


def _add_schemas(components: dict[str, Any], *models: type[BaseModel]) -> None:
    for model in models:
        schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
        components.update(schema.pop("$defs", {}))
        components[model.__name__] = schema


def _generation_operation(path: str) -> dict[str, Any]:
    request, response, summary, description = GENERATION[path]
    operation: dict[str, Any] = {"post": {
        "tags": ["inference"], "summary": summary, "description": description,
        "operationId": path.strip("/").replace("/", "_"),
        "security": SIGNED_CALL,
        "requestBody": {"required": True, "content": {"application/json": {
            "schema": {"$ref": f"#/components/schemas/{request.__name__}"}}}},
        "responses": {
            "200": {"description": "the completion; with stream true, server-sent events ending in a usage chunk "
                                   'that carries "sluice": {"job_id", "cost"}',
                    "headers": RESPONSE_HEADERS,
                    "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{response.__name__}"}},
                                "text/event-stream": {"schema": {"type": "string"}}}},
            **_error_responses(GENERATION_ERRORS),
        },
    }}
    operation["post"]["responses"]["429"]["headers"] = RATE_LIMITED
    return operation


def _is_signed(path: str) -> bool:
    return path.startswith(("/audit/", "/v1/budget", "/v1/usage", "/v1/calls", "/v1/keys", "/v1/operations"))


def build_openapi(app: FastAPI) -> dict[str, Any]:
    if app.openapi_schema is not None:
        return app.openapi_schema
    doc = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
    components = doc.setdefault("components", {})
    schemas = components.setdefault("schemas", {})
    for unused in ("HTTPValidationError", "ValidationError"):
        schemas.pop(unused, None)
    _add_schemas(schemas, ChatCompletionRequest, CompletionRequest, ChatCompletion, Completion, ErrorEnvelope,
                 KeyPolicyUpdate, KeyPolicyDelete)
    components["securitySchemes"] = {
        name.replace("-", ""): {"type": "apiKey", "in": "header", "name": name, "description": SECURITY[name]}
        for name in SIGNED_HEADERS
    }
    paths: dict[str, Any] = doc.setdefault("paths", {})
    for path, item in paths.items():
        for operation in item.values():
            responses = operation.setdefault("responses", {})
            responses.pop("422", None)
            if _is_signed(path):
                operation["security"] = SIGNED_CALL
                responses.update(_error_responses(SIGNED_READ_ERRORS))
            elif operation.get("parameters") or operation.get("requestBody"):
                responses.update(_error_responses(PLAIN_ERRORS))
    for path in GENERATION:
        paths[path] = _generation_operation(path)
    doc["x-sluice-error-codes"] = error_codes() | {"other": sorted(EXTRA_CODES)}
    app.openapi_schema = doc
    return doc


def install_docs(app: FastAPI) -> None:
    """The OpenAPI document with the additions above, and /docs and /redoc from local assets."""
    assets = files("fastapi_offline") / "static"
    app.mount(ASSETS_PATH, StaticFiles(directory=str(assets)), name="docs-assets")
    app.openapi = lambda: build_openapi(app)  # type: ignore[method-assign]

    async def swagger(request: Request) -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url="/openapi.json", title=f"{app.title} - Swagger UI",
            swagger_js_url=f"{ASSETS_PATH}/swagger-ui-bundle.js", swagger_css_url=f"{ASSETS_PATH}/swagger-ui.css",
            swagger_favicon_url=f"{ASSETS_PATH}/favicon.png")

    async def redoc(request: Request) -> HTMLResponse:
        return get_redoc_html(openapi_url="/openapi.json", title=f"{app.title} - ReDoc",
                              redoc_js_url=f"{ASSETS_PATH}/redoc.standalone.js",
                              redoc_favicon_url=f"{ASSETS_PATH}/favicon.png", with_google_fonts=False)

    app.add_route("/docs", swagger, include_in_schema=False)
    app.add_route("/redoc", redoc, include_in_schema=False)
