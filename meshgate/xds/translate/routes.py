"""Route configurations: the sidecar's outbound routing by Host, and the inbound route."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from envoy.config.core.v3 import base_pb2
from envoy.config.route.v3 import route_components_pb2 as rc
from envoy.config.route.v3 import route_pb2
from google.protobuf import any_pb2

from meshgate.model import Service
from meshgate.xds import types
from meshgate.xds.translate.common import seconds
from meshgate.xds.translate.generated import Generated
from meshgate.xds.translate.health import APP_UNAVAILABLE_HEADER, safe_retry_policy
from meshgate.xds.translate.names import INBOUND_ROUTE, OUTBOUND_ROUTE, service_cluster_name

NO_ROUTE_BODY = (
    "meshgate: no route: the Host header names no service this sidecar may call "
    "(unknown service, or not allowed by policy)\n"
)


def _route_to(cluster: str, grpc: bool, retry: bool = False) -> rc.Route:
    action = rc.RouteAction(cluster=cluster)
    if retry:  # to another instance, only what never reached an app (health.py)
        action.retry_policy.CopyFrom(safe_retry_policy())
    if grpc:
        action.timeout.CopyFrom(seconds(0))  # streams may live long: no route timeout
    return rc.Route(match=rc.RouteMatch(prefix="/"), route=action)


def service_virtual_host(service: Service) -> rc.VirtualHost:
    """Requests for `name` or `name:port` go to `svc/<name>`."""
    return rc.VirtualHost(
        name=service.name,
        domains=[service.name, f"{service.name}:{service.port}"],
        routes=[_route_to(service_cluster_name(service.name), service.protocol == "grpc", retry=True)],
        # read by the retry policy, then dropped: an app never sees it, so cannot relay it (health.py)
        response_headers_to_remove=[APP_UNAVAILABLE_HEADER],
    )


def no_route_virtual_host(body: str = NO_ROUTE_BODY) -> rc.VirtualHost:
    """The catch-all virtual host: 404 with `body` for a host no other virtual host names."""
    return rc.VirtualHost(
        name="no-route",
        domains=["*"],
        routes=[
            rc.Route(
                match=rc.RouteMatch(prefix="/"),
                direct_response=rc.DirectResponseAction(
                    status=404, body=base_pb2.DataSource(inline_string=body)
                ),
            )
        ],
    )


def outbound_route_config(upstreams: Iterable[Service]) -> Generated:
    """`outbound`: one virtual host per HTTP/gRPC service the sidecar may call."""
    http = sorted((s for s in upstreams if s.protocol != "tcp"), key=lambda s: s.name)
    config = route_pb2.RouteConfiguration(
        name=OUTBOUND_ROUTE,
        virtual_hosts=[service_virtual_host(s) for s in http] + [no_route_virtual_host()],
    )
    return Generated(
        types.ROUTE, OUTBOUND_ROUTE, config, sources=tuple(f"service:{s.name}" for s in http)
    )


def local_app_route_config(cluster: str, grpc: bool,
                           per_filter: Mapping[str, any_pb2.Any] | None = None) -> route_pb2.RouteConfiguration:
    """The inbound routes: everything to the local app. `per_filter` is the RBAC
    rules (meshgate.policy.compile.http_rbac_per_route) for the inbound HCM's filters."""
    vhost = rc.VirtualHost(name="local-app", domains=["*"], routes=[_route_to(cluster, grpc)])
    for name, config in (per_filter or {}).items():
        vhost.typed_per_filter_config[name].CopyFrom(config)
    return route_pb2.RouteConfiguration(name=INBOUND_ROUTE, virtual_hosts=[vhost])


def inbound_route_config(cluster: str, grpc: bool, per_filter: Mapping[str, any_pb2.Any],
                         sources: tuple[str, ...]) -> Generated:
    """RDS `inbound`: policy changes travel here, so they reach open connections at once
    (a listener change would leave them on the draining old listener)."""
    return Generated(
        types.ROUTE, INBOUND_ROUTE, local_app_route_config(cluster, grpc, per_filter), sources=sources
    )
