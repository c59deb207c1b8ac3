"""What Envoy needs to send telemetry to the control plane. Pure: data in, config out.

- `bootstrap_stats_sink`: a bootstrap fragment. Envoy pushes its counters (as
  deltas), gauges and histograms over the metrics service every flush
  interval, with tags as labels (`cluster.upstream_rq_xx{envoy_cluster_name=
  "svc/orders", envoy_response_code_class="2"}`), so the server never parses
  stat names. The request-time histograms get finer buckets than Envoy's
  default (0.5, 1, 5, 10, 25 ms ...) so p50/p90/p99 are meaningful.
- `denied_or_failed_access_log`: an HTTP access log for an HCM, sent over
  gRPC and filtered IN ENVOY: only requests with status >= 400, any response
  flag, a failed gRPC status, or an RBAC shadow (audit) denial are sent.
  Successful requests cost nothing beyond the filter check.
- `denied_tcp_access_log`: the same for TCP proxies (network RBAC denials and
  upstream failures show as response flags or connection termination details).
- `with_initial_metadata`: one of those logs with more stream metadata (each
  proxy's telemetry key, meshgate.telemetry.keys).
"""

from __future__ import annotations

from collections.abc import Sequence

from envoy.config.accesslog.v3 import accesslog_pb2
from envoy.config.core.v3 import base_pb2, config_source_pb2, grpc_service_pb2
from envoy.config.metrics.v3 import (  # noqa: F401 - registers the type for JSON parsing
    metrics_service_pb2,
)
from envoy.config.route.v3 import route_components_pb2
from envoy.extensions.access_loggers.filters.cel.v3 import cel_pb2
from envoy.extensions.access_loggers.grpc.v3 import als_pb2
from envoy.type.matcher.v3 import metadata_pb2, string_pb2, value_pb2
from google.protobuf import any_pb2, duration_pb2, wrappers_pb2

from meshgate.policy.compile import DENY_FILTER, SHADOW_STAT_PREFIX

METRICS_SINK = "envoy.stat_sinks.metrics_service"
HTTP_GRPC_LOGGER = "envoy.access_loggers.http_grpc"
TCP_GRPC_LOGGER = "envoy.access_loggers.tcp_grpc"
RBAC_HTTP_FILTER = "envoy.filters.http.rbac"
MIN_STATUS_RUNTIME_KEY = "meshgate.access_log.min_status"
CEL_FILTER = "envoy.access_loggers.extension_filters.cel"
_TCP_DENIED_CEL = "connection.termination_details.startsWith('rbac_access_denied')"
AUDIT_DENY_PREFIXES: tuple[str, ...] = (SHADOW_STAT_PREFIX[DENY_FILTER],)

# Request-time buckets (ms): fine where service latencies live, coarse above.
RQ_TIME_BUCKETS_MS: tuple[float, ...] = (
    0.5, 1, 2, 3, 5, 7.5, 10, 15, 20, 30, 50, 75, 100, 150, 200, 300, 500, 750,
    1000, 1500, 2000, 3000, 5000, 10000, 30000, 60000,
)


def _duration(ms: int) -> str:
    return f"{ms // 1000}.{ms % 1000:03d}s"


def bootstrap_stats_sink(
    cluster_name: str,
    flush_interval_ms: int = 5000,
    initial_metadata: Sequence[tuple[str, str]] = (),
) -> dict:
    """Bootstrap keys (`stats_sinks`, `stats_flush_interval`, `stats_config`) to merge in.

    `cluster_name` is the bootstrap's static cluster to the control plane (the
    same one ADS uses). `initial_metadata` is sent on the stream: pass the
    proxy's token header so the server can authenticate the stream like ADS.
    """
    if flush_interval_ms < 1:
        raise ValueError("flush_interval_ms must be >= 1")
    grpc_service: dict = {"envoy_grpc": {"cluster_name": cluster_name}}
    if initial_metadata:
        grpc_service["initial_metadata"] = [{"key": k, "value": v} for k, v in initial_metadata]
    return {
        "stats_sinks": [{
            "name": METRICS_SINK,
            "typed_config": {
                "@type": "type.googleapis.com/envoy.config.metrics.v3.MetricsServiceConfig",
                "transport_api_version": "V3",
                "report_counters_as_deltas": True,
                "emit_tags_as_labels": True,
                # Buckets merge across proxies and flushes; summaries do not.
                "histogram_emit_mode": "HISTOGRAM",
                "grpc_service": grpc_service,
            },
        }],
        "stats_flush_interval": _duration(flush_interval_ms),
        "stats_config": {
            "histogram_bucket_settings": [{
                "match": {"safe_regex": {"regex": r".*\.(upstream|downstream)_rq_time$"}},
                "buckets": list(RQ_TIME_BUCKETS_MS),
            }],
        },
    }


