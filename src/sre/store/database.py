"""Connecting to the store: engines, pragmas, transactions and migrations for both dialects.

The embedded default is one SQLite file in WAL mode; the scaled store is PostgreSQL through psycopg
with a connection pool. Write transactions on SQLite start with `BEGIN IMMEDIATE`, so two writers
queue on the database lock instead of failing half-way; on PostgreSQL the repositories lock the rows
they extend. Migrations are Alembic's, applied on open and by `sre db upgrade`.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

from sre.store.tenancy import BOUND_TENANT, bind, install
from sre.types.errors import ConfigError

MIGRATIONS = Path(__file__).parent / "migrations"


def normalise_url(url: str) -> str:
    """Accept the URLs people paste (`postgres://`, `postgresql://`) and pick the psycopg driver."""
    for prefix in ("postgres://", "postgresql://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    if url.startswith(("postgresql+psycopg://", "sqlite://", "sqlite+pysqlite://")):
        return url
    raise ConfigError(
        f"unsupported database URL scheme in {url.split(':', 1)[0]!r}: use postgresql:// or sqlite://"
    )


SYNCHRONOUS = ("normal", "full")  # SQLite's durability: WAL with NORMAL survives a crash of SRE, FULL
# also a power cut (every commit is synced to disk)


def create_engine(url: str, *, pool_size: int = 10, synchronous: str = "normal") -> sa.Engine:
    url = normalise_url(url)
    if synchronous not in SYNCHRONOUS:
        raise ValueError(f"synchronous must be one of {', '.join(SYNCHRONOUS)}, not {synchronous!r}")
    if url.startswith("sqlite"):
        engine = sa.create_engine(
            url,
            connect_args={"check_same_thread": False, "timeout": 30},
            pool_size=pool_size,
            max_overflow=pool_size,
            # The connection used last is used next: its page and statement caches are warm (FIFO
            # rotated through every pooled connection, each one's caches cold).
            pool_use_lifo=True,
        )

        @sa.event.listens_for(engine, "connect")
        def _on_connect(dbapi_connection: Any, _record: Any) -> None:
            dbapi_connection.isolation_level = None  # we issue BEGIN ourselves, below
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute(f"PRAGMA synchronous={synchronous.upper()}")
            cursor.execute("PRAGMA busy_timeout=30000")
            cursor.close()

        @sa.event.listens_for(engine, "begin")
        def _on_begin(conn: sa.Connection) -> None:
            immediate = conn.get_execution_options().get("sre_write", False)
            conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

        return engine
    return sa.create_engine(
        url, pool_size=pool_size, max_overflow=pool_size * 2, pool_pre_ping=True, pool_use_lifo=True
    )


def id_equals(column: sa.ColumnElement[Any], value: str) -> sa.ColumnElement[bool]:
    """`column == value`; FALSE for a value with NUL, which PostgreSQL text cannot hold (no id has one)."""
    return sa.false() if "\x00" in value else column == value


class Database:
    """An engine plus the two kinds of transaction the repositories use."""

    def __init__(
        self, url: str, *, pool_size: int = 10, synchronous: str = "normal", row_security: bool = True
    ) -> None:
        self.url = normalise_url(url)
        self.engine = create_engine(self.url, pool_size=pool_size, synchronous=synchronous)
        self.dialect = self.engine.dialect.name
        # `UPDATE … RETURNING`: PostgreSQL, and SQLite from 3.35 (older ones take two statements).
        self.returning = self.dialect == "postgresql" or sqlite3.sqlite_version_info >= (3, 35)
        # PostgreSQL: transactions made for a tenant are bound to it, under row-level security.
        self.row_security = self.dialect == "postgresql" and row_security
        if self.row_security:
            install(self.engine)

    @contextmanager
    def read(self) -> Iterator[sa.Connection]:
        with self.engine.connect() as conn, conn.begin():
            if self.row_security:
                bind(conn, BOUND_TENANT.get())
            yield conn

    @contextmanager
    def write(self) -> Iterator[sa.Connection]:
        with self.engine.connect() as conn:
            conn.execution_options(sre_write=True)
            with conn.begin():
                if self.row_security:
                    bind(conn, BOUND_TENANT.get())
                yield conn

    def dispose(self) -> None:
        self.engine.dispose()

    # -- migrations ---------------------------------------------------------------------------

    def _alembic_config(self, conn: sa.Connection) -> Config:
        cfg = Config()
        cfg.set_main_option("script_location", str(MIGRATIONS))
        cfg.attributes["connection"] = conn
        return cfg

    def current_revision(self) -> str | None:
        with self.engine.connect() as conn:
            return MigrationContext.configure(conn).get_current_revision()

    def head_revision(self) -> str | None:
        with self.engine.connect() as conn:
            return ScriptDirectory.from_config(self._alembic_config(conn)).get_current_head()

    def upgrade(self) -> bool:
        """Apply pending migrations; return whether anything ran. Cheap when already at head."""
        if self.current_revision() == self.head_revision():
            return False
        with self.engine.connect() as conn:
            conn.execution_options(sre_write=True)
            with conn.begin():
                if self.dialect == "postgresql":
                    # Several processes may start at once; one migrates, the others wait here.
                    conn.exec_driver_sql("SELECT pg_advisory_xact_lock(7215000001)")
                command.upgrade(self._alembic_config(conn), "head")
        return True
