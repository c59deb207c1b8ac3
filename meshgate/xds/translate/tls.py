"""TLS for every hop: Envoy TLS contexts that reference SDS secrets, and the secrets.

Secret names are relative to the proxy (DESIGN.md): `identity` is the proxy's
own certificate and key, `trust-bundle` the mesh roots. So the upstream TLS
context for service U is the same bytes in every proxy of the mesh, and the
names stay short inside Envoy's stat names (ENVOY_NOTES.md).

Both sides pin TLS 1.2 as the minimum and 1.3 as the maximum with the same
cipher and curve choices: left alone, Envoy negotiates 1.2 upstream and 1.3
downstream (measured). TLS 1.3 suites are fixed by BoringSSL; the list below
applies to 1.2 and holds only AEAD suites with forward secrecy.
"""

from __future__ import annotations

from envoy.config.core.v3 import base_pb2, config_source_pb2
from envoy.extensions.transport_sockets.tls.v3 import common_pb2, secret_pb2, tls_pb2
from envoy.type.matcher.v3 import string_pb2
from google.protobuf import any_pb2, wrappers_pb2

SECRET_IDENTITY = "identity"
SECRET_TRUST = "trust-bundle"
TLS_SOCKET = "envoy.transport_sockets.tls"

# TLS 1.2 suites for ECDSA keys (every mesh certificate is ECDSA P-256).
MESH_CIPHERS = (
    "ECDHE-ECDSA-AES128-GCM-SHA256",
    "ECDHE-ECDSA-CHACHA20-POLY1305",
    "ECDHE-ECDSA-AES256-GCM-SHA384",
)
# Edge gateways may present imported RSA certificates to outside clients.
EDGE_CIPHERS = MESH_CIPHERS + (
    "ECDHE-RSA-AES128-GCM-SHA256",
    "ECDHE-RSA-CHACHA20-POLY1305",
    "ECDHE-RSA-AES256-GCM-SHA384",
)
CURVES = ("X25519", "P-256")


def tls_params(ciphers: tuple[str, ...] = MESH_CIPHERS) -> common_pb2.TlsParameters:
    return common_pb2.TlsParameters(
        tls_minimum_protocol_version=common_pb2.TlsParameters.TLSv1_2,
        tls_maximum_protocol_version=common_pb2.TlsParameters.TLSv1_3,
        cipher_suites=list(ciphers),
        ecdh_curves=list(CURVES),
    )


def ads_sds(name: str) -> secret_pb2.SdsSecretConfig:
    """A reference to a secret delivered over the ADS stream."""
    return secret_pb2.SdsSecretConfig(
        name=name,
        sds_config=config_source_pb2.ConfigSource(
            ads=config_source_pb2.AggregatedConfigSource(),
            resource_api_version=config_source_pb2.V3,
        ),
    )


def _uri_san(matcher: string_pb2.StringMatcher) -> common_pb2.SubjectAltNameMatcher:
    return common_pb2.SubjectAltNameMatcher(
        san_type=common_pb2.SubjectAltNameMatcher.URI, matcher=matcher
    )


def _validation(
    san_matchers: list[common_pb2.SubjectAltNameMatcher],
    trust_secret: str = SECRET_TRUST,
) -> tls_pb2.CommonTlsContext.CombinedCertificateValidationContext:
    return tls_pb2.CommonTlsContext.CombinedCertificateValidationContext(
        default_validation_context=common_pb2.CertificateValidationContext(
            match_typed_subject_alt_names=san_matchers
        ),
        validation_context_sds_secret_config=ads_sds(trust_secret),
    )


def transport_socket(ctx: tls_pb2.UpstreamTlsContext | tls_pb2.DownstreamTlsContext) -> base_pb2.TransportSocket:
    packed = any_pb2.Any()
    packed.Pack(ctx)
    return base_pb2.TransportSocket(name=TLS_SOCKET, typed_config=packed)


def mesh_downstream_context(
    trust_domain: str, alpn: tuple[str, ...] = ("h2", "http/1.1")
) -> tls_pb2.DownstreamTlsContext:
    """A sidecar's inbound side: present `identity`, require a client certificate
    chaining to `trust-bundle` whose URI SAN is in this trust domain. Which
    identities may call what is decided after the handshake, by RBAC."""
    return tls_pb2.DownstreamTlsContext(
        common_tls_context=tls_pb2.CommonTlsContext(
            tls_params=tls_params(),
            tls_certificate_sds_secret_configs=[ads_sds(SECRET_IDENTITY)],
            combined_validation_context=_validation(
                [_uri_san(string_pb2.StringMatcher(prefix=f"spiffe://{trust_domain}/"))]
            ),
            alpn_protocols=list(alpn),
        ),
        require_client_certificate=wrappers_pb2.BoolValue(value=True),
    )


def mesh_upstream_context(
    spiffe_id: str, sni: str | None = None, alpn: tuple[str, ...] = ()
) -> tls_pb2.UpstreamTlsContext:
    """A caller's side of one hop: present `identity`, accept only a server
    certificate chaining to `trust-bundle` whose URI SAN is exactly `spiffe_id`."""
    return tls_pb2.UpstreamTlsContext(
        common_tls_context=tls_pb2.CommonTlsContext(
            tls_params=tls_params(),
            tls_certificate_sds_secret_configs=[ads_sds(SECRET_IDENTITY)],
            combined_validation_context=_validation(
                [_uri_san(string_pb2.StringMatcher(exact=spiffe_id))]
            ),
            alpn_protocols=list(alpn),
        ),
        sni=sni or "",
    )


def edge_downstream_context(
    cert_secret: str,
    client_ca_secret: str | None = None,
    alpn: tuple[str, ...] = ("h2", "http/1.1"),
) -> tls_pb2.DownstreamTlsContext:
    """An edge gateway's public side for one host: present that host's
    certificate; with `client_ca_secret`, require a client certificate from it."""
    common = tls_pb2.CommonTlsContext(
        tls_params=tls_params(EDGE_CIPHERS),
        tls_certificate_sds_secret_configs=[ads_sds(cert_secret)],
        alpn_protocols=list(alpn),
    )
    if client_ca_secret:
        common.validation_context_sds_secret_config.CopyFrom(ads_sds(client_ca_secret))
    return tls_pb2.DownstreamTlsContext(
        common_tls_context=common,
        require_client_certificate=wrappers_pb2.BoolValue(value=bool(client_ca_secret)),
    )


def identity_secret(cert_chain_pem: str, key_pem: str, name: str = SECRET_IDENTITY) -> secret_pb2.Secret:
    """A certificate and its key (the proxy's own, or an edge host's)."""
    return secret_pb2.Secret(
        name=name,
        tls_certificate=common_pb2.TlsCertificate(
            certificate_chain=base_pb2.DataSource(inline_string=cert_chain_pem),
            private_key=base_pb2.DataSource(inline_string=key_pem),
        ),
    )


def trust_bundle_secret(roots_pem: str, name: str = SECRET_TRUST) -> secret_pb2.Secret:
    """The roots a proxy trusts (during a rotation: old and new together)."""
    return secret_pb2.Secret(
        name=name,
        validation_context=common_pb2.CertificateValidationContext(
            trusted_ca=base_pb2.DataSource(inline_string=roots_pem)
        ),
    )
