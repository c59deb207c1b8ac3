"""Endpoints: a service's healthy instances (their sidecars' inbound mTLS ports)."""

from __future__ import annotations

from collections.abc import Iterable

from envoy.config.core.v3 import health_check_pb2
from envoy.config.endpoint.v3 import endpoint_components_pb2 as ec
from envoy.config.endpoint.v3 import endpoint_pb2
from google.protobuf import wrappers_pb2

from meshgate.model import Instance
from meshgate.xds import types
from meshgate.xds.translate.common import socket_address
from meshgate.xds.translate.generated import Generated
from meshgate.xds.translate.names import instance_source, service_cluster_name


def service_endpoints(service: str, instances: Iterable[Instance]) -> Generated:
    """`svc/<name>`'s ClusterLoadAssignment. Unhealthy instances are left out.

    One locality with an explicit weight: Envoy does not need it, but gRPC's
    proxyless xDS client drops localities without one (ENVOY_NOTES.md).
    """
    name = service_cluster_name(service)
    healthy = sorted((i for i in instances if i.healthy), key=lambda i: (i.address, i.inbound_port))
    lb = [
        ec.LbEndpoint(
            endpoint=ec.Endpoint(address=socket_address(i.address, i.inbound_port)),
            health_status=health_check_pb2.HEALTHY,
            load_balancing_weight=wrappers_pb2.UInt32Value(value=i.weight),
        )
        for i in healthy
    ]
    cla = endpoint_pb2.ClusterLoadAssignment(
        cluster_name=name,
        endpoints=[
            ec.LocalityLbEndpoints(
                lb_endpoints=lb, load_balancing_weight=wrappers_pb2.UInt32Value(value=1)
            )
        ]
        if lb
        else [],
    )
    sources = (f"service:{service}",) + tuple(instance_source(i.address, i.inbound_port) for i in healthy)
    return Generated(types.ENDPOINT, name, cla, sources=sources)
