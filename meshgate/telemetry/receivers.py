"""gRPC receivers for what Envoy pushes: stats (metrics service) and access logs.

Both are client streams: Envoy opens one, sends its identity (node) in the
first message only, then a message per stats flush or per access-log batch,
and never reads a response until it closes the stream. They are registered on
the same grpc.aio server as ADS (`register`).

Authentication: the first message's node id is checked by the hub's
`authenticate(node_id, metadata)` (the same join-token check as ADS, when the
stream carries the token in its initial metadata). A stream that fails it is
closed with UNAUTHENTICATED before anything it sent is counted.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

import grpc
from envoy.service.accesslog.v3 import als_pb2, als_pb2_grpc

from meshgate.telemetry import protos

if TYPE_CHECKING:
    from meshgate.telemetry.hub import TelemetryHub

log = logging.getLogger(__name__)


def node_kind(node) -> str:  # type: ignore[no-untyped-def]
    """`sidecar` or `edge` from the bootstrap's node metadata (meshgate.fleet.bootstrap)."""
    meta = node.metadata.fields.get("meshgate")
    if meta is None or not meta.HasField("struct_value"):
        return ""
    kind = meta.struct_value.fields.get("kind")
    return kind.string_value if kind is not None else ""


def _metadata(context: grpc.aio.ServicerContext) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in context.invocation_metadata() or ():
        key, value = item[0], item[1]
        if isinstance(value, str):
            out[key.lower()] = value
    return out


async def _identify(context: grpc.aio.ServicerContext, hub: TelemetryHub, stream: str,
                    node_id: str, node_cluster: str) -> None:
    if not node_id:
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                            f"{stream}: the first message must carry identifier.node.id")
    try:
        ok, reason = hub.authenticate(node_id, _metadata(context), stream), ""
    except Exception as exc:  # noqa: BLE001 - the check says why it refused
        ok, reason = False, str(exc)
    if not ok:
        reason = reason or f"proxy {node_id!r} is not authenticated"
        log.warning("%s stream from %r (%s) refused: %s", stream, node_id, context.peer(), reason)
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, f"{stream}: {reason}")


class MetricsReceiver:
    """envoy.service.metrics.v3.MetricsService/StreamMetrics."""

    def __init__(self, hub: TelemetryHub) -> None:
        self.hub = hub

    async def StreamMetrics(  # noqa: N802 - gRPC method name
        self, request_iterator: AsyncIterator, context: grpc.aio.ServicerContext
    ) -> object:
        node_id = ""
        try:
            async for msg in request_iterator:
                if not node_id:
                    node = msg.identifier.node
                    await _identify(context, self.hub, "metrics", node.id, node.cluster)
                    node_id = node.id
                    self.hub.node_seen(node_id, node.cluster, node_kind(node))
                    self.hub.metrics_stream_opened(node_id, node.cluster)
                self.hub.ingest_metrics(node_id, msg.envoy_metrics)
        finally:
            if node_id:
                self.hub.metrics_stream_closed(node_id)
        return protos.StreamMetricsResponse()


class AccessLogReceiver(als_pb2_grpc.AccessLogServiceServicer):
    """envoy.service.accesslog.v3.AccessLogService/StreamAccessLogs."""

    def __init__(self, hub: TelemetryHub) -> None:
        self.hub = hub

    async def StreamAccessLogs(  # type: ignore[override]  # noqa: N802
        self, request_iterator: AsyncIterator[als_pb2.StreamAccessLogsMessage],
        context: grpc.aio.ServicerContext,
    ) -> als_pb2.StreamAccessLogsResponse:
        node_id = cluster = log_name = ""
        async for msg in request_iterator:
            if not node_id:
                ident = msg.identifier
                await _identify(context, self.hub, "access-log", ident.node.id, ident.node.cluster)
                node_id, cluster, log_name = ident.node.id, ident.node.cluster, ident.log_name
                self.hub.node_seen(node_id, cluster, node_kind(ident.node))
            if msg.HasField("http_logs"):
                self.hub.ingest_http_logs(node_id, cluster, log_name, msg.http_logs.log_entry)
            elif msg.HasField("tcp_logs"):
                self.hub.ingest_tcp_logs(node_id, cluster, log_name, msg.tcp_logs.log_entry)
        return als_pb2.StreamAccessLogsResponse()


def register(server: grpc.aio.Server, hub: TelemetryHub) -> None:
    """Serve both receivers on `server` (call before `server.start()`)."""
    metrics = MetricsReceiver(hub)
    handlers = {
        "StreamMetrics": grpc.stream_unary_rpc_method_handler(
            metrics.StreamMetrics,
            request_deserializer=protos.StreamMetricsMessage.FromString,
            response_serializer=protos.StreamMetricsResponse.SerializeToString,
        ),
    }
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(protos.METRICS_SERVICE, handlers),))
    als_pb2_grpc.add_AccessLogServiceServicer_to_server(AccessLogReceiver(hub), server)
