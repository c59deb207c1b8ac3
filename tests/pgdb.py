"""Throwaway PostgreSQL databases for tests.

`MESHGATE_TEST_PG` names a server and a role allowed to create databases
(`make pg` or `.ci/postgres.sh` start one on 127.0.0.1 and write it to
.ci/pg.env). Each test gets its own database, dropped afterwards, so tests
share nothing, not even LISTEN/NOTIFY channels.
"""

from __future__ import annotations

import os
import secrets
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from sqlalchemy import Engine, create_engine, inspect, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError, ProgrammingError
from sqlalchemy.pool import NullPool

ENV = "MESHGATE_TEST_PG"


def server_url() -> str:
    """The server from MESHGATE_TEST_PG; skips the test when it is not set."""
    url = os.environ.get(ENV)
    if not url:
        pytest.skip(f"{ENV} is not set: `make pg` starts a throwaway PostgreSQL for these tests")
    return url


@contextmanager
def fresh_database() -> Iterator[str]:
    """CREATE a new empty database, yield its URL, DROP it (closing any leftover sessions)."""
    base = server_url()
    admin = create_engine(base, isolation_level="AUTOCOMMIT", poolclass=NullPool)
    name = f"mg_test_{os.getpid()}_{secrets.token_hex(4)}"
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    except OperationalError as exc:
        admin.dispose()
        pytest.fail(
            f"{ENV} is set but PostgreSQL cannot be used ({exc.orig}); "
            f"start it with `make pg` or unset {ENV}"
        )
    try:
        yield make_url(base).set(database=name).render_as_string(hide_password=False)
    finally:
        try:
            _drop(admin, name)
        finally:
            admin.dispose()


def _drop(admin: Engine, name: str, attempts: int = 50) -> None:
    """DROP ... WITH (FORCE) ends the test's own leftover sessions, but not an
    autovacuum worker that the server (another role) started on the new database:
    that one ends in milliseconds, so try again for a bounded while."""
    for attempt in range(attempts):
        try:
            with admin.connect() as conn:
                conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            return
        except ProgrammingError as exc:
            if "pg_signal_backend" not in str(exc.orig) or attempt == attempts - 1:
                raise
            time.sleep(0.1)


def dump(url: str) -> str:
    """Every table and view (with columns) and every row, in a stable order.

    Works for any backend; compare before/after a command to prove it
    changed nothing.
    """
    engine = create_engine(url, poolclass=NullPool)
    try:
        lines: list[str] = []
        with engine.connect() as conn:
            insp = inspect(conn)
            for view in sorted(insp.get_view_names()):
                lines.append(f"view {view}")
            for table in sorted(insp.get_table_names()):
                cols = [c["name"] for c in insp.get_columns(table)]
                lines.append(f"table {table} ({', '.join(cols)})")
                rows = [repr(tuple(r)) for r in conn.execute(text(f'SELECT * FROM "{table}"'))]
                lines.extend(f"  {r}" for r in sorted(rows))
        return "\n".join(lines)
    finally:
        engine.dispose()
