"""The browser-facing surface: CORS on the public routes only, the OpenAPI document, offline docs pages."""

from __future__ import annotations

import re

import httpx
from fastapi.routing import APIRoute
from openapi_spec_validator import validate
from starlette.routing import Route

from redemption.app import ROUTERS, create_app
from redemption.config import ServiceSettings
from redemption.sdk import SluiceAuth
from tests.support.stack import PORTAL_ORIGIN, SMALL_MODEL, Deployed

SIGNED = ("Sluice-Payer", "Sluice-Max-Cost", "Sluice-Nonce", "Sluice-Deadline", "Sluice-Signature")
ALLOWED_HEADERS = ", ".join((*SIGNED, "Sluice-Tier", "Sluice-Region", "Content-Type", "Authorization"))
STRANGER = "https://evil.example"


def preflight(deployed: Deployed, path: str, origin: str, method: str = "POST") -> httpx.Response:
    return httpx.options(deployed.api + path, headers={
        "Origin": origin, "Access-Control-Request-Method": method,
        "Access-Control-Request-Headers": "sluice-payer,sluice-signature,content-type"}, timeout=30)


def cors_headers(response: httpx.Response) -> dict[str, str]:
    return {k.lower(): v for k, v in response.headers.items() if k.lower().startswith("access-control-")}


def test_a_preflight_from_the_allowed_origin_is_answered_on_every_public_route(deployed: Deployed) -> None:
    for path, method in (("/v1/chat/completions", "POST"), ("/v1/completions", "POST"), ("/v1/models", "GET"),
                         ("/v1/budget", "GET"), ("/.well-known/sluice.json", "GET"), ("/audit/transactions", "GET")):
        r = preflight(deployed, path, PORTAL_ORIGIN, method)
        assert r.status_code == 204, (path, r.text)
        assert cors_headers(r) == {
            "access-control-allow-origin": PORTAL_ORIGIN,
            "access-control-allow-methods": "GET, POST, PUT, DELETE, OPTIONS",
            "access-control-allow-headers": ALLOWED_HEADERS,
            "access-control-max-age": "600",
        }
        assert r.headers["vary"] == "Origin"


def test_a_preflight_from_another_origin_is_refused_without_cors_headers(deployed: Deployed) -> None:
    r = preflight(deployed, "/v1/chat/completions", STRANGER)
    assert r.status_code == 403
    assert cors_headers(r) == {}
    error = r.json()["error"]
    assert error["code"] == "cors_origin_not_allowed" and error["type"] == "invalid_request_error"
    assert "SLUICE_CORS_ORIGINS" in error["message"]
    plain = httpx.get(deployed.api + "/.well-known/sluice.json", headers={"Origin": STRANGER}, timeout=30)
    assert plain.status_code == 200 and cors_headers(plain) == {}


def test_node_facing_and_operator_routes_never_answer_cors(deployed: Deployed) -> None:
    for path in ("/internal/dispatch", "/internal/nodes/heartbeat", "/internal/receipts", "/health", "/metrics"):
        r = preflight(deployed, path, PORTAL_ORIGIN)
        assert r.status_code == 405, (path, r.status_code)
        assert cors_headers(r) == {}
    r = httpx.get(deployed.api + "/internal/dispatch", headers={"Origin": PORTAL_ORIGIN}, timeout=30)
    assert cors_headers(r) == {}


def test_a_browser_call_from_the_allowed_origin_reads_the_cost_headers(deployed: Deployed) -> None:
    enterprise = deployed.fund(10)
    deployed.wait_mirrored()
    r = httpx.post(deployed.api + "/v1/chat/completions", headers={"Origin": PORTAL_ORIGIN}, timeout=30,
                   auth=SluiceAuth(enterprise, max_cost=10**17),
                   json={"model": SMALL_MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3})
    assert r.status_code == 200, r.text
    assert cors_headers(r) == {"access-control-allow-origin": PORTAL_ORIGIN,
                               "access-control-expose-headers": "Sluice-Job-Id, Sluice-Cost, Retry-After"}
    assert int(r.headers["Sluice-Cost"]) > 0
    refused = httpx.post(deployed.api + "/v1/chat/completions", headers={"Origin": PORTAL_ORIGIN}, json={},
                         timeout=30)
    assert refused.status_code == 401 and refused.headers["access-control-allow-origin"] == PORTAL_ORIGIN


