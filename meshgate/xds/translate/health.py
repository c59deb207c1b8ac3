"""Health: unhealthy instances leave the load-balancing set. Pure.

How an instance is judged, end to end:

1. Its sidecar checks its own app: `local-app` has a TCP health check (connect
   to the app port on loopback, every second).
2. Its inbound listener answers `HEALTH_PATH` itself (Envoy's health_check
   filter, before RBAC, never forwarded to the app): 200 while `local-app`
   is healthy, 503 once the app stopped accepting connections (or once the
   sidecar was told to fail health checks: `POST /healthcheck/fail` on its
   admin port, a way to take an instance out of rotation before stopping it).
3. Every caller's `svc/<name>` cluster health-checks each instance with an
   HTTP request for `HEALTH_PATH` over the cluster's own mTLS transport socket,
   and ejects instances that fail (outlier detection) on live traffic:
   3 consecutive gateway errors (502/503/504, connection failures) or 5
   consecutive 5xx.
4. Outbound routes retry, on another instance, requests that never reached an
   app: connection failures, refused streams, resets before the request was
   sent, and answers the upstream sidecar marks with `APP_UNAVAILABLE_HEADER`
   (its inbound side could not connect to its app, had no healthy app, or hit
   its circuit breaker: Envoy response flags UF, UH, UO). Never a request the
   app may have seen, so retries are safe for POST. An instance whose sidecar
   stops costs no failed request while another instance is up; one whose app
   dies costs few or none (measured: usually none; a handful when a caller's
   load balancer had not yet counted the other instance healthy) until outlier
   detection or the health check has ejected it. The caller's
   route removes the header once its retry policy has read it: no app sees
   it, so none can relay it and have a request it did see retried upstream.

Why this shape: a health request through RBAC would be refused for callers
allowed only some paths (and counted as a denial), and would reach the app;
the health filter answers before RBAC with nothing but up/down, and only to
callers that passed the mesh's mTLS (strict mode). TCP services have no HTTP
layer on the inbound side: their clusters rely on outlier detection
(connection failures to a sidecar that is gone) only.

Every value here is a constant of the mesh, so `svc/<name>` stays the same
bytes for every caller.
"""

from __future__ import annotations

from envoy.config.accesslog.v3 import accesslog_pb2
from envoy.config.cluster.v3 import outlier_detection_pb2
from envoy.config.core.v3 import base_pb2, health_check_pb2
from envoy.config.route.v3 import route_components_pb2 as rc
from envoy.extensions.filters.http.health_check.v3 import health_check_pb2 as hc_filter
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm,
)
from envoy.extensions.retry.host.previous_hosts.v3 import previous_hosts_pb2
from envoy.type.matcher.v3 import string_pb2
from envoy.type.v3 import http_pb2, percent_pb2
from google.protobuf import wrappers_pb2

from meshgate.xds.translate.common import pack, seconds
from meshgate.xds.translate.names import LOCAL_APP_CLUSTER

HEALTH_PATH = "/.meshgate/health"
HEALTH_FILTER = "envoy.filters.http.health_check"
PREVIOUS_HOSTS = "envoy.retry_host_predicates.previous_hosts"

# svc/<name>: checked every 5 s while traffic flows; a caller that sends none
# re-checks healthy instances every 60 s only, and unhealthy or new ones (their
# first check may run before their sidecar has its inbound listener) every 2 s.
# Two failures in a row make an instance unhealthy; an unhealthy one is
# re-checked every second, so a new instance whose first check came too early
# takes traffic a few seconds later.
SERVICE_CHECK_INTERVAL_S = 5.0
IDLE_HEALTHY_CHECK_INTERVAL_S = 60.0
IDLE_CHECK_INTERVAL_S = 2.0
UNHEALTHY_CHECK_INTERVAL_S = 1.0
SERVICE_CHECK_TIMEOUT_S = 1.0
UNHEALTHY_THRESHOLD = 2
HEALTHY_THRESHOLD = 2  # Envoy needs one success for a host it has just learned of
# local-app: loopback and cheap, so often, with or without traffic.
LOCAL_CHECK_INTERVAL_S = 1.0
LOCAL_CHECK_TIMEOUT_S = 0.5
# Outlier detection on live traffic.
CONSECUTIVE_GATEWAY_FAILURES = 3
CONSECUTIVE_5XX = 5
BASE_EJECTION_S = 10.0
MAX_EJECTION_PERCENT = 50
# Retries that are safe for any method: the request never reached an app.
SAFE_RETRY_ON = "connect-failure,refused-stream,reset-before-request,retriable-headers"
SAFE_RETRIES = 2
APP_UNAVAILABLE_HEADER = "x-meshgate-app-unavailable"
NOT_SENT_FLAGS = ("UF", "UH", "UO")  # the inbound side never sent the request to the app


