"""A sidecar's configuration, as small generators over one World.

What is the sidecar's own (listeners, its outbound routes, `local-app`) is
built here; what only depends on an upstream service (`svc/<name>` cluster and
endpoints) is built by `service_parts` once per service and shared by every
caller, so `plan.upstreams` lists names instead of copies.
"""

from __future__ import annotations

from meshgate.model import Proxy
from meshgate.policy import compile as policy_compile
from meshgate.xds.translate.clusters import local_app_cluster, service_cluster, service_dns_cluster
from meshgate.xds.translate.endpoints import needs_dns, service_endpoints
from meshgate.xds.translate.generated import Generated, Options
from meshgate.xds.translate.index import WorldIndex
from meshgate.xds.translate.listeners import (
    inbound_listener,
    outbound_listener,
    tcp_outbound_listener,
)
from meshgate.xds.translate.names import LOCAL_APP_CLUSTER
from meshgate.xds.translate.plan import Plan, run
from meshgate.xds.translate.routes import inbound_route_config, outbound_route_config


def sidecar_plan(index: WorldIndex, proxy: Proxy, options: Options) -> Plan:
    world = index.world
    service = world.services.get(proxy.service or "")
    if service is None:  # the store forbids it; a World built by hand might not
        return Plan(own=(), upstreams=())
    own: list[Generated] = []
    instance = index.instance_by_proxy.get(proxy.name)
    if instance is not None:
        # Until an instance names this sidecar (CLI `--proxy`, or self-registration
        # when it connects) there is no inbound side: nothing to listen for.
        own.append(run(proxy, "local-app cluster", local_app_cluster, service, instance))
        own.extend(run(proxy, "inbound listener", _inbound, index, service, instance, options))
    upstreams = sorted(index.reachable(service.name))
    upstream_services = [world.services[u] for u in upstreams if u in world.services]
    memo = options.memo_key()
    if memo is None:  # options of this proxy alone (its telemetry key): nothing to share
        own.append(run(proxy, "outbound listener", outbound_listener, proxy.outbound_port, options))
    else:
        own.append(run(proxy, "outbound listener", index.memo, ("outbound-listener", proxy.outbound_port, memo),
                       outbound_listener, proxy.outbound_port, options))
    own.append(run(proxy, "outbound routes", outbound_route_config, upstream_services))
    for s in upstream_services:
        if s.protocol == "tcp":
            own.append(run(proxy, f"tcp listener for {s.name}", tcp_outbound_listener, s, options))
    return Plan(own=tuple(own), upstreams=tuple(s.name for s in upstream_services))


def _inbound(index: WorldIndex, service, instance, options: Options) -> list[Generated]:  # type: ignore[no-untyped-def]
    """The inbound listener, and for HTTP/gRPC the `inbound` route carrying the RBAC rules.

    HTTP rules live on the route so a policy change never touches the listener
    (see meshgate.policy.compile); the listener's RBAC filters are fixed.
    """
    scoped = index.target_world(service.name)
    rules = policy_compile.rule_sources(scoped, service.name)
    if service.protocol == "tcp":
        net = policy_compile.network_rbac_filters(scoped, service.name)
        return [inbound_listener(index.world.mesh, service, instance, network_filters=net,
                                 options=options, sources=rules)]
    http = policy_compile.http_rbac_filters(scoped, service.name)
    route = inbound_route_config(
        LOCAL_APP_CLUSTER, service.protocol == "grpc",
        policy_compile.http_rbac_per_route(scoped, service.name), rules,
    )
    return [inbound_listener(index.world.mesh, service, instance, http_filters=http, options=options), route]


def service_parts(index: WorldIndex, service_name: str) -> tuple[Generated, ...]:
    """`svc/<name>` cluster and endpoints: depend only on the mesh, the service and its
    instances. A service with an instance addressed by a host name gets one resource,
    a DNS cluster with its endpoints inline (EDS takes IP addresses only)."""
    service = index.world.services[service_name]
    instances = index.instances_of(service_name)
    if needs_dns(instances):
        return (service_dns_cluster(index.world.mesh, service, instances),)
    return (
        service_cluster(index.world.mesh, service),
        service_endpoints(service_name, instances),
    )
