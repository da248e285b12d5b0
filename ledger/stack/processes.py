"""Child processes of the embedded stack: how one is launched, watched and stopped.

Children live in their own process groups (a terminal's Ctrl-C reaches only the
supervisor, which stops them in order) and get a parent-death signal, so even a
SIGKILLed supervisor leaves nothing running. A child may run as another OS user
(PostgreSQL refuses to run as root), with root's groups dropped.
"""

from __future__ import annotations

import ctypes
import os
import pwd
import signal
import stat
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ledger.stack.errors import StackError
from ledger.stack.logs import RUN_MARK, Progress, now

START_TIMEOUT_S = 20.0
STOP_TIMEOUT_S = 20.0

_PR_SET_PDEATHSIG = 1
_LIBC = ctypes.CDLL(None, use_errno=True) if sys.platform == "linux" else None


@dataclass(frozen=True)
class PortClaim:
    """A TCP port on 127.0.0.1 an embedded service listens on, and the setting that moves it."""

    port: int
    setting: str


@dataclass(frozen=True)
class Launch:
    """How to run an embedded service as a child process."""

    argv: tuple[str, ...]
    log: Path
    prepare: Callable[[], None] = lambda: None  # one-off setup before each launch: dirs, initdb, config
    ports: tuple[PortClaim, ...] = ()
    sockets: tuple[Path, ...] = ()  # unix sockets it will bind; one that answers means a leftover server
    stop_signal: signal.Signals = signal.SIGTERM
    run_as: str | None = None  # OS user name; None runs as ourselves
    env: dict[str, str] | None = None  # None inherits our environment
    start_timeout: float = START_TIMEOUT_S
    stop_timeout: float = STOP_TIMEOUT_S


class ManagedProcess:
    """A launched embedded service: its child process and how to stop it.

    `name` and `title` are the service's, for messages.
    """

    def __init__(self, launch: Launch, name: str, title: str) -> None:
        self.launch = launch
        self.name = name
        self.title = title
        self.proc = spawn(launch)

    def exit_code(self) -> int | None:
        return self.proc.poll()

    def stop(self, progress: Progress) -> None:
        if self.proc.poll() is not None:
            return
        self.proc.send_signal(self.launch.stop_signal)
        try:
            self.proc.wait(self.launch.stop_timeout)
        except subprocess.TimeoutExpired:
            progress(
                f"{self.name}: {self.title} did not stop within {self.launch.stop_timeout:g} s "
                f"of {self.launch.stop_signal.name}; killing it"
            )
            self.proc.kill()
            self.proc.wait()


def spawn(launch: Launch) -> subprocess.Popen[bytes]:
    """Start `launch` with its output appended to its log (after a run mark), in its own process group."""
    launch.log.parent.mkdir(parents=True, exist_ok=True)
    with launch.log.open("ab") as log:
        log.write(f"\n{RUN_MARK}{now()} sluice starts: {' '.join(launch.argv)}\n".encode())
        log.flush()
        return subprocess.Popen(
            launch.argv,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=launch.env,
            # Own process group: a terminal's Ctrl-C reaches only us, and we stop children in order.
            process_group=0,
            # preexec_fn is safe here: stacks are started from the main thread, before any worker threads.
            preexec_fn=_die_with_parent(launch.stop_signal, os.getpid()),
            **identity_kwargs(launch.run_as),
        )


def _die_with_parent(sig: signal.Signals, parent: int) -> Callable[[], None]:
    def preexec() -> None:
        if _LIBC is None:
            return
        # The kernel signals the child when its parent dies, even by SIGKILL: no orphaned servers.
        _LIBC.prctl(_PR_SET_PDEATHSIG, int(sig))
        if os.getppid() != parent:
            os.kill(os.getpid(), sig)

    return preexec


def identity_kwargs(user: str | None) -> dict[str, Any]:
    """subprocess arguments that run a child as OS user `user` (none: as ourselves)."""
    if user is None:
        return {}
    entry = pwd.getpwnam(user)
    # Without dropping root's groups the child could still read root-group files, and would fail on 0700 trees.
    return {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}


def ensure_os_user(user: str | None) -> pwd.struct_passwd | None:
    """The password entry of `user`, creating it as a system user without a home or shell if it is missing."""
    if user is None:
        return None
    try:
        return pwd.getpwnam(user)
    except KeyError:
        pass
    result = subprocess.run(
        ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", user],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    if result.returncode != 0:
        raise StackError(
            f"PostgreSQL cannot run as root and creating the user {user!r} failed: {result.stderr.strip()}",
            hint="run `sluice up` as an unprivileged user, or set DATABASE_URL to an existing PostgreSQL",
        )
    return pwd.getpwnam(user)


def grant_traverse(path: Path) -> None:
    """Let the PostgreSQL OS user reach `path`: add search (x, not read) permission for others on its ancestors."""
    for parent in path.parents:
        mode = parent.stat().st_mode
        if not mode & stat.S_IXOTH:
            parent.chmod(stat.S_IMODE(mode) | stat.S_IXOTH)


def process_alive(pid: int) -> bool:
    """True when a process `pid` exists (ours or another user's)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
