"""Envoy bootstraps for the data-plane benchmarks: a direct-response upstream, plain
HTTP proxies, and a pair of plain proxies with mutual TLS between them.

    upstream_bootstrap(port)                    # answers 200 "ok" itself
    plain_bootstrap("p", port, to_port)         # HTTP in, HTTP to 127.0.0.1:to_port
    plain_bootstrap("a", port, out, "backend")  # the same, Host rewritten: an app calling `backend`
    a, b = tls_pair("t", port, inner, to_port)  # a -mTLS-> b -> to_port
"""

from __future__ import annotations

import time
from typing import Any

from meshgate.fleet.envoy import free_port


def _addr(port: int) -> dict[str, Any]:
    return {"socket_address": {"address": "127.0.0.1", "port_value": port}}


def _hcm(prefix: str, route: dict[str, Any]) -> dict[str, Any]:
    return {"name": "envoy.filters.network.http_connection_manager", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": prefix,
        "route_config": {"name": prefix, "virtual_hosts": [{"name": "all", "domains": ["*"], "routes": [route]}]},
        "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}],
    }}


def upstream_bootstrap(port: int) -> dict[str, Any]:
    """The upstream: an Envoy answering 200 "ok" itself."""
    route = {"match": {"prefix": "/"}, "direct_response": {"status": 200, "body": {"inline_string": "ok\n"}}}
    return {"node": {"id": "upstream", "cluster": "upstream"}, "admin": {"address": _addr(free_port())},
            "static_resources": {"listeners": [{"name": "upstream", "address": _addr(port),
                                                "filter_chains": [{"filters": [_hcm("upstream", route)]}]}]}}


def plain_bootstrap(name: str, port: int, to_port: int, host: str | None = None) -> dict[str, Any]:
    """A plain Envoy: one HTTP listener routing everything to one static cluster
    (with `host`: the Host header rewritten to it, as an app calling another service does)."""
    route: dict[str, Any] = {"match": {"prefix": "/"}, "route": {"cluster": "next"}}
    if host:
        route["route"]["host_rewrite_literal"] = host
    cluster = {"name": "next", "type": "STATIC", "connect_timeout": "1s", "load_assignment": {
        "cluster_name": "next", "endpoints": [{"lb_endpoints": [{"endpoint": {"address": _addr(to_port)}}]}]}}
    return {"node": {"id": name, "cluster": name}, "admin": {"address": _addr(free_port())},
            "static_resources": {"listeners": [{"name": "http", "address": _addr(port),
                                                "filter_chains": [{"filters": [_hcm(name, route)]}]}],
                                 "clusters": [cluster]}}


def _tls_common(cert: str, key: str, ca: str, san: str | None) -> dict[str, Any]:
    validation: dict[str, Any] = {"trusted_ca": {"inline_string": ca}}
    if san:
        validation["match_typed_subject_alt_names"] = [{"san_type": "URI", "matcher": {"exact": san}}]
    return {"tls_params": {"tls_minimum_protocol_version": "TLSv1_2", "tls_maximum_protocol_version": "TLSv1_3"},
            "tls_certificates": [{"certificate_chain": {"inline_string": cert},
                                  "private_key": {"inline_string": key}}],
            "validation_context": validation}


def tls_pair(name: str, port: int, inner_port: int, to_port: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """Two plain Envoys with mutual TLS between them: `name`-a (HTTP in, TLS client out)
    and `name`-b (TLS server, client certificate required, HTTP to `to_port`)."""
    from meshgate.ca import authority

    now = time.time()
    root, root_key = authority.create_root("bench.local", now)
    ca = authority.cert_pem(root)

    def leaf(who: str) -> tuple[str, str]:
        k = authority.new_key()
        c = authority.issue_leaf(root, root_key, k.public_key(), spiffe_id=f"spiffe://bench.local/{who}",
                                 now=now, ttl_seconds=86400)
        return authority.cert_pem(c), authority.key_pem(k)

    (ca_cert, ca_key), (cb_cert, cb_key) = leaf("a"), leaf("b")
    a = plain_bootstrap(f"{name}-a", port, inner_port)
    a["static_resources"]["clusters"][0]["transport_socket"] = {
        "name": "envoy.transport_sockets.tls", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
            "common_tls_context": _tls_common(ca_cert, ca_key, ca, "spiffe://bench.local/b")}}
    b = plain_bootstrap(f"{name}-b", inner_port, to_port)
    b["static_resources"]["listeners"][0]["filter_chains"][0]["transport_socket"] = {
        "name": "envoy.transport_sockets.tls", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
            "common_tls_context": _tls_common(cb_cert, cb_key, ca, None),
            "require_client_certificate": True}}
    return a, b
