"""A changed `svc/<name>` cluster whose endpoints did not change: Envoy re-warms the new
cluster and needs a fresh EDS response for it, else it waits `initial_fetch_timeout`
(15 s) before using its cached endpoints. The server resends EDS after such a CDS push.

Real Envoys (delta and state-of-the-world callers): orders goes from http to tcp (its
cluster loses its HTTP health checks; its ClusterLoadAssignment bytes stay the same);
within 5 s the caller has no warming cluster and bytes flow through the new cluster
(without the resend: still warming after 5 s, checked). Fake clients: the order (CDS,
then the same EDS version again), what must not be resent (a NACKed EDS version, an
unchanged cluster), and a reconnect whose changed cluster comes with its endpoints.
"""

from __future__ import annotations

import socket
import time
from pathlib import Path
from typing import Any

import pytest

from meshgate.fleet.app import App
from meshgate.fleet.bootstrap import render_bootstrap
from meshgate.fleet.envoy import EnvoyProcess, free_port
from meshgate.model import Policy
from meshgate.store.policies import add_policy
from meshgate.store.services import update_service
from meshgate.store.txn import write
from meshgate.store.world import load_world
from tests.mesh_kit import wait_for
from tests.xds_support import (
    CDS,
    EDS,
    AdsClient,
    FakeSecrets,
    ServerThread,
    instance,
    issuer_secrets,
    mesh_fixture,
    new_mesh,
    service,
    serving,
    sidecar,
)

REWARM_WITHIN = 5.0  # well under Envoy's initial_fetch_timeout (15 s)




