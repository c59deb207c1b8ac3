"""Resource cache, snapshots and the per-proxy state: what is rebuilt, shared, and pushed."""

from __future__ import annotations

import dataclasses

from meshgate.model import Instance, Mesh, Policy, Proxy, Service, World
from meshgate.xds import types
from meshgate.xds.cache import ResourceCache
from meshgate.xds.resources import Resource, combined_version
from meshgate.xds.snapshot import Snapshot
from meshgate.xds.state import ConfigState
from tests.xds_support import FakeSecrets


def world(**changes: object) -> World:
    w = World(
        revision=1,
        mesh=Mesh("example.org", default_action="allow"),
        services={"web": Service("web"), "orders": Service("orders", port=8080), "solo": Service("solo")},
        instances=(
            Instance(1, "web", "127.0.0.1", 15001, 9000, proxy="web-1"),
            Instance(2, "orders", "127.0.0.1", 15002, 8080, proxy="orders-1"),
        ),
        proxies={n: Proxy(n, "sidecar", service=n.split("-")[0]) for n in ("web-1", "orders-1", "solo-1")},
    )
    return dataclasses.replace(w, **changes)  # type: ignore[arg-type]


def scoped() -> tuple[Policy, ...]:
    """Default deny: web may call orders; solo calls nobody and nobody calls it."""
    return (Policy("web-orders", "allow", ("web",), "orders"),)


def test_versions_are_content_hashes() -> None:
    a = Resource.from_bytes(types.CLUSTER, "x", b"abc")
    b = Resource.from_bytes(types.CLUSTER, "x", b"abc")
    c = Resource.from_bytes(types.CLUSTER, "x", b"abd")
    assert a.version == b.version != c.version
    assert combined_version([("x", "1"), ("y", "2")]) == combined_version([("y", "2"), ("x", "1")])


def test_interned_resources_are_one_object_per_content() -> None:
    cache = ResourceCache()
    r1 = cache.intern_bytes(types.CLUSTER, "svc/a", b"bytes")
    r2 = cache.intern_bytes(types.CLUSTER, "svc/a", b"bytes")
    assert r1 is r2 and len(cache) == 1


def test_snapshot_consistency_check_finds_dangling_references() -> None:
    cluster = Resource.from_bytes(types.CLUSTER, "svc/a", b"c", refs=((types.ENDPOINT, "svc/a"),))
    listener = Resource.from_bytes(types.LISTENER, "outbound", b"l", refs=((types.ROUTE, "outbound"),))
    bad = Snapshot.build([cluster, listener])
    assert not bad.consistent()
    assert len(bad.problems()) == 2 and "eds 'svc/a'" in bad.problems()[0]
    good = Snapshot.build([cluster, listener, Resource.from_bytes(types.ENDPOINT, "svc/a", b"e"),
                           Resource.from_bytes(types.ROUTE, "outbound", b"r")])
    assert good.consistent()


def test_callers_share_the_service_resources() -> None:
    state = ConfigState(world(), secrets=FakeSecrets())
    web, orders = state.track("web-1"), state.track("orders-1")
    for t in (types.CLUSTER, types.ENDPOINT):
        assert web.of(t)["svc/orders"] is orders.of(t)["svc/orders"]  # same object, serialized once


def test_one_instance_change_rebuilds_one_service_and_touches_only_its_callers() -> None:
    w = world(mesh=Mesh("example.org", default_action="deny"), policies=scoped())
    state = ConfigState(w, secrets=FakeSecrets())
    for p in ("web-1", "orders-1", "solo-1"):
        state.track(p)
    before = {p: state.snapshot(p).versions() for p in ("web-1", "orders-1", "solo-1")}
    builds = state.cache.builds
    w2 = dataclasses.replace(w, revision=2, instances=w.instances + (Instance(3, "orders", "127.0.0.2", 15002, 8080),))
    changed = state.set_world(w2)
    # only the caller: orders-1 calls nobody and its own inbound side did not change
    assert changed == {"web-1"}
    assert state.cache.builds == builds + 1  # only orders' cluster+endpoints were re-serialized
    after = state.snapshot("web-1").versions()
    assert {t for t in types.PUSH_ORDER if after[t] != before["web-1"][t]} == {types.ENDPOINT}
    assert state.snapshot("solo-1").versions() == before["solo-1"]


def test_a_policy_on_orders_leaves_callers_unchanged() -> None:
    state = ConfigState(world(), secrets=FakeSecrets())
    for p in ("web-1", "orders-1"):
        state.track(p)
    changed = state.set_world(world(revision=2, policies=(Policy("no-solo", "deny", ("solo",), "orders"),)))
    assert changed == {"orders-1"}


def test_restart_gives_the_same_versions() -> None:
    a = ConfigState(world(), secrets=FakeSecrets()).track("web-1").versions()
    b = ConfigState(world(), secrets=FakeSecrets()).track("web-1").versions()
    assert a == b


def test_only_tracked_proxies_get_snapshots_and_secrets() -> None:
    secrets = FakeSecrets()
    state = ConfigState(world(), secrets=secrets)
    state.track("web-1")
    state.set_world(world(revision=2, services={**world().services, "new": Service("new")}))
    assert set(secrets.calls) == {"web-1"}
    state.untrack("web-1")
    assert secrets.forgotten == ["web-1"] and not state.entries
