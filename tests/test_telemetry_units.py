"""Telemetry parts without Envoy: stats reading, quantiles, log classification,
the hub's window, retention of denial_events, Prometheus metrics, Envoy config shape."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from envoy.config.accesslog.v3 import accesslog_pb2 as filters_pb2
from envoy.data.accesslog.v3 import accesslog_pb2
from envoy.extensions.access_loggers.grpc.v3 import als_pb2
from google.protobuf import struct_pb2

from meshgate.store import migrations
from meshgate.store.db import create, resolve_url
from meshgate.telemetry import denials as store
from meshgate.telemetry import envoy_config, protos
from meshgate.telemetry.accesslog import Denial, identity_name, read_http_entry, read_tcp_entry
from meshgate.telemetry.hub import TelemetryHub
from meshgate.telemetry.metrics import ControlPlaneMetrics, short_type
from meshgate.telemetry.stats import Buckets, read_push

# ---- helpers --------------------------------------------------------------------------------

def family(name: str, ftype: int, *metrics: tuple[dict[str, str], object]):  # type: ignore[no-untyped-def]
    f = protos.MetricFamily(name=name, type=ftype)
    for labels, value in metrics:
        m = f.metric.add()
        for k, v in labels.items():
            lp = m.label.add()
            lp.name, lp.value = k, v
        if ftype == protos.COUNTER:
            m.counter.value = float(value)  # type: ignore[arg-type]
        elif ftype == protos.GAUGE:
            m.gauge.value = float(value)  # type: ignore[arg-type]
        else:
            count, total, buckets = value  # type: ignore[misc]
            m.histogram.sample_count = count
            m.histogram.sample_sum = total
            for bound, cum in buckets:
                b = m.histogram.bucket.add()
                b.upper_bound, b.cumulative_count = bound, cum
    return f


def edge_push(callee: str, ok: int, err: int, latencies: list[tuple[float, int]] | None = None):  # type: ignore[no-untyped-def]
    cl = {"envoy.cluster_name": f"svc/{callee}"}
    fams = [family("cluster.upstream_rq_xx", protos.COUNTER,
                   ({**cl, "envoy.response_code_class": "2"}, ok),
                   ({**cl, "envoy.response_code_class": "5"}, err))]
    if latencies:
        n = sum(c for _, c in latencies)
        cum, acc = [], 0
        for bound, c in latencies:
            acc += c
            cum.append((bound, acc))
        fams.append(family("cluster.upstream_rq_time", protos.HISTOGRAM, (cl, (n, 1.0, cum))))
    return fams


def http_entry(*, status: int = 403, details: str = "", peer: str = "spiffe://example.org/svc/web",
               cluster: str = "", route: str = "", path: str = "/x", meta: dict[str, str] | None = None,
               flags: dict[str, bool] | None = None, start: int | None = None,
               ) -> accesslog_pb2.HTTPAccessLogEntry:
    e = accesslog_pb2.HTTPAccessLogEntry()
    c = e.common_properties
    if peer:
        c.tls_properties.peer_certificate_properties.subject_alt_name.add(uri=peer)
    c.downstream_remote_address.socket_address.address = "127.0.0.9"
    c.upstream_cluster = cluster
    c.route_name = route
    c.start_time.seconds = int(time.time()) if start is None else start
    for k, v in (flags or {}).items():
        setattr(c.response_flags, k, v)
    if meta:
        s = struct_pb2.Struct()
        s.update(meta)
        c.metadata.filter_metadata["envoy.filters.http.rbac"].CopyFrom(s)
    e.request.request_method = 1  # GET
    e.request.path = path
    e.response.response_code.value = status
    e.response.response_code_details = details
    return e


# ---- stats ----------------------------------------------------------------------------------

def test_quantiles_interpolate_inside_buckets() -> None:
    b = Buckets(count=100, cumulative={1.0: 50, 10.0: 90, 100.0: 100})
    assert b.quantile(0.5) == pytest.approx(1.0)
    assert b.quantile(0.25) == pytest.approx(0.5)
    assert b.quantile(0.7) == pytest.approx(1 + 9 * (20 / 40))
    assert b.quantile(0.99) == pytest.approx(10 + 90 * 0.9)
    assert Buckets().quantile(0.5) is None
    # samples above the last bound: the last bound, not a guess
    assert Buckets(count=10, cumulative={5.0: 2}).quantile(0.9) == 5.0


def test_read_push_keeps_mesh_edges_and_inbound_only() -> None:
    inbound = {"envoy.http_conn_manager_prefix": "inbound"}
    fams = edge_push("orders", 7, 2, [(5.0, 6), (10.0, 3)]) + [
        family("cluster.upstream_rq_xx", protos.COUNTER,  # not a mesh service cluster
               ({"envoy.cluster_name": "local_app", "envoy.response_code_class": "2"}, 9),
               ({"envoy.cluster_name": "svc/billing", "envoy.response_code_class": "2"}, 0)),
        family("http.downstream_rq_xx", protos.COUNTER,
               ({**inbound, "envoy.response_code_class": "4"}, 3),
               ({"envoy.http_conn_manager_prefix": "admin", "envoy.response_code_class": "2"}, 5)),
        # meshgate's two RBAC filters, told apart by their stat prefix
        family("http.rbac.denied", protos.COUNTER,
               ({**inbound, "envoy.rbac_http_prefix": "deny"}, 2),
               ({**inbound, "envoy.rbac_http_prefix": "allow"}, 3)),
        family("http.rbac.shadow_denied", protos.COUNTER,  # audit: from access logs only
               ({**inbound, "envoy.rbac_http_prefix": "deny_audit"}, 1)),
        family("listener.ssl.fail_verify_no_cert", protos.COUNTER,
               ({"envoy.listener_address": "127.0.0.1_15006"}, 1)),
        family("cluster.ssl.connection_error", protos.COUNTER,
               ({"envoy.cluster_name": "svc/orders"}, 4)),
        family("listener.ssl.certificate.expiration_unix_time_seconds", protos.GAUGE,
               ({"envoy.tls_certificate": "identity"}, 2000), ({"envoy.tls_certificate": "trust-bundle"}, 500),
               ({"envoy.tls_certificate": "unnamed_ca_cert_1"}, 100)),
    ]
    s = read_push(fams)
    assert set(s.outbound) == {"orders"}  # zero deltas and local clusters skipped
    o = s.outbound["orders"]
    assert o.classes == {"2": 7, "5": 2} and o.latency.count == 9 and o.tls_failures == 4
    assert s.inbound.classes == {"4": 3}
    assert (s.inbound.rbac_denied, s.inbound.tls_failures) == (5, 1)
    assert s.cert_expiry == 2000


# ---- access logs ----------------------------------------------------------------------------

def test_rbac_denial_names_rule_caller_and_callee() -> None:
    d, f = read_http_entry(http_entry(details="rbac_access_denied_matched_policy[deny-admin]",
                                      start=1_700_000_000),
                           "orders-1", "orders", now=1.0)
    assert f is None and d is not None
    assert (d.caller, d.callee, d.rule_id, d.kind, d.method, d.path, d.status) == (
        "web", "orders", "deny-admin", "rbac", "GET", "/x", 403)
    assert d.at == 1_700_000_000
    d, _ = read_http_entry(http_entry(details="rbac_access_denied_matched_policy[none]"),
                           "orders-1", "orders", now=1.0)
    assert d is not None and d.rule_id is None and "default deny" in d.reason


def test_jwt_and_rate_limit_denials_at_a_gateway() -> None:
    d, _ = read_http_entry(http_entry(status=401, peer="", cluster="svc/orders", route="api",
                                      details="jwt_authn_access_denied{Jwt_is_missing}"),
                           "gw-1", "gw", now=1.0)
    assert d is not None
    assert (d.kind, d.reason, d.callee, d.route, d.caller) == (
        "jwt", "jwt: Jwt is missing", "orders", "api", "127.0.0.9")
    d, _ = read_http_entry(http_entry(status=429, peer="", details="local_rate_limited",
                                      flags={"rate_limited": True}), "gw-1", "gw", now=1.0)
    assert d is not None and d.kind == "ratelimit"


def test_audit_denial_and_plain_failures() -> None:
    d, f = read_http_entry(http_entry(status=200, details="via_upstream", meta={
        "deny.enforced_engine_result": "allowed",
        "deny_audit.shadow_engine_result": "denied",
        "deny_audit.shadow_effective_policy_id": "audit-1"}),
        "orders-1", "orders", now=1.0)
    assert d is not None and f is None
    assert (d.kind, d.rule_id, d.status) == ("audit", "audit-1", 200)
    # denied by default, but an audit-mode allow rule would have let it through
    d, f = read_http_entry(http_entry(details="rbac_access_denied_matched_policy[none]", meta={
        "deny_audit.shadow_engine_result": "allowed",
        "allow_audit.shadow_engine_result": "allowed",
        "allow_audit.shadow_effective_policy_id": "try-web"}),
        "orders-1", "orders", now=1.0)
    assert d is not None and d.kind == "rbac" and d.rule_id is None
    assert d.reason == "no rule allows it (default deny); audit rule try-web would allow it"
    d, f = read_http_entry(http_entry(status=503, details="upstream_reset_before_response_started",
                                      flags={"upstream_connection_failure": True}),
                           "web-1", "web", now=1.0)
    assert d is None and f is not None and f.flags == "UF" and f.status == 503
    # a 403 from the app itself is a failure, not a denial
    d, f = read_http_entry(http_entry(details="via_upstream"), "orders-1", "orders", now=1.0)
    assert d is None and f is not None


def test_tcp_rbac_denial_from_termination_details() -> None:
    e = accesslog_pb2.TCPAccessLogEntry()
    e.common_properties.connection_termination_details = "rbac_access_denied_matched_policy[db-deny]"
    e.common_properties.tls_properties.peer_certificate_properties.subject_alt_name.add(
        uri="spiffe://example.org/svc/web")
    d, f = read_tcp_entry(e, "db-1", "db", now=5.0)
    assert d is not None and f is None
    assert (d.caller, d.callee, d.rule_id, d.kind, d.at) == ("web", "db", "db-deny", "tcp", 5.0)


def test_identity_names() -> None:
    assert identity_name("spiffe://example.org/svc/orders") == "orders"
    assert identity_name("spiffe://example.org/edge/public") == "public"
    assert identity_name("spiffe://other/ns/x/sa/y") == "spiffe://other/ns/x/sa/y"


# ---- hub ------------------------------------------------------------------------------------

class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def test_hub_window_rates_and_totals() -> None:
    clock = Clock()
    hub = TelemetryHub(window_seconds=10, clock=clock)
    hub.metrics_stream_opened("web-1", "web")
    hub.ingest_metrics("web-1", edge_push("orders", 10, 0, [(5.0, 10)]))
    clock.t += 5
    hub.ingest_metrics("web-1", edge_push("orders", 8, 2, [(5.0, 8), (50.0, 2)]))
    (e,) = hub.edges()
    assert (e["caller"], e["callee"], e["requests"], e["requests_total"]) == ("web", "orders", 20, 20)
    assert e["success_rate"] == pytest.approx(0.9)
    # 20 requests over 5 s seen plus one push interval (10 s, the window): 2 rps
    assert e["rps"] == pytest.approx(2.0)
    assert e["p50_ms"] is not None and e["p99_ms"] > 5.0
    hub.metrics_stream_opened("web-1", "web")  # a reconnect overlapping the old stream
    hub.metrics_stream_closed("web-1")
    assert hub.proxies["web-1"].connected
    clock.t += 30  # window passed: rates empty, totals kept
    (e,) = hub.edges()
    assert (e["requests"], e["rps"], e["success_rate"], e["p50_ms"]) == (0, 0.0, None, None)
    assert e["requests_total"] == 20 and e["status_total"] == {"2xx": 18, "5xx": 2}


def test_hub_denials_make_edges_and_reach_the_writer(tmp_path: Path) -> None:
    clock = Clock()
    engine = create(resolve_url(str(tmp_path / "d.db")))
    migrations.upgrade(engine)
    writer = store.DenialWriter(engine, store.Retention(max_rows=10))
    hub = TelemetryHub(clock=clock, denial_writer=writer,
                       route_service=lambda r: {"api": "orders"}.get(r))
    hub.node_seen("gw-1", "gw", "edge")  # from the bootstrap's node metadata
    hub.ingest_http_logs("gw-1", "gw", "edge", [
        http_entry(status=401, peer="", route="api", details="jwt_authn_access_denied{Jwt_is_missing}"),
        http_entry(details="rbac_access_denied_matched_policy[r1]"),
    ])
    hub.ingest_http_logs("orders-1", "orders", "inbound", [  # a plaintext caller (permissive mTLS)
        http_entry(peer="", details="rbac_access_denied_matched_policy[none]")])
    rows = {(e["caller"], e["callee"]): e for e in hub.edges()}
    # an outside client is counted against the gateway that refused it (labels stay few),
    # and the route tells the service; the event keeps the client's address
    assert rows[("gw", "orders")]["denied"] == 1
    assert rows[("web", "gw")]["denied_total"] == 1
    assert rows[("external", "orders")]["denied_total"] == 1
    assert sorted(hub.denial_rules.items()) == [
        (("external", "orders", "rbac", ""), 1), (("gw", "orders", "jwt", ""), 1),
        (("web", "gw", "rbac", "r1"), 1)]
    assert {d["caller"] for d in hub.denials()} == {"127.0.0.9", "web"}
    assert asyncio.run(writer.flush()) == 3
    assert {(r["caller"], r["rule_id"]) for r in store.read(engine)} == {
        ("127.0.0.9", None), ("web", "r1")}


def test_hub_refuses_unauthenticated_identity() -> None:
    hub = TelemetryHub(authenticate=lambda node, md, stream: md.get("x-token") == node + "-secret")
    assert hub.authenticate("a", {"x-token": "a-secret"}, "metrics")
    assert not hub.authenticate("a", {"x-token": "b-secret"}, "metrics")
    assert not hub.authenticate("a", {}, "access-log")


# ---- store retention ------------------------------------------------------------------------

def _denial(at: float, n: int) -> Denial:
    return Denial(at=at, proxy="p", caller="web", callee="orders", route=None, method="GET",
                  path=f"/{n}", status=403, rule_id="r", reason="denied by rule r", kind="rbac")


def test_retention_prunes_by_rows_and_age(tmp_path: Path) -> None:
    engine = create(resolve_url(str(tmp_path / "r.db")))
    migrations.upgrade(engine)
    keep = store.Retention(max_rows=5, max_age_seconds=100)
    store.write_batch(engine, [_denial(1000 + i, i) for i in range(8)], keep, now=1010)
    rows = store.read(engine)
    assert [r["path"] for r in rows] == ["/7", "/6", "/5", "/4", "/3"]  # newest 5 kept
    # 200 s later, a new batch: everything older than 100 s goes
    store.write_batch(engine, [_denial(1200, 99)], keep, now=1200)
    assert [r["path"] for r in store.read(engine)] == ["/99"]
    assert store.read(engine, since=1300) == []
    with pytest.raises(ValueError, match="max_rows"):
        store.Retention(max_rows=0)


def test_writer_queue_is_bounded(tmp_path: Path) -> None:
    engine = create(resolve_url(str(tmp_path / "q.db")))
    migrations.upgrade(engine)
    w = store.DenialWriter(engine, max_queue=3, batch=100)
    for i in range(5):
        w.put(_denial(time.time(), i))
    assert (len(w.queue), w.dropped) == (3, 2)
    assert asyncio.run(w.flush()) == 3
    assert store.count(engine) == 3


# ---- Prometheus -----------------------------------------------------------------------------

def test_control_plane_metrics() -> None:
    m = ControlPlaneMetrics(TelemetryHub())
    m.proxy_connected("a")
    m.proxy_connected("b")
    m.proxy_disconnected("b")
    m.pushed("a", "type.googleapis.com/envoy.config.cluster.v3.Cluster", now=10.0)
    assert m.acked("a", "cds", now=10.25) == pytest.approx(0.25)
    assert m.acked("a", "cds", now=11.0) is None  # no push outstanding
    m.pushed("a", "lds", now=12.0)
    m.nacked("a", "lds")
    m.set_cert_expiry("a", 1234.0)
    text = m.render().decode()
    assert "meshgate_proxies_connected 1.0" in text
    assert 'meshgate_xds_pushes_total{type="cds"} 1.0' in text
    assert 'meshgate_xds_acks_total{type="cds"} 2.0' in text
    assert 'meshgate_xds_nacks_total{type="lds"} 1.0' in text
    assert 'meshgate_xds_push_ack_seconds_bucket{le="0.25",type="cds"} 1.0' in text
    assert 'meshgate_xds_push_ack_seconds_bucket{le="0.1",type="cds"} 0.0' in text
    assert 'meshgate_certificate_expiry_timestamp_seconds{proxy="a"} 1234.0' in text
    m.proxy_disconnected("a")
    assert 'meshgate_certificate_expiry_timestamp_seconds{proxy="a"}' not in m.render().decode()
    assert short_type("type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret") == "sds"
    # two instances do not share a registry
    assert "meshgate_proxies_connected 0.0" in ControlPlaneMetrics().render().decode()


# ---- Envoy config ---------------------------------------------------------------------------

def test_bootstrap_stats_sink_fragment() -> None:
    frag = envoy_config.bootstrap_stats_sink("meshgate", 2500, initial_metadata=[("x-t", "v")])
    (sink,) = frag["stats_sinks"]
    cfg = sink["typed_config"]
    assert sink["name"] == "envoy.stat_sinks.metrics_service"
    assert cfg["report_counters_as_deltas"] is True and cfg["emit_tags_as_labels"] is True
    assert cfg["transport_api_version"] == "V3"
    assert cfg["grpc_service"] == {"envoy_grpc": {"cluster_name": "meshgate"},
                                   "initial_metadata": [{"key": "x-t", "value": "v"}]}
    assert frag["stats_flush_interval"] == "2.500s"
    with pytest.raises(ValueError):
        envoy_config.bootstrap_stats_sink("meshgate", 0)


def test_access_log_is_filtered_in_envoy() -> None:
    log = envoy_config.denied_or_failed_access_log("meshgate", "orders-inbound")
    assert log.name == "envoy.access_loggers.http_grpc"
    ors = log.filter.or_filter.filters
    kinds = [f.WhichOneof("filter_specifier") for f in ors]
    assert kinds == ["status_code_filter", "response_flag_filter", "and_filter", "metadata_filter"]
    cmp = ors[0].status_code_filter.comparison
    assert (cmp.op, cmp.value.default_value) == (filters_pb2.ComparisonFilter.GE, 400)
    assert ors[3].metadata_filter.match_if_key_not_found.value is False
    cfg = als_pb2.HttpGrpcAccessLogConfig()
    log.typed_config.Unpack(cfg)
    assert cfg.common_config.log_name == "orders-inbound"
    assert cfg.common_config.grpc_service.envoy_grpc.cluster_name == "meshgate"
    no_audit = envoy_config.denied_or_failed_access_log("m", "l", include_audit=False)
    assert len(no_audit.filter.or_filter.filters) == 3
    tcp = envoy_config.denied_tcp_access_log("meshgate", "db")
    assert tcp.name == "envoy.access_loggers.tcp_grpc"
    flag, cel = tcp.filter.or_filter.filters
    assert flag.WhichOneof("filter_specifier") == "response_flag_filter"
    assert cel.extension_filter.name == "envoy.access_loggers.extension_filters.cel"


# ---- serve wiring ---------------------------------------------------------------------------

def test_retention_from_env_names_bad_settings() -> None:
    from meshgate.errors import ValidationError
    from meshgate.telemetry.service import retention_from_env

    assert retention_from_env({}) == store.Retention()
    r = retention_from_env({"MESHGATE_DENIALS_MAX_ROWS": "500", "MESHGATE_DENIALS_MAX_AGE": "2d"})
    assert (r.max_rows, r.max_age_seconds) == (500, 2 * 86400)
    with pytest.raises(ValidationError) as err:
        retention_from_env({"MESHGATE_DENIALS_MAX_ROWS": "0", "MESHGATE_DENIALS_MAX_AGE": "soon"})
    assert {v.field for v in err.value.violations} == {
        "MESHGATE_DENIALS_MAX_ROWS", "MESHGATE_DENIALS_MAX_AGE"}


def test_token_authenticator_uses_the_xds_check() -> None:
    from meshgate.telemetry.service import token_authenticator

    class Auth:  # the xDS Authenticator's shape: raises when the token does not fit
        def authenticate(self, metadata, node_id):  # type: ignore[no-untyped-def]
            if ("authorization", f"Bearer {node_id}-t") not in list(metadata):
                raise PermissionError(f"bad token for {node_id}")

    from meshgate.telemetry.keys import KEY_HEADER, telemetry_key

    secret = b"s" * 32
    check = token_authenticator(Auth(), lambda n: n == "orders-1", secret)
    assert check("orders-1", {"authorization": "Bearer orders-1-t"}, "metrics")
    with pytest.raises(PermissionError, match="bad token"):
        check("orders-1", {}, "metrics")  # stats streams always need the token
    # access logs carry the proxy's telemetry key (listener config), not the join token
    assert check("orders-1", {KEY_HEADER: telemetry_key(secret, "orders-1")}, "access-log")
    with pytest.raises(PermissionError, match="no x-meshgate-telemetry-key"):
        check("orders-1", {"authorization": "Bearer orders-1-t"}, "access-log")
    with pytest.raises(PermissionError, match="unknown or revoked"):
        check("intruder", {KEY_HEADER: telemetry_key(secret, "intruder")}, "access-log")


def test_translate_options_add_the_access_logs() -> None:
    from meshgate.telemetry.service import Telemetry

    opts = Telemetry.translate_options()
    (http_log,) = opts.http_access_log
    (tcp_log,) = opts.tcp_access_log
    assert (http_log.name, tcp_log.name) == ("envoy.access_loggers.http_grpc",
                                             "envoy.access_loggers.tcp_grpc")
    cfg = als_pb2.HttpGrpcAccessLogConfig()
    http_log.typed_config.Unpack(cfg)
    assert cfg.common_config.grpc_service.envoy_grpc.cluster_name == "meshgate-xds"
