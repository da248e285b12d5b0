"""Waiting for a condition with a deadline: poll with back-off, never a bare sleep."""

from __future__ import annotations

import time
from collections.abc import Callable


def poll_until(check: Callable[[], bool], timeout: float, what: str) -> None:
    """Wait until `check()` is true, polling with back-off; TimeoutError names `what`."""
    deadline = time.monotonic() + timeout
    delay = 0.01
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} did not happen within {timeout:.0f} s")
        time.sleep(delay)
        delay = min(delay * 2, 0.25)
