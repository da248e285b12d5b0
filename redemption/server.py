"""Run the redemption service with uvicorn (uvloop and httptools when installed)."""

from __future__ import annotations

import uvicorn

from redemption.app import create_app
from redemption.config import ServiceSettings


def run_service(settings: ServiceSettings, *, log_level: str = "warning") -> None:
    uvicorn.run(create_app(settings), host=settings.api_host, port=settings.api_port, log_level=log_level,
                loop="auto", http="auto", access_log=False, timeout_graceful_shutdown=5)
