"""The layout of the state dir (`SLUICE_HOME`) and the embedded endpoints it implies.

`sluice up` keeps every service's data, logs and sockets here; processes that use
the embedded stack derive its database and broker URLs from the same layout
(`Settings.effective_database_url` / `effective_broker_url`).

    chain/        state.json (accounts, code, blocks, receipts, logs), anvil.log
    postgres/     data/ (PGDATA), postgres.log
    redis/        redis.conf, appendonly.aof, redis.log
    deployments/  <chain id>.json, the deployer's record (ledger.chain.deployment)
    run/          unix sockets (or /tmp/sluice-<uid>-<hash> when this path is too long for them)
    stack.pid     lock and pid of the process running the stack
    stack.json    the running stack's deployment record and endpoints
    stack.log     the detached supervisor's log
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

# PostgreSQL only listens on a unix socket; the port merely names the socket file.
POSTGRES_SOCKET_PORT = 5432
# sockaddr_un.sun_path holds 108 bytes including the terminating NUL.
_SOCKET_PATH_MAX = 107


@dataclass(frozen=True)
class StatePaths:
    """Where each service keeps its data, logs and sockets under the state dir."""

    root: Path

    @property
    def chain_dir(self) -> Path:
        return self.root / "chain"

    @property
    def chain_state(self) -> Path:
        return self.chain_dir / "state.json"

    @property
    def anvil_log(self) -> Path:
        return self.chain_dir / "anvil.log"

    @property
    def postgres_dir(self) -> Path:
        return self.root / "postgres"

    @property
    def pgdata(self) -> Path:
        return self.postgres_dir / "data"

    @property
    def postgres_log(self) -> Path:
        return self.postgres_dir / "postgres.log"

    @property
    def redis_dir(self) -> Path:
        return self.root / "redis"

    @property
    def redis_conf(self) -> Path:
        return self.redis_dir / "redis.conf"

    @property
    def redis_log(self) -> Path:
        return self.redis_dir / "redis.log"

    @property
    def run_dir(self) -> Path:
        """Directory of the unix sockets: `<state>/run`, or a short path in /tmp when that one is too long."""
        preferred = self.root / "run"
        if len(os.fsencode(preferred / "pg" / f".s.PGSQL.{POSTGRES_SOCKET_PORT}")) <= _SOCKET_PATH_MAX:
            return preferred
        digest = hashlib.sha256(os.fsencode(self.root)).hexdigest()[:12]
        return Path("/tmp") / f"sluice-{os.getuid()}-{digest}"

    @property
    def postgres_socket_dir(self) -> Path:
        return self.run_dir / "pg"

    @property
    def redis_socket(self) -> Path:
        return self.run_dir / "redis.sock"

    @property
    def pid_file(self) -> Path:
        return self.root / "stack.pid"

    @property
    def stack_json(self) -> Path:
        return self.root / "stack.json"

    @property
    def stack_log(self) -> Path:
        return self.root / "stack.log"


def postgres_url(paths: StatePaths) -> str:
    """The psycopg URL of the embedded PostgreSQL (unix socket, trust auth, user and database `postgres`)."""
    return f"postgresql://postgres@/postgres?host={quote(str(paths.postgres_socket_dir), safe='/')}"


def broker_url(paths: StatePaths) -> str:
    """The Celery broker URL of the embedded Redis (kombu's unix-socket form)."""
    return f"redis+socket://{paths.redis_socket}"
