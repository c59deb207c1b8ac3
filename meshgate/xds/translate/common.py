"""Small protobuf helpers shared by the generators."""

from __future__ import annotations

from envoy.config.core.v3 import address_pb2, config_source_pb2, protocol_pb2
from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2 as upstream_http
from google.protobuf import any_pb2, duration_pb2
from google.protobuf.message import Message

HTTP_PROTOCOL_OPTIONS = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"


def pack(message: Message) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)
    return packed


def ads_source() -> config_source_pb2.ConfigSource:
    """Resources that arrive on the same ADS stream."""
    return config_source_pb2.ConfigSource(
        ads=config_source_pb2.AggregatedConfigSource(),
        resource_api_version=config_source_pb2.V3,
    )


def socket_address(host: str, port: int) -> address_pb2.Address:
    # fields set in place: ~3x faster than nested constructors with upb (measured)
    addr = address_pb2.Address()
    sa = addr.socket_address
    sa.address = host
    sa.port_value = port
    return addr


def seconds(value: float) -> duration_pb2.Duration:
    d = duration_pb2.Duration()
    d.FromNanoseconds(int(value * 1e9))
    return d


def http2_upstream_options() -> dict[str, any_pb2.Any]:
    """`typed_extension_protocol_options` making a cluster speak HTTP/2 (gRPC upstreams)."""
    opts = upstream_http.HttpProtocolOptions(
        explicit_http_config=upstream_http.HttpProtocolOptions.ExplicitHttpConfig(
            http2_protocol_options=protocol_pb2.Http2ProtocolOptions()
        )
    )
    return {HTTP_PROTOCOL_OPTIONS: pack(opts)}
