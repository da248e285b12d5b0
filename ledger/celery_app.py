"""Entry point kept for `celery -A ledger.celery_app`: the app lives in `ledger.settlement.celery_app`."""

from ledger.settlement.celery_app import app

__all__ = ["app"]
