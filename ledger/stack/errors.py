"""What goes wrong running the embedded stack: one message, what to do about it, and the log that explains it."""

from __future__ import annotations

from pathlib import Path

from ledger.errors import LedgerError
from ledger.stack.logs import log_tail


def show_path(path: Path) -> str:
    """`path` relative to the working directory when it lies below it (shorter in messages)."""
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


class StackError(LedgerError):
    """A service of the stack could not be started, checked or stopped.

    `hint` says what to do; `log` is the file whose tail explains the failure.
    """

    def __init__(self, message: str, hint: str | None = None, log: Path | None = None) -> None:
        super().__init__(message)
        self.hint = hint
        self.log = log

    def log_tail(self, lines: int = 20) -> str:
        return log_tail(self.log, lines) if self.log is not None else ""


class StackRunning(StackError):
    """A stack already runs for this state dir (`pid` holds its lock)."""

    def __init__(self, pid: int, state_dir: Path) -> None:
        super().__init__(
            f"a Sluice stack is already running for {show_path(state_dir)} (pid {pid})",
            hint="`sluice status` shows it; `sluice down` stops it",
        )
        self.pid = pid


class PortInUse(StackError):
    """A port an embedded service needs is taken; the hint names the setting that moves it."""

    def __init__(self, message: str, hint: str, port: int) -> None:
        super().__init__(message, hint)
        self.port = port
