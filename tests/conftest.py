"""Shared fixtures: a fresh SQLite store per test and a CLI runner bound to it."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from meshgate.cli import cli

Invoke = Callable[..., Result]


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No test reads the developer's MESHGATE_* settings or writes to the cwd."""
    for k in list(os.environ):
        if k.startswith("MESHGATE_") and k not in ("MESHGATE_ENVOY", "MESHGATE_TEST_PG"):
            monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("MESHGATE_ACTOR", "test@meshgate")
    monkeypatch.chdir(tmp_path)


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "meshgate.db"


@pytest.fixture
def db(db_path: Path) -> str:
    """What `run` passes as --db: the SQLite file. A test module runs on SQLite and
    PostgreSQL by overriding it:

        @pytest.fixture
        def db(store_url: str) -> str:
            return store_url
    """
    return str(db_path)


@pytest.fixture
def run(db: str) -> Invoke:
    """Run `meshgate --db <tmp db> ARGS...`; returns click's Result."""
    runner = CliRunner()

    def invoke(*args: str, input: str | None = None) -> Result:
        return runner.invoke(cli, ["--db", db, *args], input=input, catch_exceptions=False)

    return invoke


def dump_database(path: Path | str) -> str:
    """Every table, view, index and row of the SQLite file (sqlite3 iterdump), or "" if absent.

    `path` may also be a database URL (PostgreSQL: tables, views and rows; see tests.pgdb.dump).
    Compare a dump before and after a command to prove it changed nothing.
    """
    import sqlite3

    from meshgate.store.db import resolve_url, sqlite_path

    if "://" in str(path):
        found = sqlite_path(resolve_url(str(path)))
        if found is None:
            from tests.pgdb import dump

            return dump(str(path))
        path = found
    path = Path(path)
    if not path.exists():
        return ""
    conn = sqlite3.connect(path)
    try:
        return "\n".join(conn.iterdump())
    finally:
        conn.close()


@pytest.fixture
def db_dump(db: str) -> Callable[[], str]:
    """`db_dump()` returns the full dump of the test database (see dump_database)."""
    return lambda: dump_database(db)


@pytest.fixture
def initialized(run: Invoke) -> Invoke:
    """`run`, after `meshgate init --trust-domain example.org` on the test database."""
    result = run("init", "--trust-domain", "example.org")
    assert result.exit_code == 0, result.output
    return run


@pytest.fixture
def pg_url(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A fresh, empty PostgreSQL database for this test, dropped after.

    Skips unless MESHGATE_TEST_PG is set (`make pg`). Also sets MESHGATE_CA_KEY:
    a PostgreSQL store has no key file beside it.
    """
    from meshgate.ca.keys import ENV_KEY, encode_key, generate_key
    from tests.pgdb import fresh_database

    with fresh_database() as url:
        monkeypatch.setenv(ENV_KEY, encode_key(generate_key()))
        yield url


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The same test on both backends: a new SQLite file, then a new PostgreSQL database."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'meshgate.db'}"
    return str(request.getfixturevalue("pg_url"))
