"""Opening the store: URL resolution, SQLite pragmas, migrations on open."""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import Connection, Engine, create_engine, event, inspect
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, OperationalError
from sqlalchemy.pool import NullPool

from meshgate.store.errors import LockedError, StoreError

DEFAULT_DB = "meshgate.db"
BUSY_TIMEOUT_MS = 5000


def is_locked(exc: OperationalError) -> bool:
    """SQLite's "database is locked" / busy, PostgreSQL's lock timeout."""
    msg = str(exc.orig)
    return "locked" in msg or "busy" in msg or "lock timeout" in msg


def locked_error() -> LockedError:
    return LockedError(
        f"the database is locked by another writer (waited {BUSY_TIMEOUT_MS / 1000:g} s); "
        "nothing was changed, try again"
    )


# meshgate ships one PostgreSQL driver (psycopg 3, the `postgres` extra); a URL
# without a driver would make SQLAlchemy look for psycopg2.
_PG_SCHEMES = ("postgresql://", "postgres://")
PG_DRIVER_URL = "postgresql+psycopg://"


def resolve_url(db: str | None = None) -> str:
    """`--db`, else `MESHGATE_DB`, else ./meshgate.db. A bare path means SQLite.

    `postgresql://...` and `postgres://...` mean `postgresql+psycopg://...`.
    """
    value = db or os.environ.get("MESHGATE_DB") or DEFAULT_DB
    if "://" in value:
        for scheme in _PG_SCHEMES:
            if value.startswith(scheme):
                value = PG_DRIVER_URL + value[len(scheme) :]
        try:
            make_url(value)
        except (ArgumentError, ValueError) as exc:
            raise StoreError(f"--db: not a database URL: {safe_url(value)!r}") from exc
        return value
    return f"sqlite:///{Path(value).expanduser().absolute()}"


def safe_url(url: str) -> str:
    """`url` with any password masked, for messages and logs."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except (ArgumentError, ValueError):
        return url.split("@")[-1] if "@" in url else url


READ_ONLY = "meshgate_read_only"


@contextmanager
def reading(engine: Engine) -> Iterator[Connection]:
    """A connection for a consistent read that takes no write lock.

    SQLite: a deferred transaction (in WAL mode one snapshot, never blocking a
    writer). PostgreSQL: REPEATABLE READ, so every statement of the read sees one
    snapshot (READ COMMITTED, the default, takes a new one per statement: a World
    loaded table by table could mix two revisions)."""
    with engine.connect() as conn:
        if is_postgres(engine):
            conn = conn.execution_options(isolation_level="REPEATABLE READ")
        yield conn.execution_options(**{READ_ONLY: True})


def sqlite_path(url: str) -> Path | None:
    """The file behind a SQLite URL, or None for other databases or :memory:."""
    u = make_url(url)
    if u.get_backend_name() != "sqlite" or not u.database or u.database == ":memory:":
        return None
    return Path(u.database)


def is_postgres(engine: Engine) -> bool:
    return engine.dialect.name == "postgresql"


def _sqlite_pragmas(dbapi_conn, _record) -> None:  # type: ignore[no-untyped-def]
    cur = dbapi_conn.cursor()
    cur.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    _use_wal(cur)
    cur.execute("PRAGMA foreign_keys = ON")
    cur.execute("PRAGMA synchronous = NORMAL")
    cur.close()


def _use_wal(cur) -> None:  # type: ignore[no-untyped-def]
    """Switch the file to WAL (persistent: only its first opener changes it).

    Switching needs an exclusive lock and SQLite reports "database is locked"
    at once, without the busy handler, while another process opens the same
    new file (two replicas or CLI calls starting together): retry for up to
    the busy timeout.
    """
    deadline = time.monotonic() + BUSY_TIMEOUT_MS / 1000
    while True:
        try:
            if cur.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
                cur.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.01)


def create(url: str) -> Engine:
    """An engine for `url` with meshgate's connection settings (no schema work)."""
    if url.startswith("sqlite"):
        # NullPool: every connection sees the newest data_version and no file
        # handle outlives its use (the CLI is short-lived, the server polls).
        engine = create_engine(
            url,
            poolclass=NullPool,
            connect_args={"timeout": BUSY_TIMEOUT_MS / 1000, "isolation_level": None},
        )
        event.listen(engine, "connect", _sqlite_pragmas)

        # pysqlite's own transaction handling is off (isolation_level=None);
        # begin explicitly so every write is one real transaction.
        # Writers take the write lock up front (BEGIN IMMEDIATE) so the busy
        # timeout applies instead of a deadlock error on lock upgrade; readers
        # opened with `reading()` begin deferred and, in WAL mode, never block
        # a writer (the server loads the World on every change).
        @event.listens_for(engine, "begin")
        def _begin(conn) -> None:  # type: ignore[no-untyped-def]
            if conn.get_execution_options().get(READ_ONLY):
                conn.exec_driver_sql("BEGIN")
            else:
                conn.exec_driver_sql("BEGIN IMMEDIATE")

        return engine
    if make_url(url).get_backend_name() == "postgresql":
        # A small pool per process (CLI: one connection; a replica: its watcher,
        # status writer and readers). pre_ping replaces connections a PostgreSQL
        # failover or restart closed; connect_timeout makes an unreachable server
        # a clear error instead of a hang.
        return create_engine(
            url,
            pool_pre_ping=True,
            pool_size=5,
            max_overflow=5,
            connect_args={"connect_timeout": 10, "application_name": "meshgate"},
        )
    return create_engine(url, pool_pre_ping=True, pool_size=5, max_overflow=5)


def exists(engine: Engine) -> bool:
    """True when the database already holds a meshgate mesh."""
    try:
        return inspect(engine).has_table("mesh")
    except OperationalError as exc:
        raise StoreError(f"cannot open database: {exc.orig}") from exc


def open_store(db: str | None = None, *, must_exist: bool = True) -> Engine:
    """Open (and upgrade) the store. Refuses a missing database unless told.

    Takes no write lock unless a migration is pending (migrations.upgrade), so a
    read-only command proceeds while another process holds a write open."""
    from meshgate.store import migrations

    url = resolve_url(db)
    path = sqlite_path(url)
    if must_exist and path is not None and not path.exists():
        raise StoreError(
            f"no database at {path}: run `meshgate init --trust-domain <domain>` first "
            "(or pass --db / set MESHGATE_DB)"
        )
    engine = create(url)
    try:
        migrations.upgrade(engine)
    except OperationalError as exc:
        if is_locked(exc):  # a pending migration needs the write lock (BEGIN IMMEDIATE)
            raise locked_error() from exc
        raise StoreError(f"cannot open database {safe_url(url)}: {exc.orig}") from exc
    if must_exist and not _has_mesh(engine):
        raise StoreError(
            "the database has no mesh yet: run `meshgate init --trust-domain <domain>`"
        )
    return engine


def _has_mesh(engine: Engine) -> bool:
    from sqlalchemy import func, select

    from meshgate.store.schema import mesh

    with reading(engine) as conn:  # no write lock: read-only commands never wait for a writer
        return bool(conn.execute(select(func.count()).select_from(mesh)).scalar())
