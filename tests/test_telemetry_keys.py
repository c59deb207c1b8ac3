"""Per-proxy telemetry keys: access-log streams must prove which proxy sent them.

The production pieces: the store's secret (migration 0007, never in history or
export), translation putting each proxy's key in its access logs, and the
server's authenticator (Telemetry.bind -> token_authenticator) over real gRPC.
Real Envoys sending the key: test_telemetry_serve.py and test_telemetry_edge.py
(their denials reach `meshgate events` only when the key is accepted).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from envoy.config.listener.v3 import listener_pb2
from envoy.extensions.access_loggers.grpc.v3 import als_pb2 as als_config
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2
from envoy.service.accesslog.v3 import als_pb2
from sqlalchemy import delete, select

from meshgate.store import schema
from meshgate.store.db import open_store
from meshgate.store.proxies import revoke_proxy
from meshgate.store.telemetry_key import SETTING, load_key_secret
from meshgate.store.txn import write
from meshgate.telemetry import protos
from meshgate.telemetry.keys import KEY_HEADER, PLACEHOLDER_KEY, key_matches, telemetry_key
from meshgate.telemetry.service import Telemetry
from meshgate.xds import types
from meshgate.xds.state import ConfigState
from meshgate.xds.translate import translate_proxy
from tests.test_edge_translate import _world as edge_world
from tests.test_xds_translate import world as mesh_world
from tests.xds_support import instance, new_mesh, service, serving, sidecar

ALS_METHOD = "/envoy.service.accesslog.v3.AccessLogService/StreamAccessLogs"
METRICS_METHOD = "/envoy.service.metrics.v3.MetricsService/StreamMetrics"
SECRET = b"k" * 32


# -- translation ------------------------------------------------------------------


def _access_log_metadata(listener: listener_pb2.Listener) -> list[tuple[tuple[str, str], ...]]:
    """initial_metadata of every gRPC access log in the listener's HCMs and TCP proxies."""
    out = []
    for chain in listener.filter_chains:
        for f in chain.filters:
            if f.typed_config.Is(hcm_pb2.HttpConnectionManager.DESCRIPTOR):
                m: object = hcm_pb2.HttpConnectionManager()
            elif f.typed_config.Is(tcp_proxy_pb2.TcpProxy.DESCRIPTOR):
                m = tcp_proxy_pb2.TcpProxy()
            else:
                continue
            f.typed_config.Unpack(m)
            for log in m.access_log:  # type: ignore[attr-defined]
                cfg = (als_config.HttpGrpcAccessLogConfig() if log.name.endswith("http_grpc")
                       else als_config.TcpGrpcAccessLogConfig())
                assert log.typed_config.Unpack(cfg), log.name
                md = cfg.common_config.grpc_service.initial_metadata
                out.append(tuple((h.key, h.value) for h in md))
    return out


def _listeners(world, proxy, options):  # type: ignore[no-untyped-def]
    return {g.name: g.message for g in translate_proxy(world, proxy, options=options)
            if g.type_url == types.LISTENER}


def test_every_access_log_carries_its_own_proxys_key() -> None:
    options = Telemetry.translate_options(secret=SECRET)
    cases = [(mesh_world(), p, {"inbound", "outbound"}) for p in ("web-1", "orders-1")]
    cases += [(mesh_world(), "db-1", {"inbound", "outbound"}),  # tcp inbound
              (mesh_world(), "web-2", {"outbound", "outbound-tcp/db"}),  # tcp outbound
              (edge_world(), "public", {"edge-https"})]
    for world, proxy, must_have in cases:
        listeners = _listeners(world, proxy, options)
        assert must_have <= set(listeners), (proxy, sorted(listeners))
        key = telemetry_key(SECRET, proxy)
        for name, listener in listeners.items():
            if name not in must_have:
                continue
            mds = _access_log_metadata(listener)
            assert mds, (proxy, name)
            assert set(mds) == {((KEY_HEADER, key),)}, (proxy, name)
    # another proxy of the same service gets another key (its own), nothing else differs
    assert telemetry_key(SECRET, "web-1") != telemetry_key(SECRET, "web-2")
    assert key_matches(SECRET, "web-1", telemetry_key(SECRET, "web-1"))
    assert not key_matches(SECRET, "web-2", telemetry_key(SECRET, "web-1"))
    assert not key_matches(b"x" * 32, "web-1", telemetry_key(SECRET, "web-1"))


def test_adding_metadata_to_a_built_log_equals_building_it_with_the_metadata() -> None:
    from meshgate.telemetry import envoy_config as ec

    md = ((KEY_HEADER, telemetry_key(SECRET, "orders-1")),)
    assert ec.with_initial_metadata(ec.denied_or_failed_access_log("c", "m"), md) == \
        ec.denied_or_failed_access_log("c", "m", initial_metadata=md)
    assert ec.with_initial_metadata(ec.denied_tcp_access_log("c", "m"), md) == \
        ec.denied_tcp_access_log("c", "m", initial_metadata=md)
    with pytest.raises(ValueError, match="not a gRPC access log"):
        ec.with_initial_metadata(ec.denied_tcp_access_log("c", "m").__class__(name="x"), md)


