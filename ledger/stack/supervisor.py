"""Running the embedded stack: start order, waiting, stopping, `serve`, and the detached supervisor.

- `Stack`: starts services in order, waits for each with a deadline, stops them
  in reverse order; an external endpoint is only waited for;
- `serve`: runs a stack until SIGINT/SIGTERM (the foreground `sluice up` and the
  detached supervisor are the same code), holding the state dir's lock;
- the detached supervisor (`start_detached`, `stop_detached`): `serve` in a
  background process of its own session, logging to `<state>/stack.log`.
"""

from __future__ import annotations

import os
import select
import signal
import socket
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from types import FrameType
from typing import Any

from ledger.config import Settings
from ledger.errors import LedgerError
from ledger.paths import StatePaths
from ledger.stack.errors import PortInUse, StackError, StackRunning, show_path
from ledger.stack.logs import RUN_MARK, Progress, now
from ledger.stack.probes import redact
from ledger.stack.processes import STOP_TIMEOUT_S, ManagedProcess
from ledger.stack.running import StackLock, read_stack_record, running_pid, write_stack_record
from ledger.stack.services import (
    BROKER,
    DATABASE,
    ENDPOINT_KEYS,
    INTERNAL_PREFIX,
    NODE_PREFIX,
    Service,
    ServiceFactory,
    default_services,
)

EXTERNAL_TIMEOUT_S = 10.0
DETACHED_START_TIMEOUT_S = 180.0

# What the detached supervisor process runs (`python -c`): this module's `supervise`.
_SUPERVISOR_CODE = "from ledger.stack.supervisor import supervise; raise SystemExit(supervise())"


class StopRequested(Exception):
    """SIGINT/SIGTERM/SIGHUP arrived while the stack was starting."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


# --------------------------------------------------------------------------- the stack


class Stack:
    """Services started in order (each waits for the one before to answer) and stopped in reverse."""

    def __init__(self, services: Sequence[Service], progress: Progress = lambda _msg: None) -> None:
        self.services: list[Service] = list(services)
        self.progress = progress
        self._running: list[tuple[Service, ManagedProcess]] = []
        self._started: set[str] = set()

    def __enter__(self) -> Stack:
        self.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    def start(self) -> None:
        """Start every service not yet started; on any failure stop what was started, then raise."""
        self.start_services(())

    def start_services(self, services: Sequence[Service]) -> None:
        """Add `services` to the stack and start everything not yet started, in order."""
        self.services.extend(services)
        try:
            for service in self.services:
                if service.name not in self._started:
                    self._start_one(service)
                    self._started.add(service.name)
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """Stop every launched service, last started first. Safe to call more than once."""
        self._started.clear()
        while self._running:
            service, managed = self._running.pop()
            self.progress(f"{service.name}: stopping {service.title}")
            managed.stop(self.progress)

    def restart(self, name: str) -> None:
        """Stop one launched service and start it again, waiting until it answers (its data is kept)."""
        running = next((r for r in self._running if r[0].name == name), None)
        if running is None:
            raise StackError(f"{name} is not a running service of this stack")
        service, managed = running
        self.progress(f"{name}: restarting {service.title}")
        managed.stop(self.progress)
        self._running.remove(running)
        self._start_one(service)

    def exited(self) -> list[tuple[Service, int]]:
        """Launched services whose process has exited, with their exit codes."""
        return [(service, code) for service, p in self._running if (code := p.exit_code()) is not None]

    def url(self, name: str) -> str | None:
        """Client URL of the service called `name`, None when the stack has no such service."""
        return next((s.url for s in self.services if s.name == name), None)

    def pid(self, name: str) -> int:
        """Process id of the launched service called `name` (to measure it, say)."""
        pid = next((p.proc.pid for s, p in self._running if s.name == name), None)
        if pid is None:
            raise StackError(f"{name} is not a running service of this stack")
        return pid

    def client_settings(self, settings: Settings) -> Settings:
        """`settings` with this stack's database and broker URLs; the chain URL stays unset for the embedded chain."""
        update = {
            key: url
            for key, name in (("database_url", DATABASE), ("broker_url", BROKER))
            if (url := self.url(name)) is not None
        }
        return settings.model_copy(update=update)

    @property
    def endpoints(self) -> dict[str, Any]:
        """Client URLs by role; node agents (services named `node:*`) are listed together under "nodes"."""
        out: dict[str, Any] = {}
        nodes: list[str] = []
        for s in self.services:
            if s.url is None or s.name.startswith(INTERNAL_PREFIX):
                continue
            if s.name.startswith(NODE_PREFIX):
                nodes.append(s.url)
            else:
                out[ENDPOINT_KEYS.get(s.name, s.name)] = s.url
        if nodes:
            out["nodes"] = nodes
        return out

    def _start_one(self, service: Service) -> None:
        began = time.monotonic()
        if service.launch is None:
            _wait_until_healthy(service, None, EXTERNAL_TIMEOUT_S)
            self.progress(f"{service.name}: using {service.title} at {service.address}")
        else:
            service.launch.prepare()
            _check_claims(service)
            managed = ManagedProcess(service.launch, service.name, service.title)
            self._running.append((service, managed))
            _wait_until_healthy(service, managed, service.launch.start_timeout)
            self.progress(f"{service.name}: {service.title} ready at {service.url} ({time.monotonic() - began:.2f} s)")
        if service.on_ready is not None:
            try:
                service.on_ready(self.progress)
            except (StackError, StopRequested):
                raise
            except Exception as exc:
                raise StackError(
                    f"{service.title} answers, but preparing it failed: {exc}",
                    hint=f"check that {service.url and redact(service.url)} is the right server and lets us in",
                ) from exc


