"""Clusters: one cluster per upstream service (shared by every caller) and `local-app`.

A service's cluster takes its endpoints over EDS, or, when an instance is
addressed by a host name (EDS takes IP addresses only), resolves them itself:
a strict DNS cluster with the assignment inline.
"""

from __future__ import annotations

from collections.abc import Iterable

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.endpoint.v3 import endpoint_components_pb2, endpoint_pb2
from envoy.extensions.clusters.common.dns.v3 import dns_pb2
from envoy.extensions.clusters.dns.v3 import dns_cluster_pb2

from meshgate.model import Instance, Mesh, Service
from meshgate.xds import types
from meshgate.xds.translate import tls
from meshgate.xds.translate.common import (
    ads_source,
    http2_upstream_options,
    pack,
    seconds,
    socket_address,
)
from meshgate.xds.translate.endpoints import load_assignment
from meshgate.xds.translate.generated import Generated
from meshgate.xds.translate.health import (
    local_app_health_checks,
    outlier_detection,
    service_health_checks,
)
from meshgate.xds.translate.names import (
    LOCAL_APP_CLUSTER,
    instance_source,
    service_cluster_name,
)

CONNECT_TIMEOUT_S = 1.0
LOCAL_APP_HOST = "127.0.0.1"
DNS_CLUSTER = "envoy.clusters.dns"
SECRET_REFS = ((types.SECRET, tls.SECRET_IDENTITY), (types.SECRET, tls.SECRET_TRUST))


def _mesh_cluster(mesh: Mesh, service: Service) -> cluster_pb2.Cluster:
    """What every `svc/<name>` cluster has: mTLS to the upstream's sidecars, health."""
    grpc = service.protocol == "grpc"
    upstream = tls.mesh_upstream_context(
        mesh.service_identity(service.name), alpn=("h2",) if grpc else ()
    )
    cluster = cluster_pb2.Cluster(
        name=service_cluster_name(service.name),
        connect_timeout=seconds(CONNECT_TIMEOUT_S),
        lb_policy=cluster_pb2.Cluster.ROUND_ROBIN,
        transport_socket=tls.transport_socket(upstream),
        outlier_detection=outlier_detection(),
    )
    if service.protocol != "tcp":  # health.py: tcp services rely on outlier detection
        cluster.health_checks.extend(service_health_checks(service.name, grpc))
    if grpc:
        for k, v in http2_upstream_options().items():
            cluster.typed_extension_protocol_options[k].CopyFrom(v)
    return cluster


def service_cluster(mesh: Mesh, service: Service) -> Generated:
    """`svc/<name>`: endpoints over EDS, mTLS to the upstream sidecars.

    Depends only on the mesh and the service, never on the caller, so it is
    the same bytes in every proxy that calls it.
    """
    cluster = _mesh_cluster(mesh, service)
    cluster.type = cluster_pb2.Cluster.EDS
    cluster.eds_cluster_config.eds_config.CopyFrom(ads_source())
    return Generated(
        types.CLUSTER,
        cluster.name,
        cluster,
        sources=(f"service:{service.name}",),
        refs=((types.ENDPOINT, cluster.name), *SECRET_REFS),
    )


def dns_discovery() -> cluster_pb2.Cluster.CustomClusterType:
    """Strict DNS (every address a name resolves to is a host), IPv4 first then IPv6,
    re-resolved as the records' TTL says. Envoy's DNS cluster extension: the same
    behaviour as `type: STRICT_DNS` without the Cluster fields deprecated since v3
    (`respect_dns_ttl`)."""
    config = dns_cluster_pb2.DnsCluster(
        respect_dns_ttl=True,
        dns_lookup_family=dns_pb2.V4_PREFERRED,
        all_addresses_in_single_endpoint=False,
    )
    return cluster_pb2.Cluster.CustomClusterType(name=DNS_CLUSTER, typed_config=pack(config))


def service_dns_cluster(mesh: Mesh, service: Service, instances: Iterable[Instance]) -> Generated:
    """`svc/<name>` for a service with an instance addressed by a host name: Envoy
    resolves the names (EDS takes IP addresses only), the healthy instances are the
    cluster's inline `load_assignment`, and there is no EDS resource. Like the EDS
    cluster it depends only on the mesh, the service and its instances, so it is the
    same bytes for every caller."""
    cluster = _mesh_cluster(mesh, service)
    cluster.cluster_type.CopyFrom(dns_discovery())
    cla, sources = load_assignment(service.name, instances)
    cluster.load_assignment.CopyFrom(cla)
    return Generated(types.CLUSTER, cluster.name, cluster, sources=sources, refs=SECRET_REFS)


def local_app_cluster(service: Service, instance: Instance) -> Generated:
    """`local-app`: the application next to the sidecar, on loopback, plaintext."""
    cluster = cluster_pb2.Cluster(
        name=LOCAL_APP_CLUSTER,
        type=cluster_pb2.Cluster.STATIC,
        connect_timeout=seconds(CONNECT_TIMEOUT_S),
        load_assignment=endpoint_pb2.ClusterLoadAssignment(
            cluster_name=LOCAL_APP_CLUSTER,
            endpoints=[
                endpoint_components_pb2.LocalityLbEndpoints(
                    lb_endpoints=[
                        endpoint_components_pb2.LbEndpoint(
                            endpoint=endpoint_components_pb2.Endpoint(
                                address=socket_address(LOCAL_APP_HOST, instance.app_port)
                            )
                        )
                    ]
                )
            ],
        ),
    )
    if service.protocol != "tcp":  # feeds the inbound health filter (health.py)
        cluster.health_checks.extend(local_app_health_checks())
    if service.protocol == "grpc":
        for k, v in http2_upstream_options().items():
            cluster.typed_extension_protocol_options[k].CopyFrom(v)
    return Generated(
        types.CLUSTER,
        LOCAL_APP_CLUSTER,
        cluster,
        sources=(f"service:{service.name}", instance_source(instance.address, instance.inbound_port)),
    )