def test_without_a_secret_no_key_and_the_placeholder_for_validation() -> None:
    plain = _listeners(mesh_world(), "web-1", Telemetry.translate_options())
    assert set(_access_log_metadata(plain["outbound"])) == {()}
    same = Telemetry.translate_options(same_key=PLACEHOLDER_KEY)
    a, b = _listeners(mesh_world(), "orders-1", same), _listeners(mesh_world(), "web-2", same)
    assert set(_access_log_metadata(a["outbound"])) == {((KEY_HEADER, PLACEHOLDER_KEY),)}
    assert a["outbound"] == b["outbound"]  # equal config still validates once
    keyed = Telemetry.translate_options(secret=SECRET)
    assert _listeners(mesh_world(), "orders-1", keyed)["outbound"] != _listeners(
        mesh_world(), "web-2", keyed)["outbound"]


def test_the_server_cache_keeps_listeners_per_proxy_and_shares_the_rest() -> None:
    """ConfigState memoizes the outbound listener per port: with keys it must not
    hand one proxy's listener (and key) to another."""
    from tests.test_xds_translate import world as w  # same World, two sidecars of web

    world = w()
    state = ConfigState(world, secrets=_NoSecrets(), options=Telemetry.translate_options(secret=SECRET))
    snaps = {p: state.track(p) for p in ("web-1", "web-2", "orders-1")}
    for p, snap in snaps.items():
        res = snap.of(types.LISTENER)["outbound"]
        listener = listener_pb2.Listener.FromString(res.body)
        assert set(_access_log_metadata(listener)) == {((KEY_HEADER, telemetry_key(SECRET, p)),)}, p
    # the shared per-service parts stay one object for every caller
    assert snaps["web-1"].of(types.CLUSTER)["svc/orders"] is snaps["web-2"].of(types.CLUSTER)["svc/orders"]


class _NoSecrets:
    def secrets_for(self, proxy, world, now):  # type: ignore[no-untyped-def]
        return {}

    def next_refresh(self, now: float) -> float:
        return now + 3600

    def forget(self, name: str) -> None:
        pass


# -- the store's secret -------------------------------------------------------------


@pytest.fixture
def db(store_url: str) -> str:
    """The store tests below run on SQLite and, with MESHGATE_TEST_PG, PostgreSQL."""
    return store_url


def test_secret_is_shared_made_once_and_never_in_history_or_export(db: str, run) -> None:  # type: ignore[no-untyped-def]
    assert run("init", "--trust-domain", "example.org").exit_code == 0
    assert run("service", "add", "web", "--port", "80").exit_code == 0
    engines = [open_store(db), open_store(db)]  # two replicas sharing one store
    try:
        first, second = (load_key_secret(e) for e in engines)
        assert first == second and len(first) == 32  # every replica derives the same keys
        history = run("history", "-o", "json")
        assert history.exit_code == 0
        exported = run("export")
        assert exported.exit_code == 0
        for out in (history.output, exported.output):
            assert SETTING not in out and "key_secret" not in out
        with engines[0].begin() as conn:  # a store that lost it gets a new one, lazily
            conn.execute(delete(schema.settings).where(schema.settings.c.key == SETTING))
        renewed = load_key_secret(engines[1])
        assert renewed != first and load_key_secret(engines[0]) == renewed
        with engines[0].connect() as conn:
            revisions = conn.execute(select(schema.revisions.c.changes)).scalars().all()
        assert not any(SETTING in json.dumps(c) for c in revisions)
    finally:
        for e in engines:
            e.dispose()


# -- the server's authenticator -----------------------------------------------------


def _denial(node: str) -> als_pb2.StreamAccessLogsMessage:
    msg = als_pb2.StreamAccessLogsMessage()
    msg.identifier.node.id = node
    msg.identifier.log_name = "meshgate"
    e = msg.http_logs.log_entry.add()
    e.response.response_code.value = 403
    e.response.response_code_details = "rbac_access_denied_matched_policy[r1]"
    e.request.path = "/forged"
    return msg


async def _send(channel: grpc.aio.Channel, method: str, msg, serializer, metadata) -> grpc.StatusCode:  # type: ignore[no-untyped-def]
    call = channel.stream_unary(method, request_serializer=serializer,
                                response_deserializer=lambda b: b)

    async def gen() -> AsyncIterator[object]:
        yield msg

    try:
        await call(gen(), metadata=metadata, timeout=5)
    except grpc.aio.AioRpcError as exc:
        return exc.code()  # type: ignore[no-any-return]
    return grpc.StatusCode.OK


