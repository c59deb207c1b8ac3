"""Shared by the telemetry tests: a two-sidecar mesh on real Envoy, with real mTLS.

    web (test client) -> web-1 Envoy (outbound, cluster svc/orders)
        --mTLS--> orders-1 Envoy (inbound: RBAC deny + allow with an audit rule)
        -> orders app (meshgate.fleet.app)

Both Envoys push stats and denied-or-failed access logs to the in-process
telemetry server (meshgate.telemetry.runner). Static bootstraps: these tests
do not depend on the xDS server.
"""

from __future__ import annotations

import http.client
import json
import socket
import ssl
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from google.protobuf import json_format

from meshgate.fleet.app import App
from meshgate.fleet.envoy import EnvoyProcess, free_port
from meshgate.telemetry.envoy_config import bootstrap_stats_sink, denied_or_failed_access_log
from tests.edge_kit import MeshCa
from tests.mesh_kit import Fleet, cli, get, wait_for

TD = "example.org"
CP_CLUSTER = "meshgate"

# The policies (made with the CLI, compiled by meshgate.policy) and what the
# test sends through web -> orders, and what each path yields.
POLICIES: list[list[str]] = [
    ["allow", "--from", "web", "--to", "orders", "--path-prefix", "/status",
     "--path-prefix", "/anything", "--id", "allow-web"],
    ["deny", "--from", "*", "--to", "orders", "--path-prefix", "/anything/admin",
     "--id", "deny-admin"],
    ["deny", "--from", "*", "--to", "orders", "--path-prefix", "/anything/watched",
     "--audit", "--id", "audit-watch"],
]
TRAFFIC: list[tuple[str, int, int]] = [  # (path, expected status, count)
    ("/anything/ok", 200, 20),
    ("/status/503", 503, 5),
    ("/status/404", 404, 3),
    ("/anything/admin/x", 403, 4),     # deny rule "deny-admin"
    ("/other", 403, 2),                # no allow rule matches: default deny
    ("/anything/watched", 200, 3),     # passes; audit rule "audit-watch" flags it
]


# ---- bootstraps -----------------------------------------------------------------------------

def _addr(port: int) -> dict[str, Any]:
    return {"socket_address": {"address": "127.0.0.1", "port_value": port}}


def static_cluster(name: str, port: int, *, http2: bool = False,
                   tls: dict[str, Any] | None = None) -> dict[str, Any]:
    c: dict[str, Any] = {
        "name": name, "type": "STATIC", "connect_timeout": "1s",
        "load_assignment": {"cluster_name": name, "endpoints": [
            {"lb_endpoints": [{"endpoint": {"address": _addr(port)}}]}]},
    }
    if http2:
        c["typed_extension_protocol_options"] = {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                "explicit_http_config": {"http2_protocol_options": {}}}}
    if tls:
        c["transport_socket"] = {"name": "envoy.transport_sockets.tls", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
            **tls}}
    return c


def _common_tls(cert: str, key: str, ca: str, san: dict[str, str]) -> dict[str, Any]:
    return {
        "tls_certificates": [{"certificate_chain": {"inline_string": cert},
                              "private_key": {"inline_string": key}}],
        "validation_context": {"trusted_ca": {"inline_string": ca},
                               "match_typed_subject_alt_names": [{"san_type": "URI",
                                                                  "matcher": san}]},
    }


