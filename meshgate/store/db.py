"""Opening the store: URL resolution, SQLite pragmas, migrations on open."""

from __future__ import annotations

import os
from pathlib import Path

from sqlalchemy import Engine, create_engine, event, inspect
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, OperationalError
from sqlalchemy.pool import NullPool

from meshgate.store.errors import StoreError

DEFAULT_DB = "meshgate.db"
BUSY_TIMEOUT_MS = 5000


def resolve_url(db: str | None = None) -> str:
    """`--db`, else `MESHGATE_DB`, else ./meshgate.db. A bare path means SQLite."""
    value = db or os.environ.get("MESHGATE_DB") or DEFAULT_DB
    if "://" in value:
        try:
            make_url(value)
        except (ArgumentError, ValueError) as exc:
            raise StoreError(f"--db: not a database URL: {value!r}") from exc
        return value
    return f"sqlite:///{Path(value).expanduser().absolute()}"


def sqlite_path(url: str) -> Path | None:
    """The file behind a SQLite URL, or None for other databases or :memory:."""
    u = make_url(url)
    if u.get_backend_name() != "sqlite" or not u.database or u.database == ":memory:":
        return None
    return Path(u.database)


def is_sqlite(engine: Engine) -> bool:
    return engine.dialect.name == "sqlite"


def _sqlite_pragmas(dbapi_conn, _record) -> None:  # type: ignore[no-untyped-def]
    cur = dbapi_conn.cursor()
    cur.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    cur.execute("PRAGMA journal_mode = WAL")
    cur.execute("PRAGMA foreign_keys = ON")
    cur.execute("PRAGMA synchronous = NORMAL")
    cur.close()


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
        @event.listens_for(engine, "begin")
        def _begin(conn) -> None:  # type: ignore[no-untyped-def]
            conn.exec_driver_sql("BEGIN IMMEDIATE")

        return engine
    return create_engine(url, pool_pre_ping=True, pool_size=5, max_overflow=5)


def exists(engine: Engine) -> bool:
    """True when the database already holds a meshgate mesh."""
    try:
        return inspect(engine).has_table("mesh")
    except OperationalError as exc:
        raise StoreError(f"cannot open database: {exc.orig}") from exc


def open_store(db: str | None = None, *, must_exist: bool = True) -> Engine:
    """Open (and upgrade) the store. Refuses a missing database unless told."""
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
        raise StoreError(f"cannot open database {url}: {exc.orig}") from exc
    if must_exist and not _has_mesh(engine):
        raise StoreError(
            "the database has no mesh yet: run `meshgate init --trust-domain <domain>`"
        )
    return engine


def _has_mesh(engine: Engine) -> bool:
    from sqlalchemy import func, select

    from meshgate.store.schema import mesh

    with engine.connect() as conn:
        return bool(conn.execute(select(func.count()).select_from(mesh)).scalar())
