"""PostgreSQL access for the ledger: connections and the schema migrations.

This module owns how a Sluice process opens a psycopg 3 connection and how the
plain-SQL migrations in `ledger/migrations/` (`NNNN_name.sql`, optional
`NNNN_name.rollback.sql`) are applied with yoyo. `sluice up` migrates right
after PostgreSQL answers; every other process may call `migrate` too, because
it is idempotent and serialised by yoyo's lock table.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import psycopg
from psycopg.rows import TupleRow

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"

# yoyo picks its driver from the URL scheme; `+psycopg` selects psycopg 3 (plain `postgresql` means psycopg2).
_YOYO_SCHEME = "postgresql+psycopg"
_POSTGRES_SCHEMES = ("postgresql", "postgres", "postgresql+psycopg")


def connect(url: str, **kwargs: Any) -> psycopg.Connection[TupleRow]:
    """Open a connection to `url` in transaction mode (autocommit off): commit explicitly or use `with`."""
    return psycopg.connect(url, autocommit=False, **kwargs)


def yoyo_url(url: str) -> str:
    """The yoyo form of a libpq URL (`postgresql://...` becomes `postgresql+psycopg://...`)."""
    scheme, sep, rest = url.partition("://")
    if not sep or scheme not in _POSTGRES_SCHEMES:
        raise ValueError(f"not a PostgreSQL URL: {url!r} (expected postgresql://...)")
    return f"{_YOYO_SCHEME}://{rest}"


def migrate(url: str, migrations_dir: Path = MIGRATIONS_DIR) -> list[str]:
    """Apply every migration not yet applied to the database at `url`; returns the ids applied now, in order."""
    from yoyo import get_backend, read_migrations

    backend = get_backend(yoyo_url(url))
    try:
        migrations = read_migrations(str(migrations_dir))
        with backend.lock():
            pending = backend.to_apply(migrations)
            backend.apply_migrations(pending)
        return [str(m.id) for m in pending]
    finally:
        backend.connection.close()


def applied_migrations(url: str) -> list[str]:
    """Ids of the migrations applied to the database at `url`, in the order they were applied."""
    with connect(url) as conn:
        rows = conn.execute("SELECT migration_id FROM _yoyo_migration ORDER BY applied_at_utc, migration_id").fetchall()
    return [str(row[0]) for row in rows]
