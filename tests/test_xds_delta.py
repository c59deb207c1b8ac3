"""Incremental (delta) ADS against a fake Envoy over real gRPC: only differences,
removals, absent names, reconnects honoring initial_resource_versions, partial NACKs."""

from __future__ import annotations

from pathlib import Path

import pytest

from meshgate.store.services import remove_service
from meshgate.store.txn import write
from tests.xds_support import (
    CDS,
    EDS,
    AdsClient,
    FakeSecrets,
    instance,
    mesh_fixture,
    service,
    serving,
)


@pytest.fixture
def mesh(tmp_path: Path):  # type: ignore[no-untyped-def]
    return mesh_fixture(tmp_path)


def versions(resp) -> dict[str, str]:  # type: ignore[no-untyped-def]
    return {r.name: r.version for r in resp.resources}


async def test_wildcard_then_only_differences(mesh) -> None:  # type: ignore[no-untyped-def]
    engine, tokens = mesh
    async with serving(engine, secrets=FakeSecrets()) as srv, AdsClient(srv.port, tokens["web-1"], delta=True) as c:
        await c.send(c.dreq(CDS, node="web-1"))  # no names on the first request: wildcard
        cds = await c.recv()
        assert sorted(versions(cds)) == ["local-app", "svc/orders", "svc/web"]
        await c.send(c.dreq(CDS, nonce=cds.nonce))
        await c.send(c.dreq(EDS, ["svc/orders"]))
        eds = await c.recv()
        assert list(versions(eds)) == ["svc/orders"]
        await c.send(c.dreq(EDS, nonce=eds.nonce))
        await c.nothing()
        instance(engine, "orders", 15040)  # only orders' endpoints change
        push = await c.recv()
        assert push.type_url == EDS and list(versions(push)) == ["svc/orders"]
        assert versions(push)["svc/orders"] != versions(eds)["svc/orders"]
        await c.send(c.dreq(EDS, nonce=push.nonce))
        instance(engine, "web", 15041)  # web's endpoints: not subscribed here
        await c.nothing()


async def test_removals_and_absent_names(mesh) -> None:  # type: ignore[no-untyped-def]
    engine, tokens = mesh
    service(engine, "billing")
    async with serving(engine, secrets=FakeSecrets()) as srv, AdsClient(srv.port, tokens["web-1"], delta=True) as c:
        await c.send(c.dreq(CDS, node="web-1"))
        cds = await c.recv()
        await c.send(c.dreq(CDS, nonce=cds.nonce))
        await c.send(c.dreq(EDS, ["svc/billing", "svc/nope"]))
        eds = await c.recv()
        assert list(versions(eds)) == ["svc/billing"]
        assert list(eds.removed_resources) == ["svc/nope"]  # told once: it does not exist
        await c.send(c.dreq(EDS, nonce=eds.nonce))
        await c.nothing()
        with write(engine, "remove billing") as w:
            remove_service(w, "billing")
        got = {}
        for _ in range(2):  # CDS and EDS (RDS is not subscribed here)
            r = await c.recv()
            got[r.type_url] = r
        assert list(got[CDS].removed_resources) == ["svc/billing"] and not got[CDS].resources
        assert list(got[EDS].removed_resources) == ["svc/billing"]
        await c.nothing()


async def test_reconnect_with_initial_versions_sends_nothing_new(mesh) -> None:  # type: ignore[no-untyped-def]
    engine, tokens = mesh
    async with serving(engine, secrets=FakeSecrets()) as srv:
        async with AdsClient(srv.port, tokens["web-1"], delta=True) as c:
            await c.send(c.dreq(CDS, node="web-1"))
            cds = await c.recv()
            await c.send(c.dreq(CDS, nonce=cds.nonce))
    have = versions(cds)
    # a restarted server (same store): the proxy says what it has; nothing differs, nothing is sent
    async with serving(engine, secrets=FakeSecrets()) as srv:
        async with AdsClient(srv.port, tokens["web-1"], delta=True) as c:
            await c.send(c.dreq(CDS, node="web-1", initial=have))
            await c.nothing()
        # one stale version: exactly that one is sent
        stale = dict(have, **{"svc/orders": "0000"})
        async with AdsClient(srv.port, tokens["web-1"], delta=True) as c:
            await c.send(c.dreq(CDS, node="web-1", initial=stale))
            r = await c.recv()
            assert list(versions(r)) == ["svc/orders"] and not r.removed_resources
        # it claims a cluster that no longer exists: removed
        async with AdsClient(srv.port, tokens["web-1"], delta=True) as c:
            await c.send(c.dreq(CDS, node="web-1", initial=dict(have, **{"svc/gone": "1234"})))
            r = await c.recv()
            assert list(r.removed_resources) == ["svc/gone"] and not r.resources


async def test_nack_naming_one_resource_keeps_serving_the_rest(mesh) -> None:  # type: ignore[no-untyped-def]
    engine, tokens = mesh
    async with serving(engine, secrets=FakeSecrets()) as srv, AdsClient(srv.port, tokens["web-1"], delta=True) as c:
        await c.send(c.dreq(CDS, node="web-1"))
        cds = await c.recv()
        await c.send(c.dreq(CDS, nonce=cds.nonce))
        with write(engine, "two services") as w:
            from meshgate.store.services import add_service

            add_service(w, "alpha")
            add_service(w, "beta")
        push = await c.recv()
        assert sorted(versions(push)) == ["svc/alpha", "svc/beta"]
        await c.send(c.dreq(CDS, nonce=push.nonce,
                            error="Error adding/updating cluster(s) svc/alpha: something about alpha"))
        retry = await c.recv()  # the rest again, without the rejected one
        assert retry.type_url == CDS and list(versions(retry)) == ["svc/beta"]
        await c.send(c.dreq(CDS, nonce=retry.nonce))
        await c.nothing()
        # a later unrelated CDS change does not bring alpha's rejected version back
        service(engine, "gamma")
        while True:
            r = await c.recv()
            if r.type_url == CDS:
                break
        assert list(versions(r)) == ["svc/gamma"]


async def test_nack_naming_nothing_blames_the_whole_response(mesh) -> None:  # type: ignore[no-untyped-def]
    engine, tokens = mesh
    async with serving(engine, secrets=FakeSecrets()) as srv, AdsClient(srv.port, tokens["web-1"], delta=True) as c:
        await c.send(c.dreq(EDS, ["svc/orders", "svc/web"], node="web-1"))
        eds = await c.recv()
        await c.send(c.dreq(EDS, nonce=eds.nonce, error="malformed IP address: foo"))
        await c.nothing()  # no resend loop


async def test_unsubscribe_and_stale_nonce_still_apply_subscriptions(mesh) -> None:  # type: ignore[no-untyped-def]
    engine, tokens = mesh
    async with serving(engine, secrets=FakeSecrets()) as srv, AdsClient(srv.port, tokens["web-1"], delta=True) as c:
        await c.send(c.dreq(EDS, ["svc/orders"], node="web-1"))
        first = await c.recv()
        await c.send(c.dreq(EDS, ["svc/web"], nonce="no-such-nonce"))
        second = await c.recv()
        assert list(versions(second)) == ["svc/web"]
        await c.send(c.dreq(EDS, unsubscribe=["svc/orders"], nonce=first.nonce))
        await c.nothing()
        instance(engine, "orders", 15050)  # unsubscribed: not pushed
        await c.nothing()
