"""Who may stream: join tokens, node.id, revocation; and requests the server refuses."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import pytest

from meshgate.store.proxies import remove_proxy, revoke_proxy, rotate_token
from meshgate.store.txn import write
from tests.xds_support import CDS, AdsClient, FakeSecrets, mesh_fixture, serving


@pytest.fixture
def mesh(tmp_path: Path):  # type: ignore[no-untyped-def]
    return mesh_fixture(tmp_path)


@pytest.mark.parametrize(
    "token_of, node, reason",
    [
        (None, "web-1", "missing join token"),
        ("bogus", "web-1", "unknown join token"),
        ("orders-1", "web-1", 'belongs to proxy "orders-1"'),
    ],
)
async def test_refused_streams(mesh, token_of, node, reason) -> None:  # type: ignore[no-untyped-def]
    engine, tokens = mesh
    token = None if token_of is None else tokens.get(token_of, "mgt_bogus")
    async with serving(engine, secrets=FakeSecrets()) as srv, AdsClient(srv.port, token) as c:
        await c.send(c.sotw(CDS, node=node))
        assert await c.status() == grpc.StatusCode.UNAUTHENTICATED
        assert reason in await c.call.details()
        assert c.queue.get_nowait() is None  # nothing was sent before the refusal


async def _connected(srv, token: str, node: str) -> AdsClient:  # type: ignore[no-untyped-def]
    c = AdsClient(srv.port, token)
    await c.__aenter__()
    await c.send(c.sotw(CDS, node=node))
    await c.recv()
    return c


@pytest.mark.parametrize("change", ["revoke", "rotate", "remove"])
async def test_token_change_closes_the_stream(mesh, change) -> None:  # type: ignore[no-untyped-def]
    engine, tokens = mesh
    async with serving(engine, secrets=FakeSecrets()) as srv:
        c = await _connected(srv, tokens["web-1"], "web-1")
        other = await _connected(srv, tokens["orders-1"], "orders-1")
        try:
            with write(engine, f"{change} web-1") as w:
                {"revoke": revoke_proxy, "rotate": rotate_token, "remove": remove_proxy}[change](w, "web-1")
            assert await c.status(timeout=1.5) == grpc.StatusCode.UNAUTHENTICATED
            await other.nothing(0.2)
            assert not other.reader.done()  # the other proxy's stream is untouched
        finally:
            await c.__aexit__()
            await other.__aexit__()
        # and it cannot come back with the old token
        async with AdsClient(srv.port, tokens["web-1"]) as again:
            await again.send(again.sotw(CDS, node="web-1"))
            assert await again.status() == grpc.StatusCode.UNAUTHENTICATED


async def test_unknown_type_url_is_invalid_argument(mesh) -> None:  # type: ignore[no-untyped-def]
    engine, tokens = mesh
    async with serving(engine, secrets=FakeSecrets()) as srv:
        for delta in (False, True):
            async with AdsClient(srv.port, tokens["web-1"], delta=delta) as c:
                bad = "type.googleapis.com/envoy.config.cluster.v3.Clusterz"
                await c.send(c.dreq(bad, node="web-1") if delta else c.sotw(bad, node="web-1"))
                assert await c.status() == grpc.StatusCode.INVALID_ARGUMENT
                assert "Clusterz" in await c.call.details()
        # the server is still fine
        async with AdsClient(srv.port, tokens["web-1"]) as c:
            await c.send(c.sotw(CDS, node="web-1"))
            assert (await c.recv()).resources


async def test_first_request_without_node_is_invalid_argument(mesh) -> None:  # type: ignore[no-untyped-def]
    engine, tokens = mesh
    async with serving(engine, secrets=FakeSecrets()) as srv, AdsClient(srv.port, tokens["web-1"]) as c:
        await c.send(c.sotw(CDS))
        assert await c.status() == grpc.StatusCode.INVALID_ARGUMENT
        assert "node.id" in await c.call.details()


async def test_malformed_bytes_are_invalid_argument(mesh) -> None:  # type: ignore[no-untyped-def]
    engine, tokens = mesh
    async with serving(engine, secrets=FakeSecrets()) as srv:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{srv.port}") as ch:
            call = ch.stream_stream(
                "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources",
                request_serializer=lambda b: b, response_deserializer=lambda b: b,
            )(metadata=[("authorization", f"Bearer {tokens['web-1']}")])
            await call.write(b"\x0a\xff\xff\xff")  # a truncated length-delimited field
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await asyncio.wait_for(call.read(), 3)
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "malformed request" in (err.value.details() or "")


async def test_status_rows_follow_the_stream(mesh) -> None:  # type: ignore[no-untyped-def]
    from meshgate.store import status as store_status

    engine, tokens = mesh
    async with serving(engine, secrets=FakeSecrets()) as srv:
        async with AdsClient(srv.port, tokens["web-1"]) as c:
            await c.send(c.sotw(CDS, node="web-1"))
            resp = await c.recv()
            await c.send(c.sotw(CDS, version=resp.version_info, nonce=resp.nonce))
            await asyncio.sleep(0.4)
            with engine.connect() as conn:
                (row,) = store_status.status_rows(conn, "web-1")
            assert row["connected"] and row["acked_version"] == resp.version_info
            assert row["sent_version"] == resp.version_info and row["sent_nonce"] == resp.nonce
        await asyncio.sleep(0.4)
        with engine.connect() as conn:
            (row,) = store_status.status_rows(conn, "web-1")
        assert not row["connected"]