def _wait_until_healthy(service: Service, managed: ManagedProcess | None, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    pause = 0.01
    while True:
        if managed is not None and (code := managed.exit_code()) is not None:
            raise StackError(
                f"{service.title} exited during start-up (exit code {code}); see {show_path(managed.launch.log)}",
                hint=_claim_hint(service),
                log=managed.launch.log,
            )
        if service.healthy():
            return
        now_s = time.monotonic()
        if now_s >= deadline:
            break
        time.sleep(min(pause, deadline - now_s))
        pause = min(pause * 2, 0.25)
    if managed is None:
        raise StackError(
            f"{service.title} did not answer at {service.address} within {timeout:g} s",
            hint=f"check that it runs and that {service.setting} is right, or unset {service.setting} "
            f"to start the embedded one",
        )
    raise StackError(
        f"{service.title} did not answer on {service.address} within {timeout:g} s; "
        f"see {show_path(managed.launch.log)}",
        log=managed.launch.log,
    )


def _claim_hint(service: Service) -> str | None:
    assert service.launch is not None
    ports = service.launch.ports
    if ports:
        return f"if the port is taken, set {ports[0].setting} to a free port (or {service.setting} to use that chain)"
    return None


def _check_claims(service: Service) -> None:
    """Refuse to launch onto a port or socket something else already serves: the error names the setting."""
    assert service.launch is not None
    for claim in service.launch.ports:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            # Same as the servers: lingering TIME_WAIT connections must not count as "in use".
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(("127.0.0.1", claim.port))
            except OSError:
                raise PortInUse(
                    f"port {claim.port} on 127.0.0.1 is already in use, so {service.title} cannot listen there",
                    hint=f"set {claim.setting} to a free port, or stop whatever listens on {claim.port}"
                    + (f" (or set {service.setting} to use a running endpoint)" if service.setting else ""),
                    port=claim.port,
                ) from None
    for path in service.launch.sockets:
        if not path.exists():
            continue
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
            try:
                probe.connect(str(path))
            except OSError:
                continue  # a stale socket file; the server replaces it
        raise StackError(
            f"{service.title} is already running on {path}, probably left over from an earlier run",
            hint=f"stop that process (see {show_path(service.launch.log)}) and start again",
        )


# --------------------------------------------------------------------------- serve


def deploy(settings: Settings, progress: Progress) -> dict[str, Any]:
    """Deploy the contracts unless this chain already has them; returns the deployment record."""
    # Imported here: web3 is heavy, and the stack's services are useful (and tested) without it.
    from ledger.chain.deploy import ensure_deployed

    try:
        record: dict[str, Any] = ensure_deployed(settings, progress=lambda msg: progress(f"deploy: {msg}"))
    except (LedgerError, StopRequested):
        raise
    except Exception as exc:
        raise StackError(
            f"deploying the contracts failed: {exc}",
            hint="fix the cause above, then start the stack again",
        ) from exc
    return record


def default_app_services() -> tuple[ServiceFactory, ...]:
    """Services started after the deployment, in order, and stopped before the infrastructure."""
    # Imported here: the application services pull in web3 (the rate card's models), which
    # `sluice down` and `sluice status` never need.
    from ledger.stack.apps import app_services

    return (app_services,)


class _StopSignals:
    """SIGINT/SIGTERM/SIGHUP handling for `serve`.

    While armed, the first signal raises StopRequested (interrupting start-up
    wherever it is); once disarmed, signals only wake `wait`.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)

    def __init__(self) -> None:
        self.received: list[int] = []
        self.armed = True
        self._previous: dict[int, Any] = {}
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._previous_wakeup_fd = -1

    def __enter__(self) -> _StopSignals:
        for sig in self.SIGNALS:
            self._previous[sig] = signal.signal(sig, self._on_signal)
        self._previous[signal.SIGCHLD] = signal.signal(signal.SIGCHLD, self._on_child)
        # Every signal also writes a byte here, so `wait` cannot miss one that lands before select().
        self._previous_wakeup_fd = signal.set_wakeup_fd(self._wake_w)
        return self

    def __exit__(self, *_exc: object) -> None:
        self.armed = False
        signal.set_wakeup_fd(self._previous_wakeup_fd)
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        os.close(self._wake_r)
        os.close(self._wake_w)

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        self.received.append(signum)
        if self.armed:
            self.armed = False  # one exception at most: the clean-up that follows must not be interrupted
            raise StopRequested(signum)

    def _on_child(self, _signum: int, _frame: FrameType | None) -> None:
        """Nothing to do: installing a handler is what makes SIGCHLD wake `wait`."""

    def wait(self, stack: Stack) -> list[tuple[Service, int]]:
        """Block until a stop signal arrives (returns []) or a service exits (returns the exited ones)."""
        while not self.received:
            dead = stack.exited()
            if dead:
                return dead
            select.select([self._wake_r], [], [])
            while True:
                try:
                    if not os.read(self._wake_r, 512):
                        break
                except BlockingIOError:
                    break
        return []


def serve(
    settings: Settings,
    *,
    on_ready: Callable[[dict[str, Any]], None],
    progress: Progress,
    services: Sequence[Service] | None = None,
    app_services: Sequence[ServiceFactory] | None = None,
) -> int:
    """Run the stack until SIGINT/SIGTERM/SIGHUP: start, migrate, deploy, write stack.json, wait, stop.

    `services` defaults to `default_services(settings)`, `app_services` to
    default_app_services(). Returns 0 after a requested stop, 1 when a service died on its
    own (the rest are stopped too). Raises StackRunning when the state dir is
    already served, StackError (or the deployer's LedgerError) when start-up
    fails; everything started is stopped before it raises. Call it from the main
    thread: it installs signal handlers.
    """
    paths = StatePaths(settings.state_dir)
    paths.root.mkdir(parents=True, exist_ok=True)
    lock = StackLock(paths.pid_file)
    if not lock.acquire():
        raise StackRunning(running_pid(paths) or 0, paths.root)
    try:
        stack = Stack(services if services is not None else default_services(settings), progress)
        with _StopSignals() as signals:
            try:
                stack.start()
                clients = stack.client_settings(settings)
                record = {**deploy(clients, progress), "endpoints": stack.endpoints}
                factories = default_app_services() if app_services is None else app_services
                built: list[Service] = []
                for factory in factories:
                    made = factory(clients, record)
                    built.extend([made] if isinstance(made, Service) else made)
                stack.start_services(built)
                record["endpoints"] = stack.endpoints
                write_stack_record(paths, record)
                signals.armed = False
                on_ready(record)
                dead = signals.wait(stack)
            except StopRequested as stop:
                signals.armed = False
                progress(f"received {stop}; stopping")
                return 0
            finally:
                signals.armed = False
                paths.stack_json.unlink(missing_ok=True)
                stack.stop()
            for service, code in dead:
                launch_log = service.launch.log if service.launch is not None else paths.stack_log
                progress(
                    f"{service.name}: {service.title} exited on its own (exit code {code}); "
                    f"the stack stopped; see {show_path(launch_log)}"
                )
            if not dead:
                progress(f"received {signal.Signals(signals.received[0]).name}; stack stopped")
            return 1 if dead else 0
    finally:
        lock.release()


# --------------------------------------------------------------------------- detached supervisor


def supervise() -> int:
    """Entry point of the detached supervisor process (`sluice up --detach`); logs to stdout (stack.log)."""
    from ledger.config import get_settings

    def progress(message: str) -> None:
        print(f"{now()} {message}", flush=True)

    try:
        return serve(get_settings(), on_ready=lambda _record: progress("stack ready"), progress=progress)
    except StackError as exc:
        if exc.__cause__ is not None:  # the log is where a developer looks for the original traceback
            progress("".join(traceback.format_exception(exc.__cause__)).rstrip())
        progress(f"error: {exc}")
        if exc.hint:
            progress(f"hint: {exc.hint}")
        return 1
    except LedgerError as exc:
        progress(f"error: {exc}")
        return 1


def start_detached(settings: Settings, timeout: float = DETACHED_START_TIMEOUT_S) -> dict[str, Any]:
    """Start the stack in a background supervisor (own session); return its record once everything is up.

    The supervisor reads its settings from the environment like every Sluice
    process; only the state dir is passed (as an absolute SLUICE_HOME).
    Raises StackRunning when a stack already serves the state dir, StackError
    (pointing at stack.log) when the supervisor fails or is not ready in time.
    """
    paths = StatePaths(settings.state_dir)
    paths.root.mkdir(parents=True, exist_ok=True)
    pid = running_pid(paths)
    if pid is not None:
        raise StackRunning(pid, paths.root)
    paths.stack_json.unlink(missing_ok=True)  # left by a crash: readiness is its reappearance
    env = dict(os.environ)
    env["SLUICE_HOME"] = str(paths.root)
    with paths.stack_log.open("ab") as log:
        log.write(f"\n{RUN_MARK}{now()} sluice up --detach\n".encode())
        log.flush()
        supervisor = subprocess.Popen(
            [sys.executable, "-c", _SUPERVISOR_CODE],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True,
        )  # fmt: skip
    deadline = time.monotonic() + timeout
    pause = 0.02
    while True:
        record = read_stack_record(paths)
        if record is not None:
            return record
        code = supervisor.poll()
        if code is not None:
            raise StackError(
                f"the stack did not start (supervisor exited with code {code}); see {show_path(paths.stack_log)}",
                log=paths.stack_log,
            )
        if time.monotonic() >= deadline:
            supervisor.terminate()
            try:
                supervisor.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                supervisor.kill()
            raise StackError(
                f"the stack was not ready within {timeout:g} s; see {show_path(paths.stack_log)}",
                hint="pass a longer --timeout if deployment is slow on this machine",
                log=paths.stack_log,
            )
        time.sleep(pause)
        pause = min(pause * 2, 0.25)


def stop_detached(settings: Settings, timeout: float = 60.0) -> int | None:
    """SIGTERM the process running the stack and wait until it let go; returns its pid, None if none ran."""
    paths = StatePaths(settings.state_dir)
    pid = running_pid(paths)
    if pid is None:
        return None
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return pid
    deadline = time.monotonic() + timeout
    pause = 0.02
    while running_pid(paths) is not None:
        if time.monotonic() >= deadline:
            raise StackError(
                f"the stack (pid {pid}) did not stop within {timeout:g} s; see {show_path(paths.stack_log)}",
                hint=f"`kill -KILL {pid}` ends it; its services get a signal when it dies",
                log=paths.stack_log,
            )
        time.sleep(pause)
        pause = min(pause * 2, 0.25)
    return pid
