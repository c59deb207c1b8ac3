"""`meshgate instance add|list|remove`, and the store functions sidecars register through."""

from __future__ import annotations

import json
import time

import pytest
from conftest import Invoke, dump_database
from sqlalchemy import insert, text

from meshgate.errors import AlreadyExists, Conflict, NotFound, ValidationError
from meshgate.store import schema
from meshgate.store.db import open_store
from meshgate.store.instances import (
    add_instance,
    find_instance,
    get_instance,
    list_instances,
    remove_instance,
)
from meshgate.store.txn import write


@pytest.fixture
def db(store_url: str) -> str:
    """Every test here runs on SQLite and on PostgreSQL (skipped without MESHGATE_TEST_PG)."""
    return store_url


@pytest.fixture
def orders(initialized: Invoke) -> Invoke:
    for name in ("orders", "web"):
        r = initialized("service", "add", name, "--port", "8080")
        assert r.exit_code == 0, r.output
    return initialized


def test_add_list_remove(orders: Invoke, db: str) -> None:
    r = orders("instance", "add", "orders", "--address", "127.0.0.1", "--inbound-port", "15006",
               "--app-port", "8080", "--weight", "3")
    assert r.exit_code == 0, r.output
    assert 'instance 1 added to service "orders" (revision 4)' in r.output
    r = orders("instance", "add", "web", "--address", "::1", "--inbound-port", "15006",
               "--app-port", "9000")
    assert r.exit_code == 0, r.output
    assert "[::1]:15006" in r.output
    r = orders("instance", "add", "orders", "--address", "orders-2.internal",
               "--inbound-port", "15006", "--app-port", "8080")
    assert r.exit_code == 0, r.output

    listed = json.loads(orders("instance", "list", "-o", "json").output)
    assert [(i["id"], i["service"], i["address"], i["weight"]) for i in listed] == [
        (1, "orders", "127.0.0.1", 3), (3, "orders", "orders-2.internal", 1), (2, "web", "::1", 1)
    ]
    assert listed[0] == {
        "id": 1, "service": "orders", "address": "127.0.0.1", "inbound_port": 15006,
        "app_port": 8080, "weight": 3, "healthy": True, "proxy": None, "source": "cli",
    }
    only_web = json.loads(orders("instance", "list", "--service", "web", "-o", "json").output)
    assert [i["id"] for i in only_web] == [2]
    table = orders("instance", "list")
    assert table.exit_code == 0 and "orders-2.internal" in table.output

    r = orders("instance", "remove", "1")
    assert r.exit_code == 0, r.output
    assert 'instance 1 (127.0.0.1:15006 of service "orders") removed (revision 7)' in r.output
    assert [i["id"] for i in json.loads(orders("instance", "list", "-o", "json").output)] == [3, 2]

    engine = open_store(db)
    try:
        with engine.connect() as conn:
            rows = conn.execute(text("SELECT actor, summary, changes FROM revisions "
                                     "WHERE id IN (4, 7) ORDER BY id")).all()
    finally:
        engine.dispose()
    (a4, s4, c4), (a7, s7, c7) = rows
    assert (a4, s4) == ("test@meshgate", "instance add orders 127.0.0.1:15006")
    (added,) = json.loads(c4)
    assert (added["kind"], added["key"], added["op"], added["before"]) == ("instances", "1", "add", None)
    row = dict(added["after"])
    assert isinstance(row.pop("created_at"), float)
    assert row == {**listed[0], "disconnected_at": None}
    assert s7 == "instance remove 1"
    (removed,) = json.loads(c7)
    assert (removed["kind"], removed["key"], removed["after"]) == ("instances", "1", None)
    assert removed["before"] == added["after"]


def test_same_address_and_port_twice_is_refused(orders: Invoke, db: str) -> None:
    args = ("--address", "127.0.0.1", "--inbound-port", "15006", "--app-port", "8080")
    assert orders("instance", "add", "orders", *args).exit_code == 0
    before = dump_database(db)
    r = orders("instance", "add", "web", *args)
    assert r.exit_code == 1
    assert r.output.strip() == 'error: instance 127.0.0.1:15006 already exists (id 1, service "orders")'
    assert dump_database(db) == before


def test_list_of_unknown_service(orders: Invoke) -> None:
    r = orders("instance", "list", "--service", "nope")
    assert r.exit_code == 1
    assert r.output.strip() == 'error: service "nope" not found'


def test_empty_list(orders: Invoke) -> None:
    assert orders("instance", "list").output.strip() == "(none)"
    assert json.loads(orders("instance", "list", "-o", "json").output) == []


# --- the store API that sidecar self-registration (xDS server) calls ---------------------------


def _add_proxy(engine, name: str, kind: str, service: str | None) -> None:  # type: ignore[no-untyped-def]
    with engine.begin() as conn:
        conn.execute(insert(schema.proxies).values(
            name=name, kind=kind, service=service, token_hash="h", created_at=time.time()))


def test_store_api_for_self_registration(orders: Invoke, db: str) -> None:
    engine = open_store(db)
    try:
        _add_proxy(engine, "orders-7", "sidecar", "orders")
        _add_proxy(engine, "gw", "edge", None)
        with write(engine, "proxy orders-7 connected", actor="meshgate-serve") as w:
            inst = add_instance(w, "orders", "127.0.0.7", 15006, 8080, proxy="orders-7",
                                source="proxy")
        assert w.revision is not None
        assert (inst.proxy, inst.source, inst.weight, inst.healthy) == ("orders-7", "proxy", 1, True)
        with engine.connect() as conn:
            assert get_instance(conn, inst.id) == inst
            assert find_instance(conn, "127.0.0.7", 15006) == inst
            assert find_instance(conn, "127.0.0.7", 15007) is None
            assert list_instances(conn, "orders") == [inst]
            assert list_instances(conn, "web") == []

        with pytest.raises(NotFound, match='proxy "ghost" not found'):
            with write(engine, "x") as w:
                add_instance(w, "orders", "127.0.0.8", 15006, 8080, proxy="ghost", source="proxy")
        with pytest.raises(Conflict, match='proxy "orders-7" is the sidecar of service "orders"'):
            with write(engine, "x") as w:
                add_instance(w, "web", "127.0.0.8", 15006, 8080, proxy="orders-7", source="proxy")
        with pytest.raises(Conflict, match='proxy "gw" is an edge gateway'):
            with write(engine, "x") as w:
                add_instance(w, "web", "127.0.0.8", 15006, 8080, proxy="gw", source="proxy")
        with pytest.raises(AlreadyExists):
            with write(engine, "x") as w:
                add_instance(w, "orders", "127.0.0.7", 15006, 9999)
        with pytest.raises(ValidationError) as err:
            with write(engine, "x") as w:
                add_instance(w, "orders", "127.0.0.8", 15006, 8080, source="magic")
        assert [v.field for v in err.value.violations] == ["source"]

        with write(engine, "proxy orders-7 gone", actor="meshgate-serve") as w:
            assert remove_instance(w, inst.id) == inst
        with pytest.raises(NotFound, match=f"instance {inst.id} not found"):
            with write(engine, "x") as w:
                remove_instance(w, inst.id)
    finally:
        engine.dispose()
