"""Telemetry from real Envoys: counted requests through web -> orders over mTLS.

The aggregates must equal what the test sent (per status class, on the edge
and on the service), denied calls must land in the store with their rule id
and show in `meshgate events --denied`, and `/metrics`, `/api/*` and
`meshgate top` report the same numbers.
"""

from __future__ import annotations

import json
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from telemetry_support import TRAFFIC, TwoSidecars, make_store

from meshgate.store.db import open_store
from meshgate.telemetry import denials as denial_store
from meshgate.telemetry.runner import TelemetryServer
from tests.mesh_kit import cli, wait_for

pytestmark = pytest.mark.envoy

TOTAL = sum(n for _, _, n in TRAFFIC)
BY_CLASS = Counter()
for _path, _status, _n in TRAFFIC:
    BY_CLASS[f"{_status // 100}xx"] += _n
DENIED_BY_RULE = {"deny-admin": 4, None: 2}
AUDITED = 3


class Mesh:
    def __init__(self, db: Path, ts: TelemetryServer, sidecars: TwoSidecars) -> None:
        self.db, self.ts, self.sidecars = db, ts, sidecars

    def cli(self, *args: str) -> str:
        return cli(self.db, *args)

    def get(self, path: str) -> Any:
        with urllib.request.urlopen(self.ts.admin_url + path, timeout=5) as r:  # noqa: S310
            body = r.read()
            return json.loads(body) if path.startswith("/api/") else body.decode()

    def edge(self, caller: str, callee: str) -> dict[str, Any] | None:
        rows = self.ts.call(self.ts.hub.edges)
        return next((e for e in rows if (e["caller"], e["callee"]) == (caller, callee)), None)

    def service(self, name: str) -> dict[str, Any] | None:
        rows = self.ts.call(self.ts.hub.services)
        return next((s for s in rows if s["service"] == name), None)


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    tmp = tmp_path_factory.mktemp("telemetry")
    db = tmp / "meshgate.db"
    rbac = make_store(db)  # policies made with the CLI, compiled by meshgate.policy
    engine = open_store(str(db))
    ts = TelemetryServer(engine=engine, window_seconds=120).start()
    sidecars = TwoSidecars(tmp, ts.grpc_port, rbac)
    try:
        sidecars.start()
        sent: list[tuple[str, int]] = []
        for path, _status, n in TRAFFIC:
            sent += [(path, code) for code in sidecars.send(path, n)]
        sidecars.failed_handshake()
        m = Mesh(db, ts, sidecars)
        m.sent = sent  # type: ignore[attr-defined]
        # Every request is counted on both sides, and every denial is logged.
        wait_for("web -> orders totals", lambda: (m.edge("web", "orders") or {}).get(
            "requests_total") == TOTAL and m.edge("web", "orders"))
        wait_for("orders inbound totals and TLS failure", lambda: (
            (s := m.service("orders")) and s["requests_total"] == TOTAL
            and s["tls_failures_total"] >= 1 and s))
        wait_for("denials logged", lambda: (
            (e := m.edge("web", "orders")) and e["denied_total"] == 6
            and e["audited_total"] == AUDITED))
        ts.flush_denials()
        assert denial_store.count(engine) == sum(DENIED_BY_RULE.values()) + AUDITED
        yield m
    finally:
        sidecars.stop()
        ts.stop()
        engine.dispose()


def test_requests_pass_as_sent(mesh: Mesh) -> None:
    expected = [(path, status) for path, status, n in TRAFFIC for _ in range(n)]
    assert mesh.sent == expected  # type: ignore[attr-defined]


def test_edge_aggregates_match_the_requests_sent(mesh: Mesh) -> None:
    e = mesh.edge("web", "orders")
    assert e is not None
    assert e["requests_total"] == TOTAL
    assert e["status_total"] == dict(BY_CLASS)
    # every request is in the window: rate and success rate over exactly these
    assert e["requests"] == TOTAL
    assert e["success_rate"] == pytest.approx(1 - BY_CLASS["5xx"] / TOTAL, abs=1e-4)
    assert e["rps"] > 0
    assert e["p50_ms"] is not None and e["p90_ms"] is not None and e["p99_ms"] is not None
    assert 0 < e["p50_ms"] <= e["p90_ms"] <= e["p99_ms"]
    assert e["denied_total"] == sum(DENIED_BY_RULE.values())
    assert e["audited_total"] == AUDITED
    assert e["tls_failures_total"] == 0
    # only the mesh edge: no edge to the local app or the control-plane cluster
    callees = {r["callee"] for r in mesh.ts.call(mesh.ts.hub.edges)}
    assert callees == {"orders"}


