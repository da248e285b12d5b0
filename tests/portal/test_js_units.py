"""The JavaScript unit tests (Vitest) from pytest, so `make test` runs them: @sluice/client's amounts, typed
data and batch checks against the Python implementation's vectors, and the portal's formatting and errors."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.portal.support import PORTAL, ROOT, require_portal


def test_the_protocol_vectors_are_those_of_the_python_code() -> None:
    done = subprocess.run([sys.executable, "scripts/export_protocol_vectors.py", "--check"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize("package", ["clients/js", "portal"])
def test_vitest(package: str) -> None:
    require_portal()
    done = subprocess.run(["npx", "--no-install", "vitest", "run", "--reporter=dot"], cwd=ROOT / package,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert " failed" not in done.stdout and "passed" in done.stdout, done.stdout
    assert PORTAL.is_dir()
