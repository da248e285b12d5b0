"""The suite's one way to wait: poll a condition until a deadline, never a bare sleep loop."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def wait_until(check: Callable[[], T], timeout: float = 20.0, what: str = "the condition", *,
               every: Callable[[], object] | None = None, max_delay: float = 0.1) -> T:
    """Poll `check()` with a short back-off until it returns something truthy, and return that.

    `every` runs before each round (e.g. mine a block); the pause between rounds doubles from 10 ms up
    to `max_delay` (0.01 keeps a steady 10 ms beat, for states that last well under a second); after
    `timeout` seconds the test fails with an AssertionError naming `what`.
    """
    deadline = time.monotonic() + timeout
    delay = 0.01
    while True:
        if every is not None:
            every()
        if result := check():
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not happen within {timeout:g} s")
        time.sleep(delay)
        delay = min(delay * 2, max_delay)
