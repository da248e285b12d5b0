"""Entry point for `celery -A ledger.celery_app`: the app of `ledger.settlement.celery_app`, built on first access."""

from __future__ import annotations

from celery import Celery

from ledger.settlement.celery_app import get_app


def __getattr__(name: str) -> Celery:
    if name == "app":
        return get_app()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