def _grpc_common(cluster_name: str, log_name: str, initial_metadata: Sequence[tuple[str, str]],
                 flush_ms: int) -> als_pb2.CommonGrpcAccessLogConfig:
    svc = grpc_service_pb2.GrpcService(
        envoy_grpc=grpc_service_pb2.GrpcService.EnvoyGrpc(cluster_name=cluster_name),
        initial_metadata=[base_pb2.HeaderValue(key=k, value=v) for k, v in initial_metadata],
    )
    return als_pb2.CommonGrpcAccessLogConfig(
        log_name=log_name,
        grpc_service=svc,
        transport_api_version=config_source_pb2.V3,
        buffer_flush_interval=duration_pb2.Duration(
            seconds=flush_ms // 1000, nanos=(flush_ms % 1000) * 1_000_000),
    )


def _packed(msg) -> any_pb2.Any:  # type: ignore[no-untyped-def]
    a = any_pb2.Any()
    a.Pack(msg)
    return a


def _status_at_least(code: int) -> accesslog_pb2.AccessLogFilter:
    return accesslog_pb2.AccessLogFilter(status_code_filter=accesslog_pb2.StatusCodeFilter(
        comparison=accesslog_pb2.ComparisonFilter(
            op=accesslog_pb2.ComparisonFilter.GE,
            value=base_pb2.RuntimeUInt32(default_value=code, runtime_key=MIN_STATUS_RUNTIME_KEY),
        )))


def _any_response_flag() -> accesslog_pb2.AccessLogFilter:
    # An empty flag list matches any response flag (UF, UH, NR, URX, UAEX, RL ...).
    return accesslog_pb2.AccessLogFilter(response_flag_filter=accesslog_pb2.ResponseFlagFilter())


def _grpc_failed() -> accesslog_pb2.AccessLogFilter:
    # gRPC failures come back as HTTP 200 with grpc-status != 0. The gRPC
    # status filter alone would also match plain HTTP 200s (it maps HTTP codes
    # to gRPC statuses), so it only applies to gRPC requests.
    is_grpc = accesslog_pb2.AccessLogFilter(header_filter=accesslog_pb2.HeaderFilter(
        header=route_components_pb2.HeaderMatcher(
            name="content-type",
            string_match=string_pb2.StringMatcher(prefix="application/grpc"),
        )))
    not_ok = accesslog_pb2.AccessLogFilter(grpc_status_filter=accesslog_pb2.GrpcStatusFilter(
        statuses=[accesslog_pb2.GrpcStatusFilter.OK], exclude=True))
    return accesslog_pb2.AccessLogFilter(
        and_filter=accesslog_pb2.AndFilter(filters=[is_grpc, not_ok]))


def _shadow_denied(shadow_prefix: str) -> accesslog_pb2.AccessLogFilter:
    # Audit-mode policies are RBAC shadow rules: the request passes, and the
    # RBAC filter writes `<shadow_rules_stat_prefix>shadow_engine_result:
    # denied` into its dynamic metadata.
    return accesslog_pb2.AccessLogFilter(metadata_filter=accesslog_pb2.MetadataFilter(
        matcher=metadata_pb2.MetadataMatcher(
            filter=RBAC_HTTP_FILTER,
            path=[metadata_pb2.MetadataMatcher.PathSegment(
                key=f"{shadow_prefix}shadow_engine_result")],
            value=value_pb2.ValueMatcher(string_match=string_pb2.StringMatcher(exact="denied")),
        ),
        # Unset means "log when the key is missing", i.e. every request without RBAC.
        match_if_key_not_found=wrappers_pb2.BoolValue(value=False),
    ))


def denied_or_failed_access_log(
    cluster_name: str,
    log_name: str,
    *,
    min_status: int = 400,
    include_audit: bool = True,
    shadow_rules_prefixes: Sequence[str] = AUDIT_DENY_PREFIXES,
    initial_metadata: Sequence[tuple[str, str]] = (),
    flush_ms: int = 1000,
) -> accesslog_pb2.AccessLog:
    """An HCM access log that sends only denied or failed requests to the control plane.

    Sent: status >= `min_status` (RBAC 403, JWT 401/403, rate limit 429, 5xx),
    any response flag, gRPC requests ending with a non-OK grpc-status, and (with
    `include_audit`) requests an audit-mode policy would have denied.
    `shadow_rules_prefixes`: the `shadow_rules_stat_prefix` of each RBAC filter
    whose shadow denials are audit-mode denials (meshgate's deny filter by default;
    the allow filter's shadow rules can only allow more, so they never deny a
    request that passed).
    Each entry carries the peer certificate SANs (caller), route name,
    upstream cluster, method, path, response code and code details
    (`rbac_access_denied_matched_policy[<rule id>]`, `jwt_authn_access_denied{...}`)
    and the RBAC filter's dynamic metadata.
    """
    filters = [_status_at_least(min_status), _any_response_flag(), _grpc_failed()]
    if include_audit:
        filters += [_shadow_denied(p) for p in shadow_rules_prefixes]
    config = als_pb2.HttpGrpcAccessLogConfig(
        common_config=_grpc_common(cluster_name, log_name, initial_metadata, flush_ms))
    return accesslog_pb2.AccessLog(
        name=HTTP_GRPC_LOGGER,
        filter=accesslog_pb2.AccessLogFilter(or_filter=accesslog_pb2.OrFilter(filters=filters)),
        typed_config=_packed(config),
    )


def denied_tcp_access_log(
    cluster_name: str,
    log_name: str,
    *,
    initial_metadata: Sequence[tuple[str, str]] = (),
    flush_ms: int = 1000,
) -> accesslog_pb2.AccessLog:
    """A TCP proxy access log sending only denied or failed connections.

    A network RBAC denial sets no response flag (measured, Envoy 1.40): it
    leaves `connection_termination_details` =
    `rbac_access_denied_matched_policy[<rule id>]`, which only a CEL filter
    can see. Upstream failures (UF, UH ...) set a response flag.
    """
    config = als_pb2.TcpGrpcAccessLogConfig(
        common_config=_grpc_common(cluster_name, log_name, initial_metadata, flush_ms))
    denied = accesslog_pb2.AccessLogFilter(extension_filter=accesslog_pb2.ExtensionFilter(
        name=CEL_FILTER,
        typed_config=_packed(cel_pb2.ExpressionFilter(expression=_TCP_DENIED_CEL))))
    return accesslog_pb2.AccessLog(
        name=TCP_GRPC_LOGGER,
        filter=accesslog_pb2.AccessLogFilter(or_filter=accesslog_pb2.OrFilter(
            filters=[_any_response_flag(), denied])),
        typed_config=_packed(config))


def with_initial_metadata(log: accesslog_pb2.AccessLog,
                          metadata: Sequence[tuple[str, str]]) -> accesslog_pb2.AccessLog:
    """A copy of a gRPC access log (from the two functions above) whose stream also
    sends `metadata`: the same message as building it with `initial_metadata`, at a
    fraction of the cost (the server makes one per proxy)."""
    config: als_pb2.HttpGrpcAccessLogConfig | als_pb2.TcpGrpcAccessLogConfig
    config = als_pb2.TcpGrpcAccessLogConfig() if log.name == TCP_GRPC_LOGGER else als_pb2.HttpGrpcAccessLogConfig()
    if not log.typed_config.Unpack(config):
        raise ValueError(f"{log.name}: not a gRPC access log")
    config.common_config.grpc_service.initial_metadata.extend(
        base_pb2.HeaderValue(key=k, value=v) for k, v in metadata)
    out = accesslog_pb2.AccessLog()
    out.CopyFrom(log)
    out.typed_config.Pack(config)
    return out