def hcm(stat_prefix: str, cluster: str, http_filters: list[dict[str, Any]], *,
        access_log: str | None, per_route: dict[str, Any] | None = None) -> dict[str, Any]:
    cfg: dict[str, Any] = {
        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": stat_prefix,
        "route_config": {"name": stat_prefix, "virtual_hosts": [{
            "name": "all", "domains": ["*"],
            "routes": [{"name": f"{stat_prefix}-all", "match": {"prefix": "/"},
                        "route": {"cluster": cluster}}],
            **({"typed_per_filter_config": per_route} if per_route else {})}]},
        "http_filters": http_filters + [{
            "name": "envoy.filters.http.router",
            "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}],
    }
    if access_log:
        cfg["access_log"] = [json.loads(json_format.MessageToJson(
            denied_or_failed_access_log(CP_CLUSTER, access_log)))]
    return {"name": "envoy.filters.network.http_connection_manager", "typed_config": cfg}


def bootstrap(node_id: str, service: str, cp_port: int, listeners: list[dict[str, Any]],
              clusters: list[dict[str, Any]], *, telemetry: bool,
              flush_ms: int = 1000) -> dict[str, Any]:
    b: dict[str, Any] = {
        "node": {"id": node_id, "cluster": service},
        "admin": {"address": _addr(free_port())},
        "static_resources": {"listeners": listeners,
                             "clusters": clusters + [static_cluster(CP_CLUSTER, cp_port, http2=True)]},
    }
    if telemetry:
        b.update(bootstrap_stats_sink(CP_CLUSTER, flush_ms))
    return b


def orders_bootstrap(ca: MeshCa, rbac: dict[str, Any], *, cp_port: int,
                     inbound_port: int, app_port: int) -> dict[str, Any]:
    """orders' inbound: mTLS required, then RBAC compiled from real policies (`make_store`)."""
    cert, key = ca.leaf(f"spiffe://{TD}/svc/orders")
    tls = {"@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
           "require_client_certificate": True,
           "common_tls_context": _common_tls(cert, key, ca.pem, {"prefix": f"spiffe://{TD}/"})}
    listener = {"name": "inbound", "address": _addr(inbound_port), "filter_chains": [{
        "transport_socket": {"name": "envoy.transport_sockets.tls", "typed_config": tls},
        "filters": [hcm("inbound", "local_app", rbac["filters"], access_log="orders-inbound",
                        per_route=rbac["per_route"])]}]}
    return bootstrap("orders-1", "orders", cp_port, [listener],
                     [static_cluster("local_app", app_port)], telemetry=True)


def web_bootstrap(ca: MeshCa, *, cp_port: int, outbound_port: int, orders_port: int) -> dict[str, Any]:
    cert, key = ca.leaf(f"spiffe://{TD}/svc/web")
    up_tls = {"sni": "orders",
              "common_tls_context": _common_tls(cert, key, ca.pem, {"exact": f"spiffe://{TD}/svc/orders"})}
    listener = {"name": "outbound", "address": _addr(outbound_port), "filter_chains": [{
        "filters": [hcm("outbound", "svc/orders", [], access_log="web-outbound")]}]}
    return bootstrap("web-1", "web", cp_port, [listener],
                     [static_cluster("svc/orders", orders_port, tls=up_tls)], telemetry=True)


# ---- the running mesh -----------------------------------------------------------------------

class TwoSidecars:
    """orders app + orders-1 + web-1 Envoys, pointed at a telemetry server's gRPC port."""

    def __init__(self, workdir: Path, cp_port: int, rbac: dict[str, Any]) -> None:
        self.ca = MeshCa(TD)
        self.app = App("orders")
        self.inbound_port = free_port()
        self.outbound_port = free_port()
        self.orders = EnvoyProcess(orders_bootstrap(self.ca, rbac, cp_port=cp_port,
                                                    inbound_port=self.inbound_port,
                                                    app_port=self.app.port), workdir, "orders-1")
        self.web = EnvoyProcess(web_bootstrap(self.ca, cp_port=cp_port,
                                              outbound_port=self.outbound_port,
                                              orders_port=self.inbound_port), workdir, "web-1")

    def start(self) -> TwoSidecars:
        self.app.start()
        self.orders.start()
        self.web.start()
        self.orders.wait_live()
        self.web.wait_live()
        return self

    def stop(self) -> None:
        for p in (self.web, self.orders):
            p.stop()
        self.app.stop()

    def send(self, path: str, n: int = 1) -> list[int]:
        """n GETs through web's outbound listener on one keep-alive connection."""
        codes = []
        conn = http.client.HTTPConnection("127.0.0.1", self.outbound_port, timeout=10)
        try:
            for _ in range(n):
                conn.request("GET", path, headers={"host": "orders"})
                resp = conn.getresponse()
                resp.read()
                codes.append(resp.status)
        finally:
            conn.close()
        return codes

    def failed_handshake(self) -> None:
        """A TLS client without a certificate: orders' inbound must refuse it."""
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        with socket.create_connection(("127.0.0.1", self.inbound_port), timeout=5) as raw:
            try:
                with ctx.wrap_socket(raw) as tls:
                    tls.sendall(b"GET / HTTP/1.1\r\nhost: orders\r\n\r\n")
                    data = tls.recv(100)
            except (ssl.SSLError, ConnectionError):
                return
        raise AssertionError(f"the handshake without a client certificate succeeded: {data!r}")


def make_store(db: Path) -> dict[str, Any]:
    """A mesh with services web, orders, billing and POLICIES, made with the CLI;
    returns orders' inbound RBAC compiled from it (Envoy JSON): the HCM filters, and
    the virtual host's per-filter config when the compiler puts the rules there."""
    from meshgate.policy import compile as policy_compile
    from meshgate.store.db import open_store
    from meshgate.store.world import load_world

    steps = [["init", "--trust-domain", TD],
             ["service", "add", "orders", "--protocol", "http", "--port", "8080"],
             ["service", "add", "web", "--protocol", "http", "--port", "8080"],
             ["service", "add", "billing", "--protocol", "grpc", "--port", "9090"]]
    steps += [["policy", *p] for p in POLICIES]
    for args in steps:
        cli(db, *args)
    engine = open_store(str(db))
    try:
        world = load_world(engine)
    finally:
        engine.dispose()
    filters = [json.loads(json_format.MessageToJson(f))
               for f in policy_compile.http_rbac_filters(world, "orders")]
    per_route_fn = getattr(policy_compile, "http_rbac_per_route", None)
    per_route = {name: json.loads(json_format.MessageToJson(cfg))
                 for name, cfg in (per_route_fn(world, "orders") if per_route_fn else {}).items()}
    return {"filters": filters, "per_route": per_route}


# ---- the whole product: meshgate serve + bootstrapped Envoys ---------------------------------

SERVE_TRAFFIC: list[tuple[str, int, int]] = [  # sent web -> orders through web-1's outbound
    ("/anything/a", 200, 12),
    ("/status/503", 503, 3),
    ("/anything/admin/x", 403, 4),   # deny rule "no-admin"
    ("/nope", 403, 2),               # no allow rule: default deny
    ("/anything/watched", 200, 2),   # passes; audit rule "watch" would deny it
]


class Stack(Fleet):
    """`meshgate serve` + web-1 and orders-1, and the statuses of SERVE_TRAFFIC as sent."""

    outbound: int  # web-1's outbound listener
    sent: list[int]

    @property
    def admin(self) -> str:
        return f"127.0.0.1:{self.server.admin}"

    def get(self, path: str) -> Any:
        """A page of the admin port: JSON for /api/..., else text."""
        with urllib.request.urlopen(f"http://{self.admin}{path}", timeout=5) as r:  # noqa: S310
            body = r.read()
        return json.loads(body) if path.startswith("/api/") else body.decode()


@contextmanager
def serve_stack(work: Path) -> Iterator[Stack]:
    """`meshgate serve` (subprocess, TLS) + web-1 and orders-1 Envoys from `proxy bootstrap`,
    services web, orders, billing, policies made with the CLI; SERVE_TRAFFIC sent."""
    with Stack(work / "mesh.db", work) as s:
        s.cli("init", "--trust-domain", TD)  # default deny
        for svc, port in (("web", "80"), ("orders", "8080"), ("billing", "9090")):
            s.cli("service", "add", svc, "--port", port)
        s.cli("policy", "allow", "--from", "web", "--to", "orders", "--path-prefix", "/anything",
              "--path-prefix", "/status", "--id", "web-reads-orders")
        s.cli("policy", "deny", "--from", "*", "--to", "orders", "--path-prefix", "/anything/admin",
              "--id", "no-admin")
        s.cli("policy", "deny", "--from", "*", "--to", "orders", "--path-prefix", "/anything/watched",
              "--audit", "--id", "watch")
        s.outbound, orders_in = free_port(), free_port()
        tokens = {name: s.sidecar(name, svc, port)
                  for name, svc, port in (("web-1", "web", s.outbound), ("orders-1", "orders", free_port()))}
        s.instance("orders", orders_in, s.app("orders").port, proxy="orders-1")
        s.serve()
        boots = {name: s.bootstrap(name, token) for name, token in tokens.items()}
        for boot in boots.values():
            boot["stats_flush_interval"] = "1s"  # the default is 5 s: tests need not wait
        s.start_envoys(boots)
        wait_for("a routed request", lambda: get(s.outbound, "orders", "/anything/warmup")[0] == 200)
        s.sent = [get(s.outbound, "orders", path)[0] for path, _, n in SERVE_TRAFFIC for _ in range(n)]
        yield s
