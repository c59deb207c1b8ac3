"""Message classes for Envoy's metrics service, which xds-protos does not ship.

xds-protos leaves out `envoy/service/metrics/v3/metrics_service.proto`
because it imports Prometheus' `io/prometheus/client/metrics.proto`. Only the
wire format matters to a receiver, so the two files are described here field
by field (numbers and types as in the upstream .proto files) and registered
in protobuf's default pool; `envoy.config.core.v3.Node` comes from xds-protos.
If a later xds-protos ships the files, those are used instead.
"""

from __future__ import annotations

from typing import Any

from envoy.config.core.v3 import base_pb2  # noqa: F401  (registers envoy.config.core.v3.Node)
from google.protobuf import (
    descriptor_pb2,
    descriptor_pool,
    message_factory,
    timestamp_pb2,  # noqa: F401  (registers google.protobuf.Timestamp)
)

PROMETHEUS_FILE = "io/prometheus/client/metrics.proto"
METRICS_SERVICE_FILE = "envoy/service/metrics/v3/metrics_service.proto"
METRICS_SERVICE = "envoy.service.metrics.v3.MetricsService"

_F = descriptor_pb2.FieldDescriptorProto
_OPT, _REP = _F.LABEL_OPTIONAL, _F.LABEL_REPEATED

# (name, number, type, label, type_name)
_PROMETHEUS_MESSAGES: dict[str, list[tuple[str, int, int, int, str]]] = {
    "LabelPair": [("name", 1, _F.TYPE_STRING, _OPT, ""), ("value", 2, _F.TYPE_STRING, _OPT, "")],
    "Gauge": [("value", 1, _F.TYPE_DOUBLE, _OPT, "")],
    "Counter": [
        ("value", 1, _F.TYPE_DOUBLE, _OPT, ""),
        ("exemplar", 2, _F.TYPE_MESSAGE, _OPT, ".io.prometheus.client.Exemplar"),
        ("created_timestamp", 3, _F.TYPE_MESSAGE, _OPT, ".google.protobuf.Timestamp"),
    ],
    "Quantile": [("quantile", 1, _F.TYPE_DOUBLE, _OPT, ""), ("value", 2, _F.TYPE_DOUBLE, _OPT, "")],
    "Summary": [
        ("sample_count", 1, _F.TYPE_UINT64, _OPT, ""),
        ("sample_sum", 2, _F.TYPE_DOUBLE, _OPT, ""),
        ("quantile", 3, _F.TYPE_MESSAGE, _REP, ".io.prometheus.client.Quantile"),
        ("created_timestamp", 4, _F.TYPE_MESSAGE, _OPT, ".google.protobuf.Timestamp"),
    ],
    "Untyped": [("value", 1, _F.TYPE_DOUBLE, _OPT, "")],
    "Histogram": [
        ("sample_count", 1, _F.TYPE_UINT64, _OPT, ""),
        ("sample_sum", 2, _F.TYPE_DOUBLE, _OPT, ""),
        ("bucket", 3, _F.TYPE_MESSAGE, _REP, ".io.prometheus.client.Bucket"),
        ("sample_count_float", 4, _F.TYPE_DOUBLE, _OPT, ""),
        ("schema", 5, _F.TYPE_SINT32, _OPT, ""),
        ("zero_threshold", 6, _F.TYPE_DOUBLE, _OPT, ""),
        ("zero_count", 7, _F.TYPE_UINT64, _OPT, ""),
        ("zero_count_float", 8, _F.TYPE_DOUBLE, _OPT, ""),
        ("created_timestamp", 15, _F.TYPE_MESSAGE, _OPT, ".google.protobuf.Timestamp"),
    ],
    "Bucket": [
        ("cumulative_count", 1, _F.TYPE_UINT64, _OPT, ""),
        ("upper_bound", 2, _F.TYPE_DOUBLE, _OPT, ""),
        ("exemplar", 3, _F.TYPE_MESSAGE, _OPT, ".io.prometheus.client.Exemplar"),
        ("cumulative_count_float", 4, _F.TYPE_DOUBLE, _OPT, ""),
    ],
    "Exemplar": [
        ("label", 1, _F.TYPE_MESSAGE, _REP, ".io.prometheus.client.LabelPair"),
        ("value", 2, _F.TYPE_DOUBLE, _OPT, ""),
        ("timestamp", 3, _F.TYPE_MESSAGE, _OPT, ".google.protobuf.Timestamp"),
    ],
    "Metric": [
        ("label", 1, _F.TYPE_MESSAGE, _REP, ".io.prometheus.client.LabelPair"),
        ("gauge", 2, _F.TYPE_MESSAGE, _OPT, ".io.prometheus.client.Gauge"),
        ("counter", 3, _F.TYPE_MESSAGE, _OPT, ".io.prometheus.client.Counter"),
        ("summary", 4, _F.TYPE_MESSAGE, _OPT, ".io.prometheus.client.Summary"),
        ("untyped", 5, _F.TYPE_MESSAGE, _OPT, ".io.prometheus.client.Untyped"),
        ("timestamp_ms", 6, _F.TYPE_INT64, _OPT, ""),
        ("histogram", 7, _F.TYPE_MESSAGE, _OPT, ".io.prometheus.client.Histogram"),
    ],
    "MetricFamily": [
        ("name", 1, _F.TYPE_STRING, _OPT, ""),
        ("help", 2, _F.TYPE_STRING, _OPT, ""),
        ("type", 3, _F.TYPE_ENUM, _OPT, ".io.prometheus.client.MetricType"),
        ("metric", 4, _F.TYPE_MESSAGE, _REP, ".io.prometheus.client.Metric"),
        ("unit", 5, _F.TYPE_STRING, _OPT, ""),
    ],
}
METRIC_TYPES = ("COUNTER", "GAUGE", "SUMMARY", "UNTYPED", "HISTOGRAM", "GAUGE_HISTOGRAM")