async def test_access_logs_need_the_key_of_the_proxy_they_claim(tmp_path: Path) -> None:
    engine = new_mesh(tmp_path / "m.db")
    try:
        service(engine, "orders")
        service(engine, "web")
        orders_token = sidecar(engine, "orders-1", "orders")
        instance(engine, "orders", 15006, proxy="orders-1")
        sidecar(engine, "web-1", "web")
        sidecar(engine, "gone-1", "web", outbound_port=15002)
        with write(engine, "revoke gone-1") as w:
            revoke_proxy(w, "gone-1")
        telemetry = Telemetry(engine)
        assert telemetry.key_secret == load_key_secret(engine)
        async with serving(engine, servicers=[telemetry.register],
                           options=telemetry.server_options()) as server:
            telemetry.bind(server)
            # the key the server put in orders-1's listeners is the one it accepts
            assert server.state is not None
            snap = server.state.track("orders-1")
            inbound = listener_pb2.Listener.FromString(snap.of(types.LISTENER)["inbound"].body)
            (((header, sent_key),),) = set(_access_log_metadata(inbound))
            assert header == KEY_HEADER
            key_of = {p: telemetry_key(telemetry.key_secret, p) for p in ("orders-1", "web-1", "gone-1")}
            assert sent_key == key_of["orders-1"]

            ser = als_pb2.StreamAccessLogsMessage.SerializeToString
            hub = telemetry.hub
            async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as ch:
                refused = {
                    "no key": await _send(ch, ALS_METHOD, _denial("orders-1"), ser, None),
                    "join token": await _send(ch, ALS_METHOD, _denial("orders-1"), ser,
                                              (("authorization", f"Bearer {orders_token}"),)),
                    "another proxy's key": await _send(ch, ALS_METHOD, _denial("orders-1"), ser,
                                                       ((KEY_HEADER, key_of["web-1"]),)),
                    "another secret's key": await _send(
                        ch, ALS_METHOD, _denial("orders-1"), ser,
                        ((KEY_HEADER, telemetry_key(b"x" * 32, "orders-1")),)),
                    "revoked proxy": await _send(ch, ALS_METHOD, _denial("gone-1"), ser,
                                                 ((KEY_HEADER, key_of["gone-1"]),)),
                    "unknown proxy": await _send(ch, ALS_METHOD, _denial("nobody"), ser,
                                                 ((KEY_HEADER, telemetry_key(telemetry.key_secret, "nobody")),)),
                }
                assert refused == dict.fromkeys(refused, grpc.StatusCode.UNAUTHENTICATED)
                assert hub.denials() == [] and hub.log_entries == 0

                ok = await _send(ch, ALS_METHOD, _denial("orders-1"), ser, ((KEY_HEADER, key_of["orders-1"]),))
                assert ok == grpc.StatusCode.OK
                (d,) = hub.denials()
                assert (d["proxy"], d["rule_id"], d["status"], d["path"]) == ("orders-1", "r1", 403, "/forged")
                assert {s["service"]: s["denied_total"] for s in hub.services()}["orders"] == 1

                # stats streams keep the join-token check: the telemetry key is not a token
                push = protos.StreamMetricsMessage()
                push.identifier.node.id = "orders-1"
                mser = protos.StreamMetricsMessage.SerializeToString
                assert await _send(ch, METRICS_METHOD, push, mser,
                                   ((KEY_HEADER, key_of["orders-1"]),)) == grpc.StatusCode.UNAUTHENTICATED
                assert await _send(ch, METRICS_METHOD, push, mser,
                                   (("authorization", f"Bearer {orders_token}"),)) == grpc.StatusCode.OK
    finally:
        engine.dispose()


@pytest.mark.parametrize("stream", ["access-log"])
def test_authenticator_refuses_before_asking_who_is_known(stream: str) -> None:
    """The key is checked for the node id the stream claims; a right key of a revoked
    or unknown proxy is still refused."""
    from meshgate.telemetry.service import token_authenticator

    class NoTokens:
        def authenticate(self, metadata, node_id):  # type: ignore[no-untyped-def]
            raise PermissionError("not a stats stream")

    known = {"orders-1": True, "gone-1": False}
    check = token_authenticator(NoTokens(), lambda n: known.get(n, False), SECRET)
    assert check("orders-1", {KEY_HEADER: telemetry_key(SECRET, "orders-1")}, stream)
    for node, md, why in [
        ("orders-1", {}, "no x-meshgate-telemetry-key"),
        ("orders-1", {KEY_HEADER: telemetry_key(SECRET, "web-1")}, "not the key of proxy 'orders-1'"),
        ("orders-1", {KEY_HEADER: ""}, "no x-meshgate-telemetry-key"),
        ("gone-1", {KEY_HEADER: telemetry_key(SECRET, "gone-1")}, "unknown or revoked"),
        ("nobody", {KEY_HEADER: telemetry_key(SECRET, "nobody")}, "unknown or revoked"),
    ]:
        with pytest.raises(PermissionError, match=why):
            check(node, md, stream)
    with pytest.raises(PermissionError, match="not a stats stream"):
        check("orders-1", {KEY_HEADER: telemetry_key(SECRET, "orders-1")}, "metrics")
