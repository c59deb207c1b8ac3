"""Read-only CLI commands never wait for a writer: while another connection holds a
write transaction open (SQLite's BEGIN IMMEDIATE, PostgreSQL's write lock) with an
uncommitted change, they answer with the last committed state; a write command
still fails with the locked error and changes nothing.

The busy timeout is cut to 0.2 s here, so a read that took the write lock (or
waited for it) would fail with the locked error instead of passing late.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest
from conftest import Invoke
from sqlalchemy import delete, insert, select

import meshgate.store.db as store_db
from meshgate.store import schema, txn
from meshgate.store.db import open_store
from meshgate.store.errors import LockedError
from meshgate.store.txn import Write, write

TIMEOUT_MS = 200

LOCKED = (f"error: the database is locked by another writer (waited {TIMEOUT_MS / 1000:g} s); "
          "nothing was changed, try again")

# Every read-only command that opens the store; each must answer while a write is open.
READS: list[tuple[str, ...]] = [
    ("service", "list", "--output", "json"),
    ("service", "show", "orders", "--output", "json"),
    ("instance", "list", "--output", "json"),
    ("proxy", "list", "--output", "json"),
    ("proxy", "status", "--output", "json"),
    ("proxy", "show", "orders-1", "--output", "json"),
    ("proxy", "config", "orders-1"),
    ("history", "--output", "json"),
    ("diff", "2", "--output", "json"),
    ("export",),
    ("export", "--output", "json"),
    ("policy", "list", "--output", "json"),
    ("policy", "show", "web-to-orders", "--output", "json"),
    ("policy", "check", "--from", "web", "--to", "orders", "--path", "/api", "--output", "json"),
    ("policy", "matrix", "--output", "json"),
    ("mesh", "show", "--output", "json"),
    ("edge", "list", "--output", "json"),
    ("edge", "route", "list", "--output", "json"),
    ("edge", "cert", "list", "--output", "json"),
    ("jwt", "list", "--output", "json"),
    ("events", "--output", "json"),
    ("ca", "show", "--output", "json"),
]


@pytest.fixture
def db(store_url: str) -> str:
    """SQLite and PostgreSQL (skipped without MESHGATE_TEST_PG)."""
    return store_url


@pytest.fixture
def short_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(store_db, "BUSY_TIMEOUT_MS", TIMEOUT_MS)
    monkeypatch.setattr(txn, "BUSY_TIMEOUT_MS", TIMEOUT_MS)


@pytest.fixture
def mesh(initialized: Invoke) -> Invoke:
    for args in (("service", "add", "orders", "--port", "8080"), ("service", "add", "web"),
                 ("proxy", "add", "orders-1", "--service", "orders"),
                 ("instance", "add", "orders", "--address", "127.0.0.1", "--inbound-port", "15006",
                  "--app-port", "8080", "--proxy", "orders-1"),
                 ("policy", "allow", "--id", "web-to-orders", "--from", "web", "--to", "orders",
                  "--path-prefix", "/api"),
                 ("proxy", "add", "public", "--edge", "--listen", "127.0.0.1:8443"),
                 ("edge", "route", "add", "public", "--host", "shop.example.org", "--prefix", "/",
                  "--to", "orders", "--auth", "none")):
        r = initialized(*args)
        assert r.exit_code == 0, r.output
    return initialized


@contextmanager
def held_write(db: str) -> Iterator[Write]:
    """Another connection's write transaction, open (lock held, a service inserted and
    not committed) for the block; committed after it, rolled back if the block fails."""
    engine = store_db.create(store_db.resolve_url(db))  # no migration: the store as it is
    try:
        with write(engine, "service add pending", "holder@test") as w:
            row = {"name": "pending", "protocol": "http", "port": 80, "labels": "{}",
                   "created_at": 0.0, "updated_at": 0.0}
            w.conn.execute(insert(schema.services).values(**row))
            w.record("services", "pending", "add", before=None, after=row)
            yield w
    finally:
        engine.dispose()


def _outputs(run: Invoke) -> dict[tuple[str, ...], str]:
    out = {}
    for args in READS:
        r = run(*args)
        assert r.exit_code == 0, (args, r.output)
        out[args] = r.output
    return out


def test_read_commands_answer_with_the_committed_state_while_a_write_is_open(
    mesh: Invoke, db: str, short_timeout: None, db_dump: Callable[[], str]
) -> None:
    before = _outputs(mesh)
    assert "pending" not in before[("export",)]
    dump = db_dump()
    with held_write(db):
        during = _outputs(mesh)
        for args in READS:
            assert during[args] == before[args], args
        names = [s["name"] for s in json.loads(during[("service", "list", "--output", "json")])]
        assert names == ["orders", "web"]
        check = json.loads(during[("policy", "check", "--from", "web", "--to", "orders",
                                   "--path", "/api", "--output", "json")])
        assert check["allowed"] is True
        # a write still waits for the lock, then fails and changes nothing
        r = mesh("service", "add", "billing")
        assert r.exit_code == 1
        assert r.output.strip().splitlines() == [LOCKED]
        assert db_dump() == dump
    # the held write committed: now every reader sees it, and the refused write never happened
    names = [s["name"] for s in json.loads(mesh("service", "list", "--output", "json").output)]
    assert names == ["orders", "pending", "web"]
    history = json.loads(mesh("history", "--output", "json").output)
    assert history[0]["summary"] == "service add pending"
    assert not any("billing" in h["summary"] for h in history)


def test_opening_takes_the_write_lock_only_for_a_pending_migration(
    initialized: Invoke, db: str, short_timeout: None
) -> None:
    """A step not yet recorded must run under the lock. SQLite: with a writer open, the open
    fails with the locked error (the step is neither half-applied nor skipped); once the
    writer is gone the next open applies it. PostgreSQL: migrations take their own advisory
    lock, not the writers', so the step runs beside the open writer."""
    sqlite = db.startswith("sqlite")
    engine = open_store(db)
    try:
        with engine.begin() as conn:  # 0006 only creates a table if absent: safe to run again
            conn.execute(delete(schema.schema_migrations)
                         .where(schema.schema_migrations.c.name == "0006_replicas"))
    finally:
        engine.dispose()
    with held_write(db):
        if sqlite:
            with pytest.raises(LockedError, match="locked by another writer"):
                open_store(db)
            r = initialized("service", "list")
            assert r.exit_code == 1
            assert r.output.strip().splitlines() == [LOCKED]
        else:
            assert "0006_replicas" in _open_and_list_steps(db)  # the step runs now, beside the writer
            r = initialized("service", "list")
            assert r.exit_code == 0, r.output
    assert "0006_replicas" in _open_and_list_steps(db)
    assert initialized("service", "list").exit_code == 0


def _open_and_list_steps(db: str) -> set[str]:
    """Open the store (which applies any pending step) and return the recorded steps."""
    engine = open_store(db)
    try:
        with engine.connect() as conn:
            return set(conn.execute(select(schema.schema_migrations.c.name)).scalars())
    finally:
        engine.dispose()


def test_the_migration_check_does_not_wait_for_a_writer(initialized: Invoke, db: str,
                                                        short_timeout: None) -> None:
    """Every step recorded: the open is a read, so it passes while a writer is open."""
    from meshgate.store import migrations

    with held_write(db):
        engine = store_db.create(store_db.resolve_url(db))
        try:
            assert migrations.upgrade(engine) == []
        finally:
            engine.dispose()