def _add_message(fdp: descriptor_pb2.FileDescriptorProto | descriptor_pb2.DescriptorProto,
                 name: str, fields: list[tuple[str, int, int, int, str]]
                 ) -> descriptor_pb2.DescriptorProto:
    msg = fdp.message_type.add() if isinstance(fdp, descriptor_pb2.FileDescriptorProto) \
        else fdp.nested_type.add()
    msg.name = name
    for fname, number, ftype, label, type_name in fields:
        f = msg.field.add(name=fname, number=number, type=ftype, label=label)
        if type_name:
            f.type_name = type_name
    return msg


def _prometheus_file() -> descriptor_pb2.FileDescriptorProto:
    fdp = descriptor_pb2.FileDescriptorProto(
        name=PROMETHEUS_FILE, package="io.prometheus.client", syntax="proto2",
        dependency=["google/protobuf/timestamp.proto"],
    )
    enum = fdp.enum_type.add(name="MetricType")
    for i, n in enumerate(METRIC_TYPES):
        enum.value.add(name=n, number=i)
    for name, fields in _PROMETHEUS_MESSAGES.items():
        _add_message(fdp, name, fields)
    return fdp


def _metrics_service_file() -> descriptor_pb2.FileDescriptorProto:
    fdp = descriptor_pb2.FileDescriptorProto(
        name=METRICS_SERVICE_FILE, package="envoy.service.metrics.v3", syntax="proto3",
        dependency=[PROMETHEUS_FILE, "envoy/config/core/v3/base.proto"],
    )
    _add_message(fdp, "StreamMetricsResponse", [])
    msg = _add_message(fdp, "StreamMetricsMessage", [
        ("identifier", 1, _F.TYPE_MESSAGE, _OPT,
         ".envoy.service.metrics.v3.StreamMetricsMessage.Identifier"),
        ("envoy_metrics", 2, _F.TYPE_MESSAGE, _REP, ".io.prometheus.client.MetricFamily"),
    ])
    _add_message(msg, "Identifier", [
        ("node", 1, _F.TYPE_MESSAGE, _OPT, ".envoy.config.core.v3.Node"),
    ])
    svc = fdp.service.add(name="MetricsService")
    svc.method.add(
        name="StreamMetrics",
        input_type=".envoy.service.metrics.v3.StreamMetricsMessage",
        output_type=".envoy.service.metrics.v3.StreamMetricsResponse",
        client_streaming=True,
    )
    return fdp


def _load() -> dict[str, Any]:
    pool = descriptor_pool.Default()
    for build, name in ((_prometheus_file, PROMETHEUS_FILE),
                        (_metrics_service_file, METRICS_SERVICE_FILE)):
        try:
            pool.FindFileByName(name)
        except KeyError:
            pool.Add(build())
    classes: dict[str, Any] = {}
    for full in ("envoy.service.metrics.v3.StreamMetricsMessage",
                 "envoy.service.metrics.v3.StreamMetricsResponse",
                 "io.prometheus.client.MetricFamily"):
        classes[full.rsplit(".", 1)[1]] = message_factory.GetMessageClass(
            pool.FindMessageTypeByName(full))
    return classes


_CLASSES = _load()
StreamMetricsMessage = _CLASSES["StreamMetricsMessage"]
StreamMetricsResponse = _CLASSES["StreamMetricsResponse"]
MetricFamily = _CLASSES["MetricFamily"]

# MetricFamily.type values
COUNTER, GAUGE, SUMMARY, UNTYPED, HISTOGRAM = 0, 1, 2, 3, 4
