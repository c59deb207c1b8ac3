"""`meshgate instance add --proxy NAME`: a CLI-registered instance linked to its sidecar,
which then has its inbound side (without waiting for self-registration); bad links are
refused with the database unchanged."""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest
from conftest import Invoke

from meshgate.store.db import open_store
from meshgate.store.world import load_world
from meshgate.xds.translate import translate_proxy


@pytest.fixture
def db(store_url: str) -> str:
    """SQLite and PostgreSQL (skipped without MESHGATE_TEST_PG)."""
    return store_url


@pytest.fixture
def mesh(initialized: Invoke) -> Invoke:
    for args in (("service", "add", "orders", "--port", "8080"), ("service", "add", "web"),
                 ("proxy", "add", "orders-1", "--service", "orders", "--outbound-port", "15001"),
                 ("proxy", "add", "web-1", "--service", "web", "--outbound-port", "15002"),
                 ("proxy", "add", "public", "--edge", "--listen", "127.0.0.1:8443")):
        r = initialized(*args)
        assert r.exit_code == 0, r.output
    return initialized


def _add(run: Invoke, *extra: str, port: str = "15006", service: str = "orders") -> object:
    return run("instance", "add", service, "--address", "127.0.0.1", "--inbound-port", port,
               "--app-port", "8080", *extra)


def test_proxy_links_the_instance_to_its_sidecar(mesh: Invoke, db: str) -> None:
    def own_listeners() -> set[str]:
        engine = open_store(db)
        try:
            return {g.name for g in translate_proxy(load_world(engine), "orders-1") if g.type_url.endswith("Listener")}
        finally:
            engine.dispose()

    assert own_listeners() == {"outbound"}  # no instance names orders-1: no inbound side
    r = _add(mesh, "--proxy", "orders-1")
    assert r.exit_code == 0, r.output  # type: ignore[attr-defined]
    assert 'instance 1 added to service "orders"' in r.output and 'sidecar "orders-1"' in r.output  # type: ignore[attr-defined]
    (listed,) = json.loads(mesh("instance", "list", "-o", "json").output)
    assert (listed["proxy"], listed["source"]) == ("orders-1", "cli")
    assert own_listeners() == {"inbound", "outbound"}
    change = json.loads(mesh("history", "-n", "1", "--changes", "-o", "json").output)[0]["changes"][0]
    assert change["kind"] == "instances" and change["after"]["proxy"] == "orders-1"
    # without --proxy an instance is linked to nothing
    r = _add(mesh, port="15007")
    assert r.exit_code == 0 and "sidecar" not in r.output, r.output  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    "proxy, code, message",
    [
        ("nope", 1, 'proxy "nope" not found'),
        ("web-1", 1, 'proxy "web-1" is the sidecar of service "web"; an instance of service "orders" needs a '
                     'sidecar of service "orders"'),
        ("public", 1, 'proxy "public" is an edge gateway'),
        ("Not_A_Name", 2, "proxy"),
        ("", 2, "proxy"),
    ],
)
def test_bad_proxy_is_refused_and_nothing_changes(
    mesh: Invoke, db_dump: Callable[[], str], proxy: str, code: int, message: str
) -> None:
    before = db_dump()
    r = _add(mesh, "--proxy", proxy)
    assert r.exit_code == code, r.output  # type: ignore[attr-defined]
    assert r.output.startswith("error: ") and message in r.output and "Traceback" not in r.output  # type: ignore[attr-defined]
    assert db_dump() == before


def test_a_sidecar_fronts_one_instance(mesh: Invoke, db_dump: Callable[[], str]) -> None:
    assert _add(mesh, "--proxy", "orders-1").exit_code == 0  # type: ignore[attr-defined]
    before = db_dump()
    r = _add(mesh, "--proxy", "orders-1", port="15007")
    assert r.exit_code == 1, r.output  # type: ignore[attr-defined]
    assert 'proxy "orders-1" already fronts instance 1 (127.0.0.1:15006 of service "orders")' in r.output  # type: ignore[attr-defined]
    assert db_dump() == before
    # once that instance is removed, another may take the sidecar
    assert mesh("instance", "remove", "1").exit_code == 0
    assert _add(mesh, "--proxy", "orders-1", port="15007").exit_code == 0  # type: ignore[attr-defined]
