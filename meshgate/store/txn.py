"""Writes: every change is one transaction that also records a revision.

    with write(engine, "add service orders") as w:
        w.conn.execute(insert(services).values(...))
        w.record("service", "orders", "add", before=None, after={...})

The revision row is inserted in the same transaction, so a failed command
leaves neither the change nor its revision behind.
"""

from __future__ import annotations

import getpass
import json
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, Engine, insert, select, text
from sqlalchemy.exc import OperationalError

from meshgate.store import schema
from meshgate.store.db import BUSY_TIMEOUT_MS, is_locked, locked_error
from meshgate.store.errors import StoreError


def default_actor() -> str:
    """`MESHGATE_ACTOR`, else user@host."""
    env = os.environ.get("MESHGATE_ACTOR")
    if env:
        return env
    try:
        user = getpass.getuser()
    except Exception:  # noqa: BLE001 - no passwd entry in some containers
        user = "unknown"
    return f"{user}@{socket.gethostname()}"


@dataclass
class Write:
    conn: Connection
    summary: str
    actor: str
    changes: list[dict[str, Any]] = field(default_factory=list)
    revision: int | None = None

    def record(
        self,
        kind: str,
        key: str,
        op: str,
        *,
        before: dict[str, Any] | None = None,
        after: dict[str, Any] | None = None,
    ) -> None:
        """Note one entity change (op: add, update, remove) for the revision."""
        self.changes.append(
            {"kind": kind, "key": key, "op": op, "before": before, "after": after}
        )


# PostgreSQL: every write transaction first takes this advisory lock (held to
# commit), so writes are serialized exactly as SQLite's BEGIN IMMEDIATE does:
# - the repositories' read-check-write steps (exists? then insert; next seq)
#   stay correct under READ COMMITTED;
# - revision ids are drawn inside the lock, so they become visible in
#   increasing order: a replica polling max(revisions.id) never skips a
#   revision that committed after a higher one.
# The wait is bounded like SQLite's busy timeout, then LockedError.
WRITE_LOCK = 0x6D67_7772  # "mgwr"


def writers_serialized(engine: Engine) -> bool:
    """True when every `write()` holds one lock from its first statement to its commit
    (SQLite's BEGIN IMMEDIATE, PostgreSQL's WRITE_LOCK). Revision ids are then drawn
    and become visible in increasing order, so an id missing below a visible one
    belongs to a transaction that rolled back (PostgreSQL's sequences are not
    transactional: a rolled-back insert still uses its id up) and never appears."""
    return engine.dialect.name in ("sqlite", "postgresql")


def _serialize_writers(conn: Connection) -> None:
    if conn.dialect.name == "postgresql":
        conn.execute(text(f"SET LOCAL lock_timeout = '{BUSY_TIMEOUT_MS}ms'"))
        conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": WRITE_LOCK})


@contextmanager
def write(engine: Engine, summary: str, actor: str | None = None) -> Iterator[Write]:
    """One transaction; on success records a revision when anything changed."""
    try:
        with engine.begin() as conn:
            _serialize_writers(conn)
            w = Write(conn=conn, summary=summary, actor=actor or default_actor())
            yield w
            if w.changes:
                result = conn.execute(
                    insert(schema.revisions).values(
                        actor=w.actor,
                        at=time.time(),
                        summary=w.summary,  # the block may refine it (apply: counts)
                        changes=json.dumps(w.changes, sort_keys=True, default=str),
                    )
                )
                w.revision = int(result.inserted_primary_key[0])  # type: ignore[index]
    except OperationalError as error:
        exc = _first_database_error(error)
        msg = str(exc.orig)
        if is_locked(exc):
            raise locked_error() from error
        if "disk" in msg or "full" in msg:
            raise StoreError(f"the database could not be written ({msg}); nothing was changed") from error
        raise StoreError(f"database error: {msg}; nothing was changed") from error


def _first_database_error(exc: OperationalError) -> OperationalError:
    """The first database error behind `exc`. On SQLITE_FULL (and I/O errors) SQLite
    rolls the whole transaction back by itself, so leaving a savepoint (apply runs
    each change in one) then fails with "no such savepoint": the reason is the
    error that came first."""
    first, cause = exc, exc.__context__
    for _ in range(10):  # a short chain; never loop on a cycle
        if cause is None:
            break
        if isinstance(cause, OperationalError):
            first = cause
        cause = cause.__context__
    return first


def current_revision(conn: Connection) -> int:
    from sqlalchemy import func

    return int(conn.execute(select(func.coalesce(func.max(schema.revisions.c.id), 0))).scalar_one())