def test_no_origins_configured_means_no_cors_at_all() -> None:
    from redemption.api.cors import PublicCors

    assert ServiceSettings(cors_origins="").allowed_origins == frozenset()
    assert ServiceSettings(cors_origins=" https://a.test/, https://b.test ").allowed_origins == {
        "https://a.test", "https://b.test"}
    cors = PublicCors(create_app(ServiceSettings()), frozenset())
    assert cors.preflight(PORTAL_ORIGIN).status_code == 403


def test_the_openapi_document_is_valid_and_covers_every_route(deployed: Deployed) -> None:
    doc = httpx.get(deployed.api + "/openapi.json", timeout=30).json()
    validate(doc)
    routes = [route for router in ROUTERS for route in router.routes]
    assert all(isinstance(r, Route | APIRoute) for r in routes)
    served = {(r.path, method.lower()) for r in routes if r.include_in_schema  # type: ignore[attr-defined]
              for method in (r.methods or set()) - {"HEAD"}}  # type: ignore[attr-defined]
    assert len(served) >= 16
    documented = {(path, method) for path, item in doc["paths"].items() for method in item}
    assert served == documented
    assert {"/v1/chat/completions", "/v1/completions"} <= set(doc["paths"])
    schemes = doc["components"]["securitySchemes"]
    assert schemes == {name.replace("-", ""): {"type": "apiKey", "in": "header", "name": name,
                                                "description": schemes[name.replace("-", "")]["description"]}
                       for name in SIGNED}
    requirement = [{name.replace("-", ""): [] for name in SIGNED}]
    chat = doc["paths"]["/v1/chat/completions"]["post"]
    assert chat["security"] == requirement
    assert chat["requestBody"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/ChatCompletionRequest"}
    assert set(chat["responses"]) == {"200", "400", "401", "402", "403", "404", "413", "429", "502", "503", "504"}
    assert set(chat["responses"]["200"]["headers"]) == {"Sluice-Job-Id", "Sluice-Cost"}
    assert doc["paths"]["/audit/transactions"]["get"]["security"] == requirement
    assert "security" not in doc["paths"]["/v1/models"]["get"]
    assert not any("422" in op["responses"] for item in doc["paths"].values() for op in item.values())
    envelope = doc["components"]["schemas"]["ErrorEnvelope"]
    assert envelope["properties"]["error"] == {"$ref": "#/components/schemas/ErrorDetail"}
    codes = doc["x-sluice-error-codes"]
    assert codes["402"] == ["insufficient_budget", "insufficient_escrow", "max_cost_too_low"]
    assert {"no_budget", "not_allowlisted", "paused", "suspended", "not_auditor"} <= set(codes["403"])


def test_docs_and_redoc_load_only_local_assets(deployed: Deployed) -> None:
    for page, expected in (("/docs", {"/docs-assets/swagger-ui-bundle.js", "/docs-assets/swagger-ui.css",
                                      "/docs-assets/favicon.png"}),
                           ("/redoc", {"/docs-assets/redoc.standalone.js", "/docs-assets/favicon.png"})):
        html = httpx.get(deployed.api + page, timeout=30)
        assert html.status_code == 200 and html.headers["content-type"].startswith("text/html")
        assert "//" not in "".join(re.findall(r"""(?:src|href)=["']([^"']+)["']""", html.text))
        assert set(re.findall(r"""(?:src|href)=["']([^"']+)["']""", html.text)) == expected
        assert "'/openapi.json'" in html.text or '"/openapi.json"' in html.text
        for asset in expected:
            r = httpx.get(deployed.api + asset, timeout=30)
            assert r.status_code == 200 and len(r.content) > 4000, asset
