"""Envoy bootstraps for meshgate proxies: everything an Envoy needs to join the mesh.

    boot = render_bootstrap(proxy, token, servers=["127.0.0.1:18000"], admin_port=9901,
                            xds_ca_pem=roots, xds_san=control_plane_identity("example.org"))

- node.id is the proxy's name (the server checks it against the token);
  node.cluster its service (sidecars) or its own name (edge gateways);
  node.metadata["meshgate"] describes its instance, for self-registration;
- ADS over gRPC (delta by default, state-of-the-world with `delta=False`) to
  one or more control-plane addresses (one Envoy cluster, several endpoints);
- the join token as gRPC metadata `authorization: Bearer <token>`;
- `set_node_on_first_message_only` (else every request carries a 61 KB node)
  and a 0.1-0.5 s reconnect back-off (ENVOY_NOTES.md);
- the admin interface on 127.0.0.1 only;
- a cap on downstream connections (`MAX_DOWNSTREAM_CONNECTIONS`, Envoy's
  overload manager; without one Envoy warns at start that nothing limits them);
- TLS to the control plane when `xds_ca_pem` is given: the server's
  certificate must chain to those roots and carry the URI SAN `xds_san`.

Returns a plain dict (Envoy's JSON form), ready for json.dumps.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from meshgate.fleet.errors import FleetError
from meshgate.model import Instance, Proxy
from meshgate.validation import is_hostname, is_ip, mapped_ipv4, mapped_message, split_host_port

XDS_CLUSTER = "meshgate-xds"
CONTROL_PLANE_PATH = "/control-plane"  # the SPIFFE path of the server certificate (meshgate.ca.identity)
RETRY_BASE = "0.1s"
RETRY_MAX = "0.5s"
TLS_SOCKET = "envoy.transport_sockets.tls"
HTTP_PROTOCOL_OPTIONS = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
MAX_DOWNSTREAM_CONNECTIONS = 50_000
DOWNSTREAM_CONNECTIONS = "envoy.resource_monitors.global_downstream_max_connections"


def control_plane_identity(trust_domain: str) -> str:
    return f"spiffe://{trust_domain}{CONTROL_PLANE_PATH}"


def _ads(api_type: str, token: str) -> dict[str, Any]:
    return {
        "api_type": api_type,
        "transport_api_version": "V3",
        "set_node_on_first_message_only": True,
        "grpc_services": [
            {
                "envoy_grpc": {
                    "cluster_name": XDS_CLUSTER,
                    "retry_policy": {"retry_back_off": {"base_interval": RETRY_BASE, "max_interval": RETRY_MAX}},
                },
                "initial_metadata": [{"key": "authorization", "value": f"Bearer {token}"}],
            }
        ],
    }


def _servers(servers: Sequence[str]) -> tuple[list[tuple[str, int]], bool]:
    if not servers:
        raise FleetError("a bootstrap needs at least one control-plane address (--server HOST:PORT)")
    parsed: list[tuple[str, int]] = []
    bad = []
    for s in servers:
        hp = split_host_port(s)
        if hp is None or not (is_ip(hp[0]) or is_hostname(hp[0])):
            bad.append(s)
        elif mapped_ipv4(hp[0]) is not None:  # the xDS cluster could never connect
            raise FleetError("--server: " + mapped_message(s, f"{mapped_ipv4(hp[0])}:{hp[1]}"))
        else:
            parsed.append(hp)
    if bad:
        raise FleetError(f"--server: not HOST:PORT: {', '.join(bad)}")
    return parsed, any(not is_ip(h) for h, _ in parsed)


def _xds_cluster(servers: Sequence[str], xds_ca_pem: str | None, xds_san: str | None) -> dict[str, Any]:
    parsed, dns = _servers(servers)
    cluster: dict[str, Any] = {
        "name": XDS_CLUSTER,
        "type": "STRICT_DNS" if dns else "STATIC",
        "connect_timeout": "1s",
        "load_assignment": {
            "cluster_name": XDS_CLUSTER,
            "endpoints": [
                {
                    "lb_endpoints": [
                        {"endpoint": {"address": {"socket_address": {"address": h, "port_value": p}}}}
                        for h, p in parsed
                    ]
                }
            ],
        },
        "typed_extension_protocol_options": {
            HTTP_PROTOCOL_OPTIONS: {
                "@type": "type.googleapis.com/" + HTTP_PROTOCOL_OPTIONS,
                "explicit_http_config": {
                    # keepalive: a control plane that vanished is noticed in seconds
                    "http2_protocol_options": {
                        "connection_keepalive": {"interval": "30s", "timeout": "5s"}
                    }
                },
            }
        },
    }
    if xds_ca_pem is not None:
        if not xds_san:
            raise FleetError("TLS to the control plane needs the SAN to check (xds_san)")
        host = parsed[0][0]
        tls: dict[str, Any] = {
            "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
            "common_tls_context": {
                "tls_params": {"tls_minimum_protocol_version": "TLSv1_2", "tls_maximum_protocol_version": "TLSv1_3"},
                "alpn_protocols": ["h2"],
                "validation_context": {
                    "trusted_ca": {"inline_string": xds_ca_pem},
                    "match_typed_subject_alt_names": [
                        {"san_type": "URI", "matcher": {"exact": xds_san}}
                    ],
                },
            },
        }
        if not is_ip(host):
            tls["sni"] = host
        cluster["transport_socket"] = {"name": TLS_SOCKET, "typed_config": tls}
    return cluster


def node_metadata(proxy: Proxy, instance: Instance | None) -> dict[str, Any]:
    """What the proxy tells the server about itself when it connects."""
    meta: dict[str, Any] = {"kind": proxy.kind}
    if proxy.kind == "sidecar":
        meta["service"] = proxy.service
        if instance is not None:
            meta["instance"] = {
                "address": instance.address,
                "inbound_port": instance.inbound_port,
                "app_port": instance.app_port,
            }
    elif proxy.listen:
        meta["listen"] = proxy.listen
    return {"meshgate": meta}


def render_bootstrap(
    proxy: Proxy,
    token: str,
    *,
    servers: Sequence[str],
    admin_port: int,
    xds_ca_pem: str | None,
    xds_san: str | None = None,
    delta: bool = True,
    instance: Instance | None = None,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """A complete Envoy bootstrap for `proxy` (see the module doc). `xds_ca_pem=None`
    means plaintext to the control plane (loopback development servers only).
    `extra` is merged at the top level (e.g. telemetry's `stats_sinks`)."""
    if not 1 <= admin_port <= 65535:
        raise FleetError(f"--admin-port: {admin_port} is not a port (1-65535)")
    if not token:
        raise FleetError("a bootstrap needs the proxy's join token")
    api = "DELTA_GRPC" if delta else "GRPC"
    ads_source = {"ads": {}, "resource_api_version": "V3"}
    boot: dict[str, Any] = {
        "node": {
            "id": proxy.name,
            "cluster": proxy.service if proxy.kind == "sidecar" and proxy.service else proxy.name,
            "metadata": node_metadata(proxy, instance),
        },
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin_port}}},
        "dynamic_resources": {
            "ads_config": _ads(api, token),
            "cds_config": dict(ads_source),
            "lds_config": dict(ads_source),
        },
        "static_resources": {"clusters": [_xds_cluster(servers, xds_ca_pem, xds_san)]},
        "overload_manager": {
            "resource_monitors": [{
                "name": DOWNSTREAM_CONNECTIONS,
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.resource_monitors.downstream_connections.v3"
                             ".DownstreamConnectionsConfig",
                    "max_active_downstream_connections": MAX_DOWNSTREAM_CONNECTIONS,
                },
            }]
        },
    }
    for key, value in (extra or {}).items():
        if isinstance(value, list) and isinstance(boot.get(key), list):
            boot[key] = [*boot[key], *value]
        elif isinstance(value, dict) and isinstance(boot.get(key), dict):
            boot[key] = {**boot[key], **value}
        else:
            boot[key] = value
    return boot
