"""State-of-the-world ADS against a fake Envoy over real gRPC: nonces, stale
requests, reconnects, push order, NACKs, wildcard and named subscriptions, omission."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from sqlalchemy import select

from meshgate.store import schema
from meshgate.store.services import remove_service, update_service
from meshgate.store.txn import write
from meshgate.xds import types
from tests.xds_support import (
    CDS,
    EDS,
    LDS,
    RDS,
    SDS,
    AdsClient,
    FakeSecrets,
    instance,
    mesh_fixture,
    names_of,
    service,
    serving,
)


@pytest.fixture
def mesh(tmp_path: Path):  # type: ignore[no-untyped-def]
    return mesh_fixture(tmp_path)


async def _ack(c: AdsClient, resp, names=None):  # type: ignore[no-untyped-def]
    await c.send(c.sotw(resp.type_url, names, version=resp.version_info, nonce=resp.nonce))


async def test_wildcard_and_named_subscriptions(mesh) -> None:  # type: ignore[no-untyped-def]
    engine, tokens = mesh
    async with serving(engine, secrets=FakeSecrets()) as srv, AdsClient(srv.port, tokens["web-1"]) as c:
        await c.send(c.sotw(CDS, node="web-1"))  # no names: wildcard
        cds = await c.recv()
        assert sorted(names_of(cds)) == ["local-app", "svc/orders", "svc/web"]
        await _ack(c, cds)
        await c.send(c.sotw(EDS, ["svc/orders", "svc/missing"]))
        eds = await c.recv()
        assert names_of(eds) == ["svc/orders"]  # a name the snapshot lacks is left out
        await c.send(c.sotw(LDS, ["outbound"]))  # LDS by name: only that one
        lds = await c.recv()
        assert names_of(lds) == ["outbound"]
        await c.send(c.sotw(SDS, ["identity", "trust-bundle", "someone-elses-key"]))
        sds = await c.recv()
        assert sorted(names_of(sds)) == ["identity", "trust-bundle"]


async def test_stale_nonce_is_ignored_and_ack_gets_no_reply(mesh) -> None:  # type: ignore[no-untyped-def]
    engine, tokens = mesh
    async with serving(engine, secrets=FakeSecrets()) as srv, AdsClient(srv.port, tokens["web-1"]) as c:
        await c.send(c.sotw(EDS, ["svc/orders"], node="web-1"))
        first = await c.recv()
        await _ack(c, first, ["svc/orders"])
        await c.nothing()  # an ACK of what it has: nothing to send
        await c.send(c.sotw(EDS, ["svc/orders", "svc/web"], version=first.version_info, nonce=first.nonce))
        second = await c.recv()
        assert sorted(names_of(second)) == ["svc/orders", "svc/web"]
        # a request still carrying the first nonce is stale: ignored, even with new names
        await c.send(c.sotw(EDS, ["svc/web"], version=first.version_info, nonce=first.nonce))
        await c.nothing()
        await _ack(c, second, ["svc/orders", "svc/web"])
        await c.nothing()


async def test_reconnect_with_old_version_and_empty_nonce_is_answered(mesh) -> None:  # type: ignore[no-untyped-def]
    engine, tokens = mesh
    async with serving(engine, secrets=FakeSecrets()) as srv:
        async with AdsClient(srv.port, tokens["web-1"]) as c:
            await c.send(c.sotw(CDS, node="web-1"))
            cds = await c.recv()
            await _ack(c, cds)
        # same content, new stream: Envoy sends its version and no nonce; it must get an answer
        async with AdsClient(srv.port, tokens["web-1"]) as c:
            await c.send(c.sotw(CDS, version=cds.version_info, node="web-1"))
            again = await c.recv()
            assert again.version_info == cds.version_info
            assert [a.value for a in again.resources] == [a.value for a in cds.resources]
        # an OLD version (content changed meanwhile) is answered with the new one
        service(engine, "billing")
        await asyncio.sleep(0.3)
        async with AdsClient(srv.port, tokens["web-1"]) as c:
            await c.send(c.sotw(CDS, version=cds.version_info, node="web-1"))
            newer = await c.recv()
            assert newer.version_info != cds.version_info
            assert "svc/billing" in names_of(newer)


async def test_server_restart_sends_the_same_versions(mesh) -> None:  # type: ignore[no-untyped-def]
    engine, tokens = mesh
    async with serving(engine, secrets=FakeSecrets()) as srv, AdsClient(srv.port, tokens["web-1"]) as c:
        await c.send(c.sotw(CDS, node="web-1"))
        before = await c.recv()
    async with serving(engine, secrets=FakeSecrets()) as srv, AdsClient(srv.port, tokens["web-1"]) as c:
        await c.send(c.sotw(CDS, version=before.version_info, node="web-1"))
        after = await c.recv()
    assert after.version_info == before.version_info  # version = content hash: a restart changes nothing


async def _subscribe_all(c: AdsClient) -> dict[str, object]:
    got = {}
    await c.send(c.sotw(CDS, node="web-1"))
    got[CDS] = await c.recv()
    await c.send(c.sotw(EDS, ["svc/orders", "svc/web"]))
    got[EDS] = await c.recv()
    await c.send(c.sotw(SDS, ["identity", "trust-bundle"]))
    got[SDS] = await c.recv()
    await c.send(c.sotw(LDS))
    got[LDS] = await c.recv()
    await c.send(c.sotw(RDS, ["outbound"]))
    got[RDS] = await c.recv()
    for t, resp in got.items():
        names = None if t in (CDS, LDS) else [n for n in (["svc/orders", "svc/web"] if t == EDS else
                                                          ["identity", "trust-bundle"] if t == SDS else ["outbound"])]
        await _ack(c, resp, names)
    await c.nothing(0.3)
    return got


async def test_push_order_cds_eds_sds_lds_rds(mesh) -> None:  # type: ignore[no-untyped-def]
    engine, tokens = mesh
    async with serving(engine, secrets=FakeSecrets(vary=True)) as srv, AdsClient(srv.port, tokens["web-1"]) as c:
        await _subscribe_all(c)
        # one revision touching every type the sidecar has: a tcp service (CDS, LDS), orders
        # becoming gRPC (CDS, RDS), a new orders instance (EDS); new services also re-issue SDS
        with write(engine, "many at once") as w:
            from meshgate.store.instances import add_instance
            from meshgate.store.services import add_service

            add_service(w, "db", protocol="tcp", port=25432)
            update_service(w, "orders", protocol="grpc")
            add_instance(w, "orders", "127.0.0.1", 15020, 8080)
        order = []
        while len(order) < 5:
            order.append((await c.recv()).type_url)
        assert order == list(types.PUSH_ORDER)


async def test_nacked_version_is_never_resent(mesh) -> None:  # type: ignore[no-untyped-def]
    engine, tokens = mesh
    async with serving(engine, secrets=FakeSecrets()) as srv:
        async with AdsClient(srv.port, tokens["web-1"]) as c:
            got = await _subscribe_all(c)
            service(engine, "billing")  # new cluster (and route) for web-1
            cds = await c.recv()
            assert cds.type_url == CDS and "svc/billing" in names_of(cds)
            await c.send(c.sotw(CDS, version=got[CDS].version_info, nonce=cds.nonce,
                                error="Error adding/updating cluster(s) svc/billing: goo.gle/debugproto\nname: \"svc/billing\"\n: something is wrong"))
            rds = await c.recv()  # the rest of the push still flows
            assert rds.type_url == RDS
            await _ack(c, rds, ["outbound"])
            instance(engine, "orders", 15030)  # changes EDS only: CDS must not come back
            eds = await c.recv()
            assert eds.type_url == EDS
            await _ack(c, eds, ["svc/orders", "svc/web"])
            await c.nothing()
            await asyncio.sleep(0.3)  # let the ledger flush
        with engine.connect() as conn:
            row = conn.execute(select(schema.proxy_status).where(
                schema.proxy_status.c.proxy == "web-1", schema.proxy_status.c.type == "cds")).one()
        assert row.nack_version == cds.version_info
        assert row.nack_detail == "something is wrong"
        assert "svc/billing" in row.nack_resources and "service:billing" in row.nack_sources
        # reconnect (the NACKed version is still current): Envoy keeps its config, nothing resent
        async with AdsClient(srv.port, tokens["web-1"]) as c:
            await c.send(c.sotw(CDS, version=got[CDS].version_info, node="web-1"))
            await c.nothing()
            # a new version (content changed) goes out again
            service(engine, "shipping")
            fixed = await c.recv()
            assert fixed.type_url == CDS and "svc/shipping" in names_of(fixed)


async def test_removed_service_is_omitted(mesh) -> None:  # type: ignore[no-untyped-def]
    engine, tokens = mesh
    service(engine, "billing")
    async with serving(engine, secrets=FakeSecrets()) as srv, AdsClient(srv.port, tokens["web-1"]) as c:
        await c.send(c.sotw(CDS, node="web-1"))
        cds = await c.recv()
        assert "svc/billing" in names_of(cds)
        await _ack(c, cds)
        with write(engine, "remove billing") as w:
            remove_service(w, "billing")
        newer = await c.recv()
        assert newer.type_url == CDS
        assert "svc/billing" not in names_of(newer) and "svc/orders" in names_of(newer)


async def test_unrelated_change_sends_nothing(mesh) -> None:  # type: ignore[no-untyped-def]
    engine, tokens = mesh
    async with serving(engine, secrets=FakeSecrets()) as srv, AdsClient(srv.port, tokens["web-1"]) as c:
        await _subscribe_all(c)
        # a deny rule on orders changes orders-1's inbound listener only
        from meshgate.model import Policy
        from meshgate.store.policies import add_policy

        with write(engine, "deny") as w:
            add_policy(w, Policy(id="no-web", action="deny", sources=("web",), target="orders"))
        await c.nothing(0.6)
        assert srv.state is not None and srv.state.world.policies  # the server did see it
