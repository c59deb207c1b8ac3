"""Where an edge gateway fetches a remote JWKS (`meshgate jwt add --jwks-uri`).

One cluster per provider, `jwks/<provider>`, to the URI's host. For https the
server certificate must chain to the public roots on the gateway's host and
name the URI's host: a JWKS fetched from an impostor would let it mint tokens.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import base_pb2
from envoy.config.endpoint.v3 import endpoint_components_pb2 as ec
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.extensions.transport_sockets.tls.v3 import common_pb2, tls_pb2
from envoy.type.matcher.v3 import string_pb2

from meshgate.model import JwtProvider
from meshgate.validation import is_ip
from meshgate.xds import types
from meshgate.xds.translate import edge_auth, tls
from meshgate.xds.translate.common import seconds, socket_address
from meshgate.xds.translate.generated import Generated

# Public roots on the gateway's host (Debian, Ubuntu, Alpine and the official Envoy
# image). Envoy 1.40 does not implement `system_root_certs` and refuses SAN checks
# without a trusted CA (measured).
SYSTEM_CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"


def jwks_cluster(p: JwtProvider) -> Generated:
    """`jwks/<provider>`: where Envoy fetches a remote JWKS; https verified against the
    host's public roots (SYSTEM_CA_BUNDLE) and the URI's host name."""
    parts = urlsplit(p.jwks_uri or "")
    host = parts.hostname or ""
    https = parts.scheme == "https"
    port = parts.port or (443 if https else 80)
    name = edge_auth.jwks_cluster_name(p.name)
    cluster = cluster_pb2.Cluster(
        name=name,
        type=cluster_pb2.Cluster.STATIC if is_ip(host) else cluster_pb2.Cluster.STRICT_DNS,
        connect_timeout=seconds(2.0),
        dns_lookup_family=cluster_pb2.Cluster.V4_PREFERRED,
        load_assignment=endpoint_pb2.ClusterLoadAssignment(
            cluster_name=name,
            endpoints=[ec.LocalityLbEndpoints(lb_endpoints=[
                ec.LbEndpoint(endpoint=ec.Endpoint(address=socket_address(host, port)))
            ])],
        ),
    )
    if https:
        ctx = tls_pb2.UpstreamTlsContext(
            sni=host,
            common_tls_context=tls_pb2.CommonTlsContext(
                tls_params=tls.tls_params(tls.EDGE_CIPHERS),
                validation_context=common_pb2.CertificateValidationContext(
                    trusted_ca=base_pb2.DataSource(filename=SYSTEM_CA_BUNDLE),
                    match_typed_subject_alt_names=[
                        common_pb2.SubjectAltNameMatcher(
                            san_type=common_pb2.SubjectAltNameMatcher.IP_ADDRESS if is_ip(host)
                            else common_pb2.SubjectAltNameMatcher.DNS,
                            matcher=string_pb2.StringMatcher(exact=host),
                        )
                    ],
                ),
            ),
        )
        cluster.transport_socket.CopyFrom(tls.transport_socket(ctx))
    return Generated(types.CLUSTER, name, cluster, sources=(f"jwt-provider:{p.name}",))
