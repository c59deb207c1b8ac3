"""Readers never wait for a writer: the server loads the World while the CLI writes."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import insert, text

from meshgate.store import schema
from meshgate.store.db import open_store, reading
from meshgate.store.world import load_world


def test_world_loads_while_another_connection_holds_the_write_lock(run, db_path: Path) -> None:  # type: ignore[no-untyped-def]
    assert run("init", "--trust-domain", "example.org").exit_code == 0
    engine = open_store(str(db_path))
    writer = engine.connect()
    try:
        writer.begin()  # BEGIN IMMEDIATE: holds SQLite's write lock
        writer.execute(
            insert(schema.services).values(
                name="pending", protocol="http", port=80, labels="{}", created_at=0, updated_at=0
            )
        )
        # A deferred read proceeds at once and sees the last committed state.
        world = load_world(engine)
        assert "pending" not in world.services
        with reading(engine) as conn:
            assert conn.execute(text("select count(*) from services")).scalar() == 0
        writer.commit()
    finally:
        writer.close()
    assert "pending" in load_world(engine).services
