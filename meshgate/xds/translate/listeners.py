"""Listeners: a sidecar's inbound (mTLS) side, its outbound HTTP port, and local TCP ports."""

from __future__ import annotations

from collections.abc import Sequence

from envoy.config.core.v3 import base_pb2
from envoy.config.listener.v3 import listener_components_pb2 as lc
from envoy.config.listener.v3 import listener_pb2
from envoy.extensions.filters.listener.tls_inspector.v3 import tls_inspector_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2

from meshgate.model import Instance, Mesh, Service
from meshgate.validation import is_ip
from meshgate.xds import types
from meshgate.xds.translate import tls
from meshgate.xds.translate.common import pack, socket_address
from meshgate.xds.translate.generated import Generated, Options
from meshgate.xds.translate.hcm import http_manager
from meshgate.xds.translate.health import app_unavailable_reply, inbound_health_filter
from meshgate.xds.translate.limits import limit_listener_buffer
from meshgate.xds.translate.names import (
    INBOUND_LISTENER,
    INBOUND_ROUTE,
    LOCAL_APP_CLUSTER,
    OUTBOUND_LISTENER,
    OUTBOUND_ROUTE,
    instance_source,
    service_cluster_name,
    tcp_listener_name,
)

TCP_PROXY_FILTER = "envoy.filters.network.tcp_proxy"
TLS_INSPECTOR = "envoy.filters.listener.tls_inspector"
LOOPBACK = "127.0.0.1"


def tcp_proxy(stat_prefix: str, cluster: str, options: Options) -> lc.Filter:
    proxy = tcp_proxy_pb2.TcpProxy(
        stat_prefix=stat_prefix, cluster=cluster, access_log=list(options.tcp_access_log)
    )
    return lc.Filter(name=TCP_PROXY_FILTER, typed_config=pack(proxy))


def inbound_listener(
    mesh: Mesh,
    service: Service,
    instance: Instance,
    *,
    http_filters: Sequence[hcm_pb2.HttpFilter] = (),
    network_filters: Sequence[lc.Filter] = (),
    options: Options,
    sources: tuple[str, ...] = (),
) -> Generated:
    """`inbound`: accepts mesh callers on the instance's inbound port and passes
    what RBAC allows to `local-app`.

    strict mTLS: one TLS filter chain (client certificate required).
    permissive: the TLS inspector picks a TLS chain or a plaintext chain, so
    callers without a sidecar keep working while a mesh is being adopted; RBAC
    runs on both (an allow rule naming a mesh identity never matches plaintext).
    """
    if service.protocol == "tcp":
        filters = [*network_filters, tcp_proxy("inbound", LOCAL_APP_CLUSTER, options)]
        alpn: tuple[str, ...] = ()
    else:
        filters = [
            http_manager(
                "inbound",
                rds_name=INBOUND_ROUTE,  # the rules ride on the route (routes.inbound_route_config)
                # the health filter answers callers' health checks before RBAC (health.py)
                http_filters=[inbound_health_filter(), *http_filters],
                access_log=options.http_access_log,
                forward_client_identity=True,
                local_reply=app_unavailable_reply(),  # callers may retry these elsewhere
            )
        ]
        alpn = ("h2", "http/1.1")
    tls_socket = tls.transport_socket(tls.mesh_downstream_context(mesh.trust_domain, alpn=alpn))
    bind = instance.address if is_ip(instance.address) else "0.0.0.0"
    listener = listener_pb2.Listener(
        name=INBOUND_LISTENER,
        address=socket_address(bind, instance.inbound_port),
        traffic_direction=base_pb2.INBOUND,
    )
    limit_listener_buffer(listener)  # callers' connections (limits.py)
    if mesh.mtls_mode == "permissive":
        listener.listener_filters.append(
            lc.ListenerFilter(name=TLS_INSPECTOR, typed_config=pack(tls_inspector_pb2.TlsInspector()))
        )
        listener.filter_chains.extend(
            [
                lc.FilterChain(
                    name="mtls",
                    filter_chain_match=lc.FilterChainMatch(transport_protocol="tls"),
                    filters=filters,
                    transport_socket=tls_socket,
                ),
                lc.FilterChain(
                    name="plaintext",
                    filter_chain_match=lc.FilterChainMatch(transport_protocol="raw_buffer"),
                    filters=filters,
                ),
            ]
        )
    else:
        listener.filter_chains.append(lc.FilterChain(name="mtls", filters=filters, transport_socket=tls_socket))
    own = (f"service:{service.name}", instance_source(instance.address, instance.inbound_port))
    return Generated(
        types.LISTENER,
        INBOUND_LISTENER,
        listener,
        sources=own + sources,
        refs=((types.CLUSTER, LOCAL_APP_CLUSTER), (types.SECRET, tls.SECRET_IDENTITY), (types.SECRET, tls.SECRET_TRUST))
        + (((types.ROUTE, INBOUND_ROUTE),) if service.protocol != "tcp" else ()),
    )


def outbound_listener(port: int, options: Options) -> Generated:
    """`outbound`: the app's local HTTP port into the mesh; routes come from RDS `outbound`."""
    listener = listener_pb2.Listener(
        name=OUTBOUND_LISTENER,
        address=socket_address(LOOPBACK, port),
        traffic_direction=base_pb2.OUTBOUND,
        filter_chains=[
            lc.FilterChain(
                filters=[http_manager("outbound", rds_name=OUTBOUND_ROUTE, access_log=options.http_access_log)]
            )
        ],
    )
    return Generated(types.LISTENER, OUTBOUND_LISTENER, listener, refs=((types.ROUTE, OUTBOUND_ROUTE),))


def tcp_outbound_listener(service: Service, options: Options) -> Generated:
    """`outbound-tcp/<svc>`: 127.0.0.1:<service port> straight to `svc/<svc>`."""
    name = tcp_listener_name(service.name)
    cluster = service_cluster_name(service.name)
    listener = listener_pb2.Listener(
        name=name,
        address=socket_address(LOOPBACK, service.port),
        traffic_direction=base_pb2.OUTBOUND,
        filter_chains=[lc.FilterChain(filters=[tcp_proxy(f"outbound_tcp_{service.name}", cluster, options)])],
    )
    return Generated(
        types.LISTENER, name, listener, sources=(f"service:{service.name}",), refs=((types.CLUSTER, cluster),)
    )
