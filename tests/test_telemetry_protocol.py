"""Edges of the telemetry surfaces: gRPC streams that must be refused, bad admin
queries, bad CLI arguments. (Real traffic through Envoy: test_telemetry_envoy.py.)"""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import pytest
from aiohttp.test_utils import TestClient, TestServer
from envoy.service.accesslog.v3 import als_pb2

from meshgate.fleet.envoy import free_port
from meshgate.telemetry import protos, register
from meshgate.telemetry.admin import make_app
from meshgate.telemetry.hub import TelemetryHub

METRICS_METHOD = "/envoy.service.metrics.v3.MetricsService/StreamMetrics"
ALS_METHOD = "/envoy.service.accesslog.v3.AccessLogService/StreamAccessLogs"


def _token_check(node: str, metadata: dict[str, str], stream: str) -> bool:
    return metadata.get("x-meshgate-token") == f"{node}-token"


async def _serve(hub: TelemetryHub) -> tuple[grpc.aio.Server, grpc.aio.Channel]:
    server = grpc.aio.server()
    register(server, hub)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, grpc.aio.insecure_channel(f"127.0.0.1:{port}")


async def _metrics(channel: grpc.aio.Channel, msgs: list, token: str | None = None) -> None:  # type: ignore[type-arg]
    call = channel.stream_unary(METRICS_METHOD,
                                request_serializer=protos.StreamMetricsMessage.SerializeToString,
                                response_deserializer=protos.StreamMetricsResponse.FromString)

    async def gen() -> AsyncIterator[object]:
        for m in msgs:
            yield m

    md = (("x-meshgate-token", token),) if token else None
    await call(gen(), metadata=md, timeout=5)


def _push(node_id: str | None, ok: int) -> object:
    m = protos.StreamMetricsMessage()
    if node_id:
        m.identifier.node.id = node_id
        m.identifier.node.cluster = "web"
        m.identifier.node.metadata.update({"meshgate": {"kind": "sidecar", "service": "web"}})
    f = m.envoy_metrics.add(name="cluster.upstream_rq_xx", type=protos.COUNTER)
    metric = f.metric.add()
    for k, v in (("envoy.cluster_name", "svc/orders"), ("envoy.response_code_class", "2")):
        lp = metric.label.add()
        lp.name, lp.value = k, v
    metric.counter.value = ok
    return m


async def test_metrics_stream_with_a_valid_token_is_counted() -> None:
    hub = TelemetryHub(authenticate=_token_check)
    server, channel = await _serve(hub)
    try:
        await _metrics(channel, [_push("web-1", 3), _push(None, 4)], token="web-1-token")
        (edge,) = hub.edges()
        assert (edge["caller"], edge["callee"], edge["requests_total"]) == ("web", "orders", 7)
        assert hub.proxies["web-1"].pushes == 2
        assert hub.proxies["web-1"].kind == "sidecar"  # from the node metadata
        assert hub.proxies["web-1"].connected is False  # the stream ended
    finally:
        await channel.close()
        await server.stop(0)


async def test_metrics_stream_without_the_token_is_refused_and_not_counted() -> None:
    hub = TelemetryHub(authenticate=_token_check)
    server, channel = await _serve(hub)
    try:
        for token in (None, "other-token"):
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await _metrics(channel, [_push("web-1", 3)], token=token)
            assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
            assert "web-1" in (err.value.details() or "")
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await _metrics(channel, [_push(None, 3)], token="web-1-token")
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "identifier.node.id" in (err.value.details() or "")
        assert hub.edges() == [] and hub.proxies == {}
    finally:
        await channel.close()
        await server.stop(0)


async def test_access_log_stream_is_authenticated_too() -> None:
    hub = TelemetryHub(authenticate=_token_check)
    server, channel = await _serve(hub)
    call = channel.stream_unary(ALS_METHOD,
                                request_serializer=als_pb2.StreamAccessLogsMessage.SerializeToString,
                                response_deserializer=als_pb2.StreamAccessLogsResponse.FromString)
    msg = als_pb2.StreamAccessLogsMessage()
    msg.identifier.node.id = "orders-1"
    msg.identifier.log_name = "inbound"
    e = msg.http_logs.log_entry.add()
    e.response.response_code.value = 403
    e.response.response_code_details = "rbac_access_denied_matched_policy[r1]"

    async def gen() -> AsyncIterator[object]:
        yield msg

    try:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await call(gen(), timeout=5)
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert hub.denials() == []
        await call(gen(), metadata=(("x-meshgate-token", "orders-1-token"),), timeout=5)
        (d,) = hub.denials()
        assert (d["proxy"], d["rule_id"], d["status"]) == ("orders-1", "r1", 403)
    finally:
        await channel.close()
        await server.stop(0)


async def test_admin_rejects_bad_queries_and_serves_only_its_assets() -> None:
    hub = TelemetryHub()
    async with TestClient(TestServer(make_app(hub), port=free_port())) as client:
        r = await client.get("/api/denials?limit=abc")
        assert r.status == 400 and "limit" in await r.text()
        r = await client.get("/api/denials?since=-5")
        assert r.status == 400 and "since" in await r.text()
        r = await client.get("/static/../admin.py")
        assert r.status == 404
        r = await client.get("/static/dashboard.js")
        assert r.status == 200 and "drawGraph" in await r.text()
        r = await client.get("/")
        assert r.status == 200
        html = await r.text()
        assert "default-src 'self'" in r.headers["Content-Security-Policy"]
        assert "http://" not in html and "https://" not in html  # no CDN
        r = await client.get("/metrics")
        assert r.status == 200 and r.headers["Content-Type"].startswith("text/plain")
        assert "meshgate_proxies_connected" in await r.text()
        r = await client.get("/api/edges")
        assert (await r.json())["edges"] == []


def test_events_bad_since_is_a_usage_error(run) -> None:  # type: ignore[no-untyped-def]
    assert run("init", "--trust-domain", "example.org").exit_code == 0
    for bad in ("abc", "0s", "-5m"):
        r = run("events", "--denied", "--since", bad)
        assert r.exit_code == 2, r.output
        assert "--since" in r.output and "Traceback" not in r.output
    r = run("events", "--denied", "--output", "json")
    assert r.exit_code == 0 and r.output.strip() == "[]"


def test_top_errors(run) -> None:  # type: ignore[no-untyped-def]
    r = run("top", "--once", "--admin", "nonsense")
    assert r.exit_code == 2 and "--admin" in r.output
    port = free_port()  # nothing listens there
    r = run("top", "--once", "--admin", f"127.0.0.1:{port}")
    assert r.exit_code == 1
    assert "cannot read" in r.output and "meshgate serve" in r.output
