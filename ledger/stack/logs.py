"""The embedded stack's log files and progress lines.

Every service, initdb run and detached supervisor appends to its log; each run starts
with a mark line, so error reports quote only what the latest run wrote.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

# Where the stack reports what it does, one line at a time (stderr, the supervisor's log, a test).
Progress = Callable[[str], None]

# Starts every run's section of a log, so error reports quote only the latest run.
RUN_MARK = "--- "


def now() -> str:
    """The current UTC time as log lines show it."""
    return datetime.now(UTC).isoformat(timespec="seconds")


def log_tail(path: Path, lines: int = 20) -> str:
    """The last `lines` lines a log got since its latest run began ('' when it does not exist)."""
    try:
        with path.open("rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 64 * 1024))
            text = f.read().decode("utf-8", "replace")
    except FileNotFoundError:
        return ""
    recent = text.splitlines()
    starts = [i for i, line in enumerate(recent) if line.startswith(RUN_MARK)]
    if starts:  # earlier runs' lines would only mislead
        recent = recent[starts[-1] + 1 :]
    return "\n".join(recent[-lines:])
