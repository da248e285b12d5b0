"""The Celery app is built from settings when first used, never at import, and carries the retry cap."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from ledger.settlement.celery_app import SUBMIT_TASK, make_app
from ledger.settlement.settings import SettlementSettings

REPO = Path(__file__).resolve().parents[3]


def test_the_submit_tasks_back_off_cap_is_the_setting(tmp_path: Path) -> None:
    import ledger.settlement.tasks  # noqa: F401 - registers the shared tasks with every app

    for cap in (3.0, 7.0):
        app = make_app(SettlementSettings(home=tmp_path, broker_url="memory://", settlement_retry_max=cap,
                                          settlement_sweep=cap + 1))
        try:
            task = app.tasks[SUBMIT_TASK]
            assert task.retry_backoff_max == cap
            assert (task.max_retries, task.retry_backoff, task.retry_jitter) == (60, 1, True)
        finally:
            app.close()


def test_a_cap_the_broker_timeout_cannot_cover_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="SLUICE_SETTLEMENT_RETRY_MAX must be at most 60"):
        make_app(SettlementSettings(home=tmp_path, broker_url="memory://", settlement_retry_max=61,
                                    settlement_sweep=62))


def test_importing_reads_no_settings_and_the_app_attribute_is_built_from_them() -> None:
    """A bad setting fails when the app is wanted (the worker starting), not when a module is imported."""
    script = (
        "import ledger.settlement.tasks, ledger.celery_app\n"
        "try:\n"
        "    ledger.celery_app.app\n"
        "except Exception as exc:\n"
        "    print('refused:', type(exc).__name__)\n"
    )
    env = {**os.environ, "SLUICE_SETTLEMENT_RETRY_MAX": "not a number"}
    out = subprocess.run([sys.executable, "-c", script], cwd=REPO, env=env, capture_output=True, text=True,
                         timeout=60, check=True)
    assert out.stdout.strip() == "refused: ValidationError"
    env = {**os.environ, "SLUICE_SETTLEMENT_RETRY_MAX": "4", "BROKER_URL": "memory://"}
    script = (
        "from ledger.celery_app import app\n"
        "app.loader.import_default_modules()  # what a starting worker does: the app's `include`\n"
        "print(app.main, app.tasks['sluice.submit_batch'].retry_backoff_max)\n"
    )
    out = subprocess.run([sys.executable, "-c", script], cwd=REPO, env=env, capture_output=True, text=True,
                         timeout=60, check=True)
    assert out.stdout.strip() == "sluice 4.0"
