"""Prometheus metrics of the control plane and of the mesh (`/metrics`).

A registry of its own (never prometheus-client's global one), so several
servers in one process (tests) do not collide.

The xDS server reports what it does through `ControlPlaneMetrics`:

    metrics.proxy_connected("orders-1")       # ADS stream up
    metrics.pushed("orders-1", "cds")          # response sent
    metrics.acked("orders-1", "cds")           # ACK: observes push -> ACK latency
    metrics.nacked("orders-1", "cds")
    metrics.proxy_disconnected("orders-1")
    metrics.set_cert_expiry("orders-1", not_after_unix)

The mesh aggregates (per edge and per service) are read from the telemetry
hub at scrape time.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from meshgate.telemetry.hub import TelemetryHub

_TYPE_NAMES = {
    "Cluster": "cds", "ClusterLoadAssignment": "eds", "Listener": "lds",
    "RouteConfiguration": "rds", "Secret": "sds",
}
ACK_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


def short_type(type_: str) -> str:
    """`type.googleapis.com/envoy.config.cluster.v3.Cluster` -> `cds`; `cds` stays."""
    last = type_.rsplit("/", 1)[-1].rsplit(".", 1)[-1]
    return _TYPE_NAMES.get(last, type_)


class ControlPlaneMetrics:
    def __init__(self, hub: TelemetryHub | None = None) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.connected = Gauge("meshgate_proxies_connected",
                               "Proxies with an open ADS stream.", registry=r)
        self.pushes = Counter("meshgate_xds_pushes", "xDS responses sent.", ["type"], registry=r)
        self.acks = Counter("meshgate_xds_acks", "xDS responses ACKed.", ["type"], registry=r)
        self.nacks = Counter("meshgate_xds_nacks", "xDS responses NACKed.", ["type"], registry=r)
        self.ack_latency = Histogram(
            "meshgate_xds_push_ack_seconds", "Time from sending an xDS response to its ACK.",
            ["type"], buckets=ACK_BUCKETS, registry=r)
        self.cert_expiry = Gauge(
            "meshgate_certificate_expiry_timestamp_seconds",
            "Expiry (unix time) of the workload certificate last sent to each proxy.",
            ["proxy"], registry=r)
        self.ca_expiry = Gauge("meshgate_ca_expiry_timestamp_seconds",
                               "Expiry (unix time) of each CA certificate in the trust bundle.",
                               ["fingerprint"], registry=r)
        self._connected: set[str] = set()
        self._sent: dict[tuple[str, str], float] = {}
        self.cert_not_after: dict[str, float] = {}
        self.hub: TelemetryHub | None = None
        if hub is not None:
            self.attach_hub(hub)

    def attach_hub(self, hub: TelemetryHub) -> None:
        if self.hub is None:
            self.hub = hub
            self.registry.register(MeshCollector(hub))

    # ---- called by the xDS server ---------------------------------------------------------

    def proxy_connected(self, proxy: str) -> None:
        self._connected.add(proxy)
        self.connected.set(len(self._connected))

    def proxy_disconnected(self, proxy: str) -> None:
        self._connected.discard(proxy)
        self.clear_cert_expiry(proxy)  # no stale series for a proxy that left
        self.connected.set(len(self._connected))
        for key in [k for k in self._sent if k[0] == proxy]:
            del self._sent[key]

    def pushed(self, proxy: str, type_: str, now: float | None = None) -> None:
        t = short_type(type_)
        self.pushes.labels(t).inc()
        self._sent[(proxy, t)] = time.monotonic() if now is None else now

    def acked(self, proxy: str, type_: str, now: float | None = None) -> float | None:
        """Count the ACK; returns (and observes) seconds since the push it answers."""
        t = short_type(type_)
        self.acks.labels(t).inc()
        sent = self._sent.pop((proxy, t), None)
        if sent is None:
            return None
        elapsed = max(0.0, (time.monotonic() if now is None else now) - sent)
        self.ack_latency.labels(t).observe(elapsed)
        return elapsed

    def nacked(self, proxy: str, type_: str) -> None:
        t = short_type(type_)
        self.nacks.labels(t).inc()
        self._sent.pop((proxy, t), None)

    def set_cert_expiry(self, proxy: str, not_after: float) -> None:
        self.cert_not_after[proxy] = not_after
        self.cert_expiry.labels(proxy).set(not_after)

    def clear_cert_expiry(self, proxy: str) -> None:
        if self.cert_not_after.pop(proxy, None) is not None:
            self.cert_expiry.remove(proxy)

    def set_ca_expiry(self, fingerprint: str, not_after: float) -> None:
        self.ca_expiry.labels(fingerprint).set(not_after)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class MeshCollector(Collector):
    """Per-edge and per-service aggregates from the hub, computed at scrape time."""

    def __init__(self, hub: TelemetryHub) -> None:
        self.hub = hub

    def describe(self) -> list[Metric]:
        return []  # dynamic: do not run collect() at registration

    def collect(self) -> Iterator[Metric]:
        hub = self.hub
        now = hub.clock()
        traffic = _Traffic("meshgate_edge", ["caller", "callee"], (
            "Requests from caller to callee by status class (caller's sidecar).",
            "Request rate over the telemetry window.",
            "Non-5xx share over the telemetry window.",
            "Latency quantiles over the window."))
        e_den = CounterMetricFamily("meshgate_edge_denied", "Denied requests (access logs).",
                                    labels=["caller", "callee"])
        e_tls = CounterMetricFamily("meshgate_edge_tls_failures",
                                    "Upstream TLS failures from caller to callee.",
                                    labels=["caller", "callee"])
        e_hist = HistogramMetricFamily("meshgate_edge_request_duration_ms",
                                       "Request duration seen by the caller's sidecar.",
                                       labels=["caller", "callee"])
        for row in hub.edges(now):
            lab = [row["caller"], row["callee"]]
            traffic.add(lab, row)
            e_den.add_metric(lab, row["denied_total"])
            e_tls.add_metric(lab, row["tls_failures_total"])
        for (caller, callee), buckets in hub.edge_latency_totals().items():
            bs = [(_le(b), float(c)) for b, c in sorted(buckets.cumulative.items())]
            bs.append(("+Inf", float(buckets.count)))
            e_hist.add_metric([caller, callee], bs, buckets.total_ms)
        yield from (*traffic.families(), e_den, e_tls, e_hist)
        yield from self._services(now)
        den = CounterMetricFamily("meshgate_denials", "Denials by kind and rule id.",
                                  labels=["caller", "callee", "kind", "rule"])
        for (caller, callee, kind, rule), n in sorted(hub.denial_rules.items()):
            den.add_metric([caller, callee, kind, rule], n)
        yield den
        exp = GaugeMetricFamily("meshgate_proxy_certificate_expiry_timestamp_seconds",
                                "Expiry (unix time) of the certificate each proxy presents, "
                                "as its Envoy reports it.", labels=["proxy"])
        for p in sorted(hub.proxies.values(), key=lambda p: p.node_id):
            if p.cert_expiry is not None:
                exp.add_metric([p.node_id], p.cert_expiry)
        yield exp
        rep = GaugeMetricFamily("meshgate_telemetry_proxies_reporting",
                                "Proxies with an open stats stream.")
        rep.add_metric([], sum(1 for p in hub.proxies.values() if p.connected))
        yield rep
        yield CounterMetricFamily("meshgate_telemetry_stats_pushes", "Stats pushes received.",
                                  value=hub.metric_pushes)
        yield CounterMetricFamily("meshgate_telemetry_log_entries",
                                  "Access-log entries received.", value=hub.log_entries)
        if hub.writer is not None:
            yield CounterMetricFamily("meshgate_denial_events_dropped",
                                      "Denials not written to the store (queue full or error).",
                                      value=hub.writer.dropped)

    def _services(self, now: float) -> Iterator[Metric]:
        traffic = _Traffic("meshgate_service", ["service"], (
            "Inbound requests by status class (service's sidecars).",
            "Inbound request rate over the window.",
            "Inbound non-5xx share over the window.",
            "Inbound latency quantiles over the window."))
        s_rbac = CounterMetricFamily("meshgate_service_rbac_denied",
                                     "Requests denied by RBAC at the service's sidecars.",
                                     labels=["service"])
        s_jwt = CounterMetricFamily("meshgate_service_jwt_denied",
                                    "Requests denied by JWT authentication.", labels=["service"])
        s_tls = CounterMetricFamily("meshgate_service_tls_failures",
                                    "Inbound TLS handshake failures.", labels=["service"])
        for row in self.hub.services(now):
            lab = [row["service"]]
            traffic.add(lab, row)
            s_rbac.add_metric(lab, row["rbac_denied_total"])
            s_jwt.add_metric(lab, row["jwt_denied_total"])
            s_tls.add_metric(lab, row["tls_failures_total"])
        yield from (*traffic.families(), s_rbac, s_jwt, s_tls)


class _Traffic:
    """The families edges and services both have, from their rows (TelemetryHub.edges,
    .services): requests by status class, request rate, success ratio, latency quantiles."""

    def __init__(self, prefix: str, labels: list[str], helps: tuple[str, str, str, str]) -> None:
        self.requests = CounterMetricFamily(f"{prefix}_requests", helps[0], labels=[*labels, "code_class"])
        self.rps = GaugeMetricFamily(f"{prefix}_requests_per_second", helps[1], labels=labels)
        self.success = GaugeMetricFamily(f"{prefix}_success_ratio", helps[2], labels=labels)
        self.latency = GaugeMetricFamily(f"{prefix}_latency_ms", helps[3], labels=[*labels, "quantile"])

    def add(self, lab: list[str], row: dict[str, Any]) -> None:
        for cls, v in row["status_total"].items():
            self.requests.add_metric(lab + [cls], v)
        self.rps.add_metric(lab, row["rps"])
        if row["success_rate"] is not None:
            self.success.add_metric(lab, row["success_rate"])
        for q in ("p50", "p90", "p99"):
            if row[f"{q}_ms"] is not None:
                self.latency.add_metric(lab + ["0." + q[1:]], row[f"{q}_ms"])

    def families(self) -> tuple[Metric, ...]:
        return self.requests, self.rps, self.success, self.latency


def _le(bound: float) -> str:
    return repr(float(bound))
