"""Which process runs the stack for a state dir, and what it published.

`<state>/stack.pid` is flock'ed by the process running the stack and holds its pid;
`<state>/stack.json` is the running stack's deployment record plus its endpoints,
written once everything answers and removed when the stack stops.
"""

from __future__ import annotations

import fcntl
import json
import os
import time
from pathlib import Path
from typing import Any

from ledger.paths import StatePaths
from ledger.stack.errors import StackError


class StackLock:
    """`<state>/stack.pid`: flock'ed by the process running the stack, and holding its pid.

    The kernel drops the lock when that process dies, so a stale pid never
    counts as running.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None

    def acquire(self) -> bool:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        deadline = time.monotonic() + 1.0
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                # `running_pid` probes with a momentary shared lock; only a lasting holder means "running".
                if time.monotonic() >= deadline:
                    os.close(fd)
                    return False
                time.sleep(0.02)
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd
        return True

    def release(self) -> None:
        if self._fd is None:
            return
        # Emptied, not removed: unlinking a lock file races with processes that just opened it.
        os.ftruncate(self._fd, 0)
        os.close(self._fd)
        self._fd = None


def running_pid(paths: StatePaths) -> int | None:
    """Pid of the process running the stack for this state dir, or None."""
    try:
        fd = os.open(paths.pid_file, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            pass  # held: the owner is alive
        else:
            fcntl.flock(fd, fcntl.LOCK_UN)
            return None
        deadline = time.monotonic() + 2.0
        while True:  # the owner writes its pid right after locking
            content = os.pread(fd, 32, 0).decode().strip()
            if content.isdigit():
                return int(content)
            if time.monotonic() >= deadline:
                raise StackError(f"{paths.pid_file} is locked but holds no pid", hint="check `ps` for a sluice process")
            time.sleep(0.01)
    finally:
        os.close(fd)


def read_stack_record(paths: StatePaths) -> dict[str, Any] | None:
    """The running stack's deployment record plus endpoints (stack.json), or None."""
    try:
        record: dict[str, Any] = json.loads(paths.stack_json.read_text())
    except FileNotFoundError:
        return None
    return record


def write_stack_record(paths: StatePaths, record: dict[str, Any]) -> None:
    """Publish the running stack's record (stack.json) in one step: readers never see half a file."""
    tmp = paths.stack_json.with_name(paths.stack_json.name + ".tmp")
    tmp.write_text(json.dumps(record, indent=2) + "\n")
    tmp.replace(paths.stack_json)
