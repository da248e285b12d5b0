"""The README's error table names every code the service can answer, under the status it comes with."""

from __future__ import annotations

import ast
import inspect
import re
from pathlib import Path

from redemption import errors

ROOT = Path(__file__).resolve().parents[2]
# Answered by the envelope's handler for routes and methods that do not exist (redemption.api.error_handlers).
HANDLER_CODES = {("404", "not_found"), ("405", "method_not_allowed")}


def class_codes() -> dict[str, tuple[str, str]]:
    """Each ApiError class of redemption.errors by name: (status, code)."""
    return {name: (str(cls.status), cls.code) for name, cls in inspect.getmembers(errors, inspect.isclass)
            if issubclass(cls, errors.ApiError)}


def returned_codes() -> set[tuple[str, str]]:
    """Every (status, code): the classes' own, and each `errors.X(..., code="...")` raised anywhere."""
    classes = class_codes()
    found = set(classes.values()) | HANDLER_CODES
    for path in (ROOT / "redemption").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and isinstance(node.func.value, ast.Name) and node.func.value.id == "errors"):
                continue
            for keyword in node.keywords:
                if keyword.arg == "code" and isinstance(keyword.value, ast.Constant):
                    found.add((classes[node.func.attr][0], str(keyword.value.value)))
    cors = ast.parse((ROOT / "redemption/api/cors.py").read_text())  # what the CORS middleware writes itself
    for node in ast.walk(cors):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "JSONResponse":
            status = next(k.value.value for k in node.keywords if k.arg == "status_code"
                          and isinstance(k.value, ast.Constant))  # fmt: skip
            inner = node.args[0]
            assert isinstance(inner, ast.Call) and isinstance(inner.args[2], ast.Constant)
            found.add((str(status), str(inner.args[2].value)))
    server = ast.parse((ROOT / "redemption/server.py").read_text())  # what the connection guard writes itself
    for node in ast.walk(server):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "_response":
            status, _, code = (arg.value for arg in node.args[:3] if isinstance(arg, ast.Constant))
            found.add((str(status), str(code)))
    return found


def readme_table() -> set[tuple[str, str]]:
    text = (ROOT / "README.md").read_text()
    table = text[text.index("**Errors**"):]
    table = table[: table.index("\n\n", table.index("| status"))]
    rows = re.findall(r"^\| (\d{3}) \| (.*?) \|", table, re.M)
    return {(status, code) for status, cell in rows for code in re.findall(r"`([a-z_]+)`", cell)}


def test_every_code_the_service_returns_is_in_the_readme_table() -> None:
    codes = returned_codes()
    assert {"not_auditor", "node_retired", "upstream_error", "context_length_exceeded"} <= {c for _, c in codes}
    assert sorted(codes - readme_table()) == []


def test_the_readme_table_names_no_code_the_service_lacks() -> None:
    assert sorted(readme_table() - returned_codes()) == []


def js_client_codes() -> set[str]:
    """The codes of clients/js's `SluiceErrorCode` union."""
    source = (ROOT / "clients/js/src/errors.ts").read_text()
    union = source[source.index("export type SluiceErrorCode ="):]
    union = union[: union.index(";")]
    return set(re.findall(r"\| '([a-z_]+)'", union))


def test_the_js_client_knows_exactly_the_readme_codes() -> None:
    assert sorted(js_client_codes() - {"http_error"}) == sorted({code for _, code in readme_table()})


def test_the_python_client_types_only_readme_codes_under_their_status() -> None:
    from redemption import sdk

    table = readme_table()
    for code, cls in sdk.ERRORS_BY_CODE.items():
        status = next(s for s, generic in sdk.ERRORS_BY_STATUS.items() if issubclass(cls, generic))
        assert (str(status), code) in table
    permission = {code for status, code in table if status == "403"}
    # every 403 a client can meet has its type; the CORS refusal reaches browsers only, `forbidden` is the generic
    assert permission - set(sdk.ERRORS_BY_CODE) == {"cors_origin_not_allowed", "forbidden"}