def test_service_aggregates_match_on_the_callee(mesh: Mesh) -> None:
    s = mesh.service("orders")
    assert s is not None
    assert s["requests_total"] == TOTAL
    assert s["status_total"] == dict(BY_CLASS)
    assert s["rbac_denied_total"] == sum(DENIED_BY_RULE.values())  # deny + allow filters
    assert s["denied_total"] == sum(DENIED_BY_RULE.values())  # from the access logs
    assert s["audited_total"] == AUDITED
    assert s["tls_failures_total"] == 1
    assert s["p99_ms"] is not None
    assert s["proxies"] == ["orders-1"]


def test_latency_histogram_is_cumulative_and_counts_every_request(mesh: Mesh) -> None:
    totals = mesh.ts.call(mesh.ts.hub.edge_latency_totals)
    b = totals[("web", "orders")]
    assert b.count == TOTAL
    counts = [b.cumulative[k] for k in sorted(b.cumulative)]
    assert counts == sorted(counts) and counts[-1] <= b.count


def test_denials_in_store_carry_rule_ids(mesh: Mesh) -> None:
    rows = json.loads(mesh.cli("events", "--denied", "--output", "json"))
    enforced = [x for x in rows if x["status"] == 403]
    assert Counter(x["rule_id"] for x in enforced) == Counter(
        {k: v for k, v in DENIED_BY_RULE.items()})
    for x in enforced:
        assert (x["caller"], x["callee"], x["method"], x["proxy"]) == ("web", "orders", "GET",
                                                                        "orders-1")
    by_rule = {x["rule_id"]: x for x in enforced}
    assert by_rule["deny-admin"]["path"] == "/anything/admin/x"
    assert by_rule["deny-admin"]["reason"] == "denied by rule deny-admin"
    assert by_rule[None]["path"] == "/other"
    assert "default deny" in by_rule[None]["reason"]
    audits = [x for x in rows if x["status"] == 200]
    assert len(audits) == AUDITED
    assert {x["rule_id"] for x in audits} == {"audit-watch"}
    assert all(x["reason"].startswith("audit:") for x in audits)
    # the table form names the rule too, and --since / --callee filter
    table = mesh.cli("events", "--denied", "--since", "10m", "--callee", "orders")
    assert "deny-admin" in table, table
    none = mesh.cli("events", "--denied", "--callee", "nobody")
    assert "(none)" in none


def test_failures_are_logged_but_not_as_denials(mesh: Mesh) -> None:
    failures = mesh.ts.call(mesh.ts.hub.failures, 500)
    inbound = Counter(f["status"] for f in failures if f["proxy"] == "orders-1")
    assert inbound == Counter({503: 5, 404: 3})
    # the caller's sidecar sees the callee's 403s as upstream responses, not denials
    assert all(d["proxy"] == "orders-1" for d in mesh.ts.call(mesh.ts.hub.denials, 500))


def test_successful_requests_are_not_sent_as_access_logs(mesh: Mesh) -> None:
    # Filtered in Envoy: of TOTAL requests, only >= 400 or flagged or audited reach us,
    # once per sidecar that logs them (orders-1 inbound, web-1 outbound).
    failed_or_denied = BY_CLASS["4xx"] + BY_CLASS["5xx"]
    assert mesh.ts.call(lambda: mesh.ts.hub.log_entries) == 2 * failed_or_denied + AUDITED


