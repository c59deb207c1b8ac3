"""Clusters: one EDS cluster per upstream service (shared by every caller) and `local-app`."""

from __future__ import annotations

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.endpoint.v3 import endpoint_components_pb2, endpoint_pb2

from meshgate.model import Instance, Mesh, Service
from meshgate.xds import types
from meshgate.xds.translate import tls
from meshgate.xds.translate.common import (
    ads_source,
    http2_upstream_options,
    seconds,
    socket_address,
)
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


def service_cluster(mesh: Mesh, service: Service) -> Generated:
    """`svc/<name>`: endpoints over EDS, mTLS to the upstream sidecars.

    Depends only on the mesh and the service, never on the caller, so it is
    the same bytes in every proxy that calls it.
    """
    name = service_cluster_name(service.name)
    grpc = service.protocol == "grpc"
    upstream = tls.mesh_upstream_context(
        mesh.service_identity(service.name), alpn=("h2",) if grpc else ()
    )
    cluster = cluster_pb2.Cluster(
        name=name,
        type=cluster_pb2.Cluster.EDS,
        eds_cluster_config=cluster_pb2.Cluster.EdsClusterConfig(eds_config=ads_source()),
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
    return Generated(
        types.CLUSTER,
        name,
        cluster,
        sources=(f"service:{service.name}",),
        refs=((types.ENDPOINT, name), (types.SECRET, tls.SECRET_IDENTITY), (types.SECRET, tls.SECRET_TRUST)),
    )


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