def _http(port: int, host: str) -> bytes:
    """One HTTP/1.1 request over a plain socket (works through an HTTP or a tcp listener)."""
    with socket.create_connection(("127.0.0.1", port), timeout=3) as s:
        s.sendall(f"GET /hello HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        chunks = []
        while True:
            got = s.recv(65536)
            if not got:
                break
            chunks.append(got)
    return b"".join(chunks)


def _active_cluster(envoy: EnvoyProcess, name: str) -> dict[str, Any] | None:
    for section in envoy.config_dump()["configs"]:
        if section["@type"].endswith("ClustersConfigDump"):
            for c in section.get("dynamic_active_clusters", []):
                if c["cluster"]["name"] == name:
                    return c["cluster"]  # type: ignore[no-any-return]
    return None


@pytest.mark.envoy
@pytest.mark.parametrize("delta", [True, False], ids=["delta", "sotw"])
def test_changed_cluster_with_same_endpoints_is_warm_at_once(tmp_path: Path, delta: bool) -> None:
    engine = new_mesh(tmp_path / "mesh.db", default_action="deny")
    orders_port = free_port()  # becomes web-1's local tcp listener for orders
    service(engine, "web")
    service(engine, "orders", port=orders_port)
    with write(engine, "allow web -> orders") as w:
        add_policy(w, Policy("", "allow", ("web",), "orders"))
    web_out = free_port()
    tokens = {"web-1": sidecar(engine, "web-1", "web", web_out), "orders-1": sidecar(engine, "orders-1", "orders", free_port())}
    envoys: list[EnvoyProcess] = []
    with App("orders") as app:
        instance(engine, "orders", free_port(), app.port, proxy="orders-1")
        world = load_world(engine)
        try:
            with ServerThread(engine, secrets=issuer_secrets(engine)) as srv:
                for name, mode in (("web-1", delta), ("orders-1", True)):
                    boot = render_bootstrap(world.proxies[name], tokens[name], servers=[f"127.0.0.1:{srv.port}"],
                                            admin_port=free_port(), xds_ca_pem=None, delta=mode)
                    envoys.append(EnvoyProcess(boot, tmp_path, name).start())
                for e in envoys:
                    e.wait_live()
                web = envoys[0]
                wait_for("a request over http", lambda: b"200 OK" in _http(web_out, "orders")
                      and b'"service": "orders"' in _http(web_out, "orders"), 15)
                assert (_active_cluster(web, "svc/orders") or {}).get("health_checks")
                success = web.stat("cluster_manager.cds.update_success")

                with write(engine, "orders becomes tcp") as w:  # the cluster changes, its endpoints do not
                    update_service(w, "orders", protocol="tcp")
                wait_for("the new cds", lambda: web.stat("cluster_manager.cds.update_success") > success, 5)

                seen: dict[str, Any] = {}

                def warm() -> bool:
                    cluster = _active_cluster(web, "svc/orders") or {}
                    seen.update(warming=web.stat("cluster_manager.warming_clusters"),
                                new_config_active="health_checks" not in cluster)
                    return seen["warming"] == 0 and seen["new_config_active"]

                try:
                    wait_for("svc/orders warm with its new config", warm, REWARM_WITHIN)
                except AssertionError as exc:
                    raise AssertionError(f"{exc}; {seen}") from None
                # bytes flow through the new cluster: web-1's local tcp port -> orders-1 (mTLS) -> the app
                reply = wait_for("a request over tcp", lambda: (lambda r: r if b"200 OK" in r else None)(
                    _http(orders_port, "orders")), REWARM_WITHIN)
                assert b'"service": "orders"' in reply
                assert web.stat("cluster.svc/orders.upstream_cx_total") >= 1
        finally:
            for e in envoys:
                e.stop()
            engine.dispose()


# -- fake clients: what is sent, in which order -------------------------------------


@pytest.fixture
def mesh(tmp_path: Path):  # type: ignore[no-untyped-def]
    return mesh_fixture(tmp_path)


def _versions(resp: Any) -> dict[str, str]:
    return {r.name: r.version for r in resp.resources}


def _set_protocol(engine: Any, protocol: str) -> None:
    with write(engine, f"orders speaks {protocol}") as w:
        update_service(w, "orders", protocol=protocol)


async def _delta_subscribed(c: AdsClient) -> tuple[Any, Any]:
    await c.send(c.dreq(CDS, node="web-1"))
    cds = await c.recv()
    await c.send(c.dreq(CDS, nonce=cds.nonce))
    await c.send(c.dreq(EDS, ["svc/orders", "svc/web"]))
    eds = await c.recv()
    await c.send(c.dreq(EDS, nonce=eds.nonce))
    await c.nothing(0.3)
    return cds, eds


async def test_delta_changed_cluster_is_followed_by_its_endpoints_again(mesh) -> None:  # type: ignore[no-untyped-def]
    engine, tokens = mesh
    async with serving(engine, secrets=FakeSecrets()) as srv, AdsClient(srv.port, tokens["web-1"], delta=True) as c:
        _, eds = await _delta_subscribed(c)
        _set_protocol(engine, "grpc")  # svc/orders' cluster changes, its endpoints do not
        cds2, eds2 = await c.recv(), await c.recv()
        assert (cds2.type_url, eds2.type_url) == (CDS, EDS)  # the cluster first, then its endpoints
        assert list(_versions(cds2)) == ["svc/orders"]
        assert _versions(eds2) == {"svc/orders": _versions(eds)["svc/orders"]}  # same version, sent again
        await c.send(c.dreq(CDS, nonce=cds2.nonce))
        await c.send(c.dreq(EDS, nonce=eds2.nonce))
        await c.nothing()  # ACKed: nothing more (svc/web's cluster did not change: not resent)

        # the resent endpoints are NACKed: never sent again, not even for the next cluster change
        _set_protocol(engine, "http")
        cds3, eds3 = await c.recv(), await c.recv()
        assert (cds3.type_url, list(_versions(eds3))) == (CDS, ["svc/orders"])
        await c.send(c.dreq(CDS, nonce=cds3.nonce))
        await c.send(c.dreq(EDS, nonce=eds3.nonce, error="svc/orders: rejected for the test"))
        await c.nothing()
        _set_protocol(engine, "grpc")
        cds4 = await c.recv()
        assert cds4.type_url == CDS and list(_versions(cds4)) == ["svc/orders"]
        await c.send(c.dreq(CDS, nonce=cds4.nonce))
        await c.nothing()


async def test_delta_reconnect_sends_endpoints_of_a_cluster_that_changed_meanwhile(mesh) -> None:  # type: ignore[no-untyped-def]
    engine, tokens = mesh
    async with serving(engine, secrets=FakeSecrets()) as srv:
        async with AdsClient(srv.port, tokens["web-1"], delta=True) as c:
            cds, eds = await _delta_subscribed(c)
        # the same versions on a new stream (a server restart, a reconnect): nothing at all
        async with AdsClient(srv.port, tokens["web-1"], delta=True) as c:
            await c.send(c.dreq(CDS, node="web-1", initial=_versions(cds)))
            await c.send(c.dreq(EDS, ["svc/orders", "svc/web"], initial=_versions(eds)))
            await c.nothing()
        _set_protocol(engine, "grpc")
        await _until_applied(srv)
        # orders' cluster changed while disconnected: it comes, then its (unchanged) endpoints
        async with AdsClient(srv.port, tokens["web-1"], delta=True) as c:
            await c.send(c.dreq(CDS, node="web-1", initial=_versions(cds)))
            got = await c.recv()
            assert got.type_url == CDS and list(_versions(got)) == ["svc/orders"]
            await c.send(c.dreq(CDS, nonce=got.nonce))
            await c.send(c.dreq(EDS, ["svc/orders", "svc/web"], initial=_versions(eds)))
            again = await c.recv()
            assert again.type_url == EDS and _versions(again) == {"svc/orders": _versions(eds)["svc/orders"]}
            await c.send(c.dreq(EDS, nonce=again.nonce))
            await c.nothing()


async def _until_applied(srv: Any, timeout: float = 5.0) -> None:
    """Wait until the server's World holds the store's newest revision."""
    import asyncio

    from meshgate.store.txn import current_revision

    with srv.engine.connect() as conn:
        want = current_revision(conn)
    deadline = time.monotonic() + timeout
    while srv.state.world.revision < want:
        assert time.monotonic() < deadline, "the server did not apply the change"
        await asyncio.sleep(0.05)


async def _sotw_subscribed(c: AdsClient) -> tuple[Any, Any]:
    await c.send(c.sotw(CDS, node="web-1"))
    cds = await c.recv()
    await c.send(c.sotw(CDS, version=cds.version_info, nonce=cds.nonce))
    await c.send(c.sotw(EDS, ["svc/orders", "svc/web"]))
    eds = await c.recv()
    await c.send(c.sotw(EDS, ["svc/orders", "svc/web"], version=eds.version_info, nonce=eds.nonce))
    await c.nothing(0.3)
    return cds, eds


async def test_sotw_changed_cluster_is_followed_by_the_eds_response_again(mesh) -> None:  # type: ignore[no-untyped-def]
    engine, tokens = mesh
    names = ["svc/orders", "svc/web"]
    async with serving(engine, secrets=FakeSecrets()) as srv, AdsClient(srv.port, tokens["web-1"]) as c:
        cds, eds = await _sotw_subscribed(c)
        _set_protocol(engine, "grpc")
        cds2, eds2 = await c.recv(), await c.recv()
        assert (cds2.type_url, eds2.type_url) == (CDS, EDS)
        assert cds2.version_info != cds.version_info
        assert eds2.version_info == eds.version_info and eds2.nonce != eds.nonce  # the same endpoints, again
        assert [a.value for a in eds2.resources] == [a.value for a in eds.resources]
        await c.send(c.sotw(CDS, version=cds2.version_info, nonce=cds2.nonce))
        await c.send(c.sotw(EDS, names, version=eds2.version_info, nonce=eds2.nonce))
        await c.nothing()
        # an EDS request Envoy sends for the new cluster's watch, carrying the previous nonce: stale
        await c.send(c.sotw(EDS, names, version=eds.version_info, nonce=eds.nonce))
        await c.nothing()

        # NACKed endpoints are not sent again when the next cluster change comes
        _set_protocol(engine, "http")
        cds3, eds3 = await c.recv(), await c.recv()
        assert (cds3.type_url, eds3.type_url) == (CDS, EDS)
        await c.send(c.sotw(CDS, version=cds3.version_info, nonce=cds3.nonce))
        await c.send(c.sotw(EDS, names, version=eds.version_info, nonce=eds3.nonce, error="rejected for the test"))
        await c.nothing()
        _set_protocol(engine, "grpc")
        cds4 = await c.recv()
        assert cds4.type_url == CDS
        await c.send(c.sotw(CDS, version=cds4.version_info, nonce=cds4.nonce))
        await c.nothing()


async def test_sotw_reconnect_with_current_versions_resends_nothing(mesh) -> None:  # type: ignore[no-untyped-def]
    engine, tokens = mesh
    names = ["svc/orders", "svc/web"]
    async with serving(engine, secrets=FakeSecrets()) as srv:
        async with AdsClient(srv.port, tokens["web-1"]) as c:
            cds, eds = await _sotw_subscribed(c)
        async with AdsClient(srv.port, tokens["web-1"]) as c:
            # a new stream is answered once per type (empty nonce), never twice
            await c.send(c.sotw(CDS, version=cds.version_info, node="web-1"))
            again = await c.recv()
            assert again.type_url == CDS and again.version_info == cds.version_info
            await c.send(c.sotw(CDS, version=again.version_info, nonce=again.nonce))
            await c.send(c.sotw(EDS, names, version=eds.version_info))
            eds_again = await c.recv()
            assert eds_again.type_url == EDS and eds_again.version_info == eds.version_info
            await c.send(c.sotw(EDS, names, version=eds_again.version_info, nonce=eds_again.nonce))
            await c.nothing()
            # an endpoints-only change: one EDS response, no CDS
            instance(engine, "orders", 15077)
            eds_new = await c.recv()
            assert eds_new.type_url == EDS and eds_new.version_info != eds.version_info
            await c.send(c.sotw(EDS, names, version=eds_new.version_info, nonce=eds_new.nonce))
            await c.nothing()