def test_admin_api_metrics_and_top_agree(mesh: Mesh) -> None:
    api = mesh.get("/api/edges")
    (edge,) = [e for e in api["edges"] if e["callee"] == "orders"]
    assert edge["requests_total"] == TOTAL and edge["denied_total"] == 6
    services = {s["service"]: s for s in mesh.get("/api/services")["services"]}
    assert services["orders"]["requests_total"] == TOTAL
    assert services["web"]["kind"] == "service"  # from the store, no inbound traffic
    proxies = {p["proxy"]: p for p in mesh.get("/api/proxies")["proxies"]}
    assert proxies["orders-1"]["stats_connected"] is True
    assert proxies["orders-1"]["cert_expiry"] > time.time()
    denials = mesh.get("/api/denials?since=600&limit=5")["denials"]
    assert len(denials) == 5 and all(d["callee"] == "orders" for d in denials)

    text = mesh.get("/metrics")
    assert ('meshgate_edge_requests_total{callee="orders",caller="web",code_class="2xx"} '
            f'{float(BY_CLASS["2xx"])}') in text
    assert ('meshgate_service_rbac_denied_total{service="orders"} 6.0') in text
    assert ('meshgate_denials_total{callee="orders",caller="web",kind="rbac",'
            'rule="deny-admin"} 4.0') in text
    assert f'meshgate_edge_request_duration_ms_count{{callee="orders",caller="web"}} {float(TOTAL)}' in text
    assert "meshgate_telemetry_proxies_reporting 2.0" in text

    admin = f"127.0.0.1:{mesh.ts.admin_port}"
    (row,) = json.loads(mesh.cli("top", "--once", "--output", "json", "--admin", admin))
    assert (row["caller"], row["callee"], row["requests_total"]) == ("web", "orders", TOTAL)
    r = mesh.cli("top", "--once", "--admin", admin)
    assert "web" in r and "orders" in r and f"{TOTAL}" in r


def test_tcp_denial_is_logged_with_its_rule_and_allowed_connections_are_not(
        tmp_path: Path) -> None:
    """Network RBAC (compiled from a real policy) on a tcp service: the denied
    connection reaches the store with its rule id; a connection through an
    unguarded listener with the same access log is not sent at all."""
    import socket

    from google.protobuf import json_format
    from telemetry_support import bootstrap, static_cluster

    from meshgate.fleet.app import App
    from meshgate.fleet.envoy import EnvoyProcess, free_port
    from meshgate.policy.compile import network_rbac_filters
    from meshgate.store.world import load_world
    from meshgate.telemetry.envoy_config import denied_tcp_access_log

    db = tmp_path / "tcp.db"
    for args in (["init", "--trust-domain", "example.org"],
                 ["service", "add", "db", "--protocol", "tcp", "--port", "5432"],
                 ["policy", "deny", "--from", "*", "--to", "db", "--id", "deny-db"]):
        cli(db, *args)
    engine = open_store(str(db))
    rbac = [json.loads(json_format.MessageToJson(f))
            for f in network_rbac_filters(load_world(engine), "db")]
    log = json.loads(json_format.MessageToJson(denied_tcp_access_log("meshgate", "db")))

    def tcp_listener(name: str, port: int, filters: list[dict[str, Any]]) -> dict[str, Any]:
        proxy = {"name": "envoy.filters.network.tcp_proxy", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
            "stat_prefix": name, "cluster": "local_app", "access_log": [log]}}
        return {"name": name, "address": {"socket_address": {"address": "127.0.0.1",
                                                             "port_value": port}},
                "filter_chains": [{"filters": [*filters, proxy]}]}

    guarded, open_port = free_port(), free_port()
    ts = TelemetryServer(engine=engine).start()
    app = App("db").start()
    envoy = EnvoyProcess(bootstrap("db-1", "db", ts.grpc_port,
                                   [tcp_listener("inbound", guarded, rbac),
                                    tcp_listener("open", open_port, [])],
                                   [static_cluster("local_app", app.port)], telemetry=True),
                         tmp_path, "db-1")
    try:
        envoy.start().wait_live()
        replies = {}
        for port in (guarded, open_port):
            with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
                s.sendall(b"GET /x HTTP/1.1\r\nhost: db\r\nconnection: close\r\n\r\n")
                replies[port] = s.recv(100)
        assert replies[guarded] == b"" and replies[open_port].startswith(b"HTTP/1.1 200")
        wait_for("tcp denial", lambda: ts.call(ts.hub.denials))
        ts.flush_denials()
        (row,) = denial_store.read(engine)
        assert (row["proxy"], row["callee"], row["rule_id"], row["method"]) == (
            "db-1", "db", "deny-db", None)
        time.sleep(1.5)  # one more access-log flush (1 s): the allowed connection stays out
        assert ts.call(lambda: ts.hub.log_entries) == 1
    finally:
        envoy.stop()
        app.stop()
        ts.stop()
        engine.dispose()
