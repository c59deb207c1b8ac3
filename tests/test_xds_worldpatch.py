"""Revisions applied to the previous World equal a full reload; anything else falls back.
The server patches on SQLite and PostgreSQL (writers serialized), across the holes
rolled-back transactions leave in PostgreSQL's revision ids."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import Engine, func, insert, select

from meshgate.model import Policy
from meshgate.store import schema, txn
from meshgate.store.db import reading
from meshgate.store.instances import remove_instance
from meshgate.store.mesh import update_mesh
from meshgate.store.policies import add_policy
from meshgate.store.proxies import credentials, remove_proxy, revoke_proxy, rotate_token
from meshgate.store.services import remove_service, update_service
from meshgate.store.txn import write
from meshgate.store.world import load_world
from meshgate.xds.translate.index import WorldIndex
from meshgate.xds.worldpatch import changes_since, patch
from tests.xds_support import (
    EDS,
    AdsClient,
    FakeSecrets,
    instance,
    mesh_fixture,
    new_mesh,
    service,
    serving,
    sidecar,
)


def _step(engine: Engine, world, index, creds):  # type: ignore[no-untyped-def]
    with engine.connect() as conn:
        revs = changes_since(conn, world.revision)
    return patch(world, index, creds, revs)


def _full(engine: Engine):  # type: ignore[no-untyped-def]
    with engine.connect() as conn:
        return load_world(engine), credentials(conn)


def test_patched_world_equals_a_full_reload(tmp_path: Path) -> None:
    engine, _ = mesh_fixture(tmp_path)
    world, creds = _full(engine)
    index = WorldIndex(world)
    index.instances_by_service, index.instance_by_proxy  # noqa: B018 - computed, to be carried
    batches = [  # each batch is one or more revisions, patched at once
        [lambda: instance(engine, "orders", 16001)],
        [lambda: instance(engine, "orders", 16002), lambda: service(engine, "billing", port=7070),
         lambda: instance(engine, "billing", 16003)],
        [lambda: sidecar(engine, "billing-1", "billing")],
        [lambda: _w(engine, lambda w: update_service(w, "orders", port=8081))],
        [lambda: _w(engine, lambda w: remove_instance(w, 3)), lambda: instance(engine, "billing", 16004)],
        [lambda: _w(engine, lambda w: revoke_proxy(w, "billing-1")),
         lambda: _w(engine, lambda w: rotate_token(w, "orders-1"))],
        [lambda: _w(engine, lambda w: remove_proxy(w, "web-1"))],  # unlinks web's instance too
        [lambda: _w(engine, lambda w: add_policy(w, Policy("x", "allow", ("web",), "orders")))],
        [lambda: _w(engine, lambda w: update_mesh(w, default_action="deny"))],
        [lambda: _w(engine, lambda w: remove_proxy(w, "billing-1")),
         lambda: _w(engine, lambda w: remove_service(w, "billing"))],
    ]
    for i, batch in enumerate(batches):
        for edit in batch:
            edit()
        result = _step(engine, world, index, creds)
        assert result is not None, f"batch {i} fell back to a full reload"
        world, index, creds, _ = result
        full_world, full_creds = _full(engine)
        assert world == full_world, f"after batch {i}"
        assert creds == full_creds
        fresh = WorldIndex(full_world)
        assert index.instances_by_service == fresh.instances_by_service
        assert index.instance_by_proxy == fresh.instance_by_proxy


def _w(engine: Engine, fn) -> None:  # type: ignore[no-untyped-def]
    with write(engine, "edit") as w:
        fn(w)


def test_what_a_patch_reports_as_changed(tmp_path: Path) -> None:
    engine, _ = mesh_fixture(tmp_path)
    world, creds = _full(engine)
    instance(engine, "orders", 16001)
    world2, _, _, change = _step(engine, world, WorldIndex(world), creds)
    assert not change.full and change.instance_services == {"orders"} and not change.services
    _w(engine, lambda w: add_policy(w, Policy("x", "allow", ("web",), "orders")))
    *_, change = _step(engine, world2, WorldIndex(world2), creds)
    assert change.full


def test_unpatchable_changes_fall_back(tmp_path: Path) -> None:
    engine, _ = mesh_fixture(tmp_path)
    world, creds = _full(engine)
    # a revision of a table the patch does not handle (edge routes, CA rows ...)
    with write(engine, "jwt") as w:
        w.conn.execute(insert(schema.jwt_providers).values(name="idp", issuer="https://idp", audiences="[]",
                                                            created_at=0.0))
        w.record("jwt_providers", "idp", "add", before=None, after={"name": "idp"})
    assert _step(engine, world, WorldIndex(world), creds) is None
    # a gap in revision ids: unless ids are known to become visible in order, maybe a
    # transaction not visible yet; in order (serialized writers), a rolled-back one
    assert patch(world, WorldIndex(world), creds, [(world.revision + 2, [])]) is None
    patched = patch(world, WorldIndex(world), creds, [(world.revision + 2, [])], ordered=True)
    assert patched is not None and patched[0].revision == world.revision + 2


def _burn_revision_id(engine: Engine) -> None:
    """A write that draws a revision id and then rolls back (as a failed commit would)."""
    with pytest.raises(RuntimeError), engine.begin() as conn:
        txn._serialize_writers(conn)
        conn.execute(insert(schema.revisions).values(actor="test", at=0.0, summary="rolled back", changes="[]"))
        raise RuntimeError("roll back")


async def test_the_server_patches_on_each_backend_even_across_a_rolled_back_revision(
        tmp_path: Path, store_url: str) -> None:
    engine, tokens = mesh_fixture(tmp_path, store_url)
    try:
        async with serving(engine, secrets=FakeSecrets()) as srv, AdsClient(srv.port, tokens["web-1"], delta=True) as c:
            full_loads = []
            real_load = srv._load
            srv._load = lambda: full_loads.append(1) or real_load()  # type: ignore[method-assign]
            await c.send(c.dreq(EDS, ["svc/orders"], node="web-1"))
            eds = await c.recv()
            await c.send(c.dreq(EDS, nonce=eds.nonce))
            start = srv.state.world.revision
            _burn_revision_id(engine)
            instance(engine, "orders", 16001)
            push = await c.recv()  # the change arrives ...
            assert push.type_url == EDS and push.resources[0].version != eds.resources[0].version
            with engine.connect() as conn:
                ids = conn.execute(select(schema.revisions.c.id).where(schema.revisions.c.id > start)).scalars().all()
            if engine.dialect.name == "postgresql":
                assert ids == [start + 2]  # the rolled-back write left a hole in the ids
            assert full_loads == []  # ... patched, not reloaded, even across the hole
            assert srv.state.world == load_world(engine)
            await c.send(c.dreq(EDS, nonce=push.nonce))
    finally:
        engine.dispose()


def test_a_read_is_one_snapshot_on_each_backend(store_url: str) -> None:
    """A World is loaded table by table: every statement of one read must see the same
    state (PostgreSQL's default READ COMMITTED would not)."""
    engine = new_mesh(store_url)
    try:
        with reading(engine) as conn:
            before = conn.execute(select(func.count()).select_from(schema.services)).scalar()
            service(engine, "billing")  # commits meanwhile, on another connection
            assert conn.execute(select(func.count()).select_from(schema.services)).scalar() == before
        with reading(engine) as conn:
            assert conn.execute(select(func.count()).select_from(schema.services)).scalar() == before + 1
    finally:
        engine.dispose()


async def test_the_server_reads_the_store_while_a_writer_holds_the_lock(tmp_path: Path) -> None:
    """Loading the World and reading revisions take no write lock (SQLite: a deferred
    read in WAL mode): a CLI write left open does not stall the server's reloads."""
    import asyncio

    engine, _ = mesh_fixture(tmp_path)
    async with serving(engine, secrets=FakeSecrets()) as srv:
        writer = engine.connect()
        try:
            writer.begin()  # BEGIN IMMEDIATE: SQLite's write lock, held
            writer.execute(insert(schema.services).values(name="pending", protocol="http", port=80,
                                                          labels="{}", created_at=0, updated_at=0))
            # bounded below the 5 s busy timeout a write-locking read would wait (then fail)
            world, _ = await asyncio.wait_for(asyncio.to_thread(srv._load), 3)
            refreshed = await asyncio.wait_for(asyncio.to_thread(srv._refresh), 3)
            assert "pending" not in world.services and "pending" not in refreshed[0].services
        finally:
            writer.rollback()
            writer.close()
