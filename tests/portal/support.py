"""Running the portal's Node side from pytest: the browser journey steps and the Vitest suites."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
PORTAL = ROOT / "portal"
CHROMIUM = os.environ.get("SLUICE_CHROMIUM", "/usr/bin/chromium")


def require_portal() -> None:
    """The built portal, its node_modules and Chromium are set-up (`make setup`), not optional: fail, never skip."""
    missing = [what for what, ok in (
        ("portal/dist (run make setup, or npm --prefix portal run build)", (PORTAL / "dist" / "index.html").is_file()),
        ("portal/node_modules (run make setup)", (PORTAL / "node_modules" / "playwright-core").is_dir()),
        (f"{CHROMIUM} (apt-get install -y chromium, or set SLUICE_CHROMIUM)", Path(CHROMIUM).exists()),
        ("node", shutil.which("node") is not None),
    ) if not ok]
    assert not missing, "the portal tests need " + "; ".join(missing)


def journey(step: str, **config: Any) -> dict[str, Any]:
    """One step of tests/journeys.mjs; its JSON result (the step's own failure fails the test with its output)."""
    done = subprocess.run(["node", "tests/journeys.mjs", step], cwd=PORTAL, capture_output=True, text=True,
                          timeout=240, env={**os.environ, "SLUICE_JOURNEY": json.dumps(config)})
    assert done.returncode == 0, f"journey step {step} failed:\n{done.stderr}\n{done.stdout}"
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["problems"] == [], result["problems"]  # page errors, console errors, failed or foreign requests
    for shot in result["screenshots"]:
        assert Path(shot).stat().st_size > 10_000, shot
    return result
