"""Schemathesis over the service's own OpenAPI document, against the real stack (bounded example count).

Every operation the service documents is called with generated input (no signatures, or garbage ones):
no answer is a 5xx, every error is the OpenAI envelope, and a rejected request changes nothing in holds,
usage, nonces or reservations. The figures (operations, cases, failures) are written to
`openapi-fuzz.json` under the pytest base temp dir and printed at the end of the module.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings

from tests.support.stack import Deployed

EXAMPLES = 25  # per operation
FIGURES: dict[str, Any] = {"operations": set(), "cases": 0, "failures": [], "unsendable": 0}


@pytest.fixture(scope="module")
def api_schema(deployed: Deployed) -> Any:
    return schemathesis.openapi.from_url(deployed.api + "/openapi.json")


@pytest.fixture(scope="module", autouse=True)
def figures(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    yield
    summary = {"operations": len(FIGURES["operations"]), "cases": FIGURES["cases"],
               "failures": len(FIGURES["failures"]), "unsendable": FIGURES["unsendable"],
               "failed": FIGURES["failures"][:20]}
    path = Path(tmp_path_factory.getbasetemp()) / "openapi-fuzz.json"
    path.write_text(json.dumps(summary, indent=2))
    print(f"\nschemathesis: {summary['operations']} operations, {summary['cases']} cases, "
          f"{summary['failures']} failures ({path})")


def snapshot(deployed: Deployed) -> tuple[Any, ...]:
    [row] = deployed.sql("SELECT (SELECT count(*) FROM holds), (SELECT count(*) FROM usage_records),"
                         " (SELECT count(*) FROM call_nonces), (SELECT coalesce(sum(reserved), 0) FROM reserved_payer)")
    return row


def check(case: Any, deployed: Deployed) -> None:
    label = f"{case.method} {case.path}"
    FIGURES["cases"] += 1
    before = snapshot(deployed)
    try:
        response = case.call(base_url=deployed.api, timeout=15)
    except (httpx.HTTPError, OSError, ValueError):  # a header value the client itself cannot send
        FIGURES["unsendable"] += 1
        return
    try:
        assert response.status_code < 500, f"{label} answered {response.status_code}: {response.text[:300]}"
        if response.status_code >= 400:
            error = response.json()["error"]
            assert set(error) == {"message", "type", "param", "code"}, response.text[:300]
            assert snapshot(deployed) == before, f"{label} refused ({response.status_code}) but changed state"
    except AssertionError as failure:
        FIGURES["failures"].append(str(failure)[:300])
        raise


def test_no_operation_answers_5xx_or_changes_state_when_it_refuses(api_schema: Any, deployed: Deployed) -> None:
    """Every documented operation, EXAMPLES generated cases each (derandomized: the same cases every run)."""
    failures: list[str] = []
    for result in api_schema.get_all_operations():
        operation = result.ok()
        FIGURES["operations"].add(f"{operation.method.upper()} {operation.path}")

        @given(operation.as_strategy())
        @settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
                  suppress_health_check=list(HealthCheck))
        def run(case: Any) -> None:
            check(case, deployed)

        try:
            run()
        except AssertionError as failure:
            failures.append(str(failure)[:500])
    assert failures == []
