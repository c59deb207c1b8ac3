"""Revisions applied to the previous World equal a full reload; anything else falls back."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import Engine, insert

from meshgate.model import Policy
from meshgate.store import schema
from meshgate.store.instances import remove_instance
from meshgate.store.mesh import update_mesh
from meshgate.store.policies import add_policy
from meshgate.store.proxies import credentials, remove_proxy, revoke_proxy, rotate_token
from meshgate.store.services import remove_service, update_service
from meshgate.store.txn import write
from meshgate.store.world import load_world
from meshgate.xds.translate.index import WorldIndex
from meshgate.xds.worldpatch import changes_since, patch
from tests.xds_support import instance, mesh_fixture, service, sidecar


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
    # a gap in revision ids (a transaction not visible yet)
    assert patch(world, WorldIndex(world), creds, [(world.revision + 2, [])]) is None