def service_health_checks(service: str, grpc: bool) -> list[health_check_pb2.HealthCheck]:
    """The active health check of `svc/<service>` (HTTP/2 for gRPC services, whose
    clusters negotiate h2). Host: the service name (Envoy's default, the cluster
    name `svc/<name>`, is not a valid Host and gets a 400)."""
    http = health_check_pb2.HealthCheck.HttpHealthCheck(host=service, path=HEALTH_PATH)
    if grpc:
        http.codec_client_type = http_pb2.HTTP2
    return [
        health_check_pb2.HealthCheck(
            timeout=seconds(SERVICE_CHECK_TIMEOUT_S),
            interval=seconds(SERVICE_CHECK_INTERVAL_S),
            interval_jitter=seconds(SERVICE_CHECK_INTERVAL_S / 5),
            no_traffic_interval=seconds(IDLE_CHECK_INTERVAL_S),
            no_traffic_healthy_interval=seconds(IDLE_HEALTHY_CHECK_INTERVAL_S),
            unhealthy_interval=seconds(UNHEALTHY_CHECK_INTERVAL_S),
            unhealthy_threshold=wrappers_pb2.UInt32Value(value=UNHEALTHY_THRESHOLD),
            healthy_threshold=wrappers_pb2.UInt32Value(value=HEALTHY_THRESHOLD),
            http_health_check=http,
        )
    ]


def outlier_detection() -> outlier_detection_pb2.OutlierDetection:
    return outlier_detection_pb2.OutlierDetection(
        consecutive_5xx=wrappers_pb2.UInt32Value(value=CONSECUTIVE_5XX),
        consecutive_gateway_failure=wrappers_pb2.UInt32Value(value=CONSECUTIVE_GATEWAY_FAILURES),
        enforcing_consecutive_gateway_failure=wrappers_pb2.UInt32Value(value=100),
        interval=seconds(SERVICE_CHECK_INTERVAL_S),
        base_ejection_time=seconds(BASE_EJECTION_S),
        max_ejection_percent=wrappers_pb2.UInt32Value(value=MAX_EJECTION_PERCENT),
    )


def local_app_health_checks() -> list[health_check_pb2.HealthCheck]:
    """`local-app`: can the app accept a connection? (TCP connect, nothing sent)."""
    interval = seconds(LOCAL_CHECK_INTERVAL_S)
    return [
        health_check_pb2.HealthCheck(
            timeout=seconds(LOCAL_CHECK_TIMEOUT_S),
            interval=interval,
            no_traffic_interval=interval,
            unhealthy_threshold=wrappers_pb2.UInt32Value(value=UNHEALTHY_THRESHOLD),
            healthy_threshold=wrappers_pb2.UInt32Value(value=1),
            tcp_health_check=health_check_pb2.HealthCheck.TcpHealthCheck(),
        )
    ]


def inbound_health_filter() -> hcm.HttpFilter:
    """Answers `HEALTH_PATH` on the inbound listener: 200 while `local-app` is healthy."""
    config = hc_filter.HealthCheck(
        pass_through_mode=wrappers_pb2.BoolValue(value=False),
        headers=[
            rc.HeaderMatcher(name=":path", string_match=string_pb2.StringMatcher(exact=HEALTH_PATH))
        ],
    )
    config.cluster_min_healthy_percentages[LOCAL_APP_CLUSTER].CopyFrom(percent_pb2.Percent(value=100.0))
    return hcm.HttpFilter(name=HEALTH_FILTER, typed_config=pack(config))


def safe_retry_policy() -> rc.RetryPolicy:
    """Retry on another instance what never reached an app (see the module doc)."""
    return rc.RetryPolicy(
        retry_on=SAFE_RETRY_ON,
        num_retries=wrappers_pb2.UInt32Value(value=SAFE_RETRIES),
        retry_host_predicate=[
            rc.RetryPolicy.RetryHostPredicate(
                name=PREVIOUS_HOSTS, typed_config=pack(previous_hosts_pb2.PreviousHostsPredicate())
            )
        ],
        host_selection_retry_max_attempts=3,
        retriable_headers=[rc.HeaderMatcher(name=APP_UNAVAILABLE_HEADER, present_match=True)],
    )


def app_unavailable_reply() -> hcm.LocalReplyConfig:
    """The inbound HCM marks its own 503s for requests its app never saw, so callers
    may retry them elsewhere (see `safe_retry_policy`)."""
    return hcm.LocalReplyConfig(
        mappers=[
            hcm.ResponseMapper(
                filter=accesslog_pb2.AccessLogFilter(
                    response_flag_filter=accesslog_pb2.ResponseFlagFilter(flags=list(NOT_SENT_FLAGS))
                ),
                headers_to_add=[
                    base_pb2.HeaderValueOption(
                        header=base_pb2.HeaderValue(key=APP_UNAVAILABLE_HEADER, value="1"),
                        append_action=base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD,
                    )
                ],
            )
        ]
    )

