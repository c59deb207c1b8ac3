"""Reading one stats push: which Envoy stats make which mesh aggregates. Pure.

Envoy pushes tag-extracted names with tags as labels (see envoy_config), and
counters as deltas since its previous flush. The stats used:

caller -> callee edge, on the CALLER's sidecar (its outbound cluster `svc/<callee>`):
    cluster.upstream_rq_xx{envoy.cluster_name="svc/<callee>", envoy.response_code_class}
    cluster.upstream_rq_time{envoy.cluster_name="svc/<callee>"}            histogram, ms
    cluster.ssl.connection_error / cluster.ssl.fail_verify_*               TLS failures
service, on the service's own sidecars (the inbound HCM, stat prefix `inbound`):
    http.downstream_rq_xx{envoy.http_conn_manager_prefix="inbound", ...}
    http.downstream_rq_time{envoy.http_conn_manager_prefix="inbound"}      histogram, ms
    http.rbac.denied{... "inbound", envoy.rbac_http_prefix}                 RBAC (all filters)
    http.jwt_authn.denied                                                   JWT (gateways)
    listener.ssl.connection_error / listener.ssl.fail_verify_*             TLS failures
    *.ssl.certificate.expiration_unix_time_seconds                          cert expiry

Denials by rule id, and audit-mode matches, come from access logs, not stats:
stats have no rule id, and a filter's `shadow_denied` counts its enforced
rules too (meshgate's shadow rules are enforced + audit rules).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from meshgate.telemetry import protos

SERVICE_CLUSTER_PREFIX = "svc/"
INBOUND_STAT_PREFIX = "inbound"

L_CLUSTER = "envoy.cluster_name"
L_CLASS = "envoy.response_code_class"
L_HCM = "envoy.http_conn_manager_prefix"
L_LISTENER = "envoy.listener_address"
L_CERT = "envoy.tls_certificate"

CLASSES = ("1", "2", "3", "4", "5")
_TLS_FAILURE_SUFFIXES = ("ssl.connection_error", "ssl.fail_verify_no_cert",
                         "ssl.fail_verify_error", "ssl.fail_verify_san",
                         "ssl.fail_verify_cert_hash")


@dataclass
class Buckets:
    """An interval histogram: cumulative counts per upper bound (ms), plus the total."""

    count: int = 0
    total_ms: float = 0.0
    cumulative: dict[float, int] = field(default_factory=dict)

    def add(self, other: Buckets) -> None:
        self.count += other.count
        self.total_ms += other.total_ms
        for bound, c in other.cumulative.items():
            self.cumulative[bound] = self.cumulative.get(bound, 0) + c

    def quantile(self, q: float) -> float | None:
        """Linear interpolation inside the bucket holding rank q*count (like
        Prometheus' histogram_quantile). None without samples; above the last
        bound, the last bound."""
        if self.count <= 0:
            return None
        rank = q * self.count
        prev_bound, prev_cum = 0.0, 0
        for bound in sorted(self.cumulative):
            cum = self.cumulative[bound]
            if cum >= rank and cum > prev_cum:
                return prev_bound + (bound - prev_bound) * (rank - prev_cum) / (cum - prev_cum)
            prev_bound, prev_cum = bound, cum
        return prev_bound if self.cumulative else None


@dataclass
class Traffic:
    """Requests by status class, latency, and failures, for an edge or a service."""

    classes: dict[str, int] = field(default_factory=dict)  # "2" -> count
    latency: Buckets = field(default_factory=Buckets)
    tls_failures: int = 0
    rbac_denied: int = 0
    jwt_denied: int = 0

    @property
    def requests(self) -> int:
        return sum(self.classes.values())

    @property
    def errors(self) -> int:
        return self.classes.get("5", 0)

    def add(self, other: Traffic) -> None:
        for k, v in other.classes.items():
            self.classes[k] = self.classes.get(k, 0) + v
        self.latency.add(other.latency)
        self.tls_failures += other.tls_failures
        self.rbac_denied += other.rbac_denied
        self.jwt_denied += other.jwt_denied

    def empty(self) -> bool:
        return not (self.requests or self.latency.count or self.tls_failures
                    or self.rbac_denied or self.jwt_denied)


@dataclass
class NodeSample:
    """What one push of one proxy says: outbound edges by callee, and its inbound."""

    outbound: dict[str, Traffic] = field(default_factory=dict)
    inbound: Traffic = field(default_factory=Traffic)
    cert_expiry: float | None = None  # earliest leaf certificate expiry (unix seconds)

    def edge(self, callee: str) -> Traffic:
        t = self.outbound.get(callee)
        if t is None:
            t = self.outbound[callee] = Traffic()
        return t


def _labels(metric) -> dict[str, str]:  # type: ignore[no-untyped-def]
    return {lp.name: lp.value for lp in metric.label}


def _buckets(h) -> Buckets:  # type: ignore[no-untyped-def]
    return Buckets(
        count=int(h.sample_count),
        total_ms=float(h.sample_sum),
        cumulative={float(b.upper_bound): int(b.cumulative_count) for b in h.bucket},
    )


def _callee(labels: dict[str, str]) -> str | None:
    name = labels.get(L_CLUSTER, "")
    if name.startswith(SERVICE_CLUSTER_PREFIX) and len(name) > len(SERVICE_CLUSTER_PREFIX):
        return name[len(SERVICE_CLUSTER_PREFIX):]
    return None


def read_push(families: Iterable, inbound_prefix: str = INBOUND_STAT_PREFIX) -> NodeSample:  # type: ignore[type-arg]
    """The mesh-relevant part of one push (zero deltas and other stats skipped)."""
    s = NodeSample()
    for fam in families:
        name = fam.name
        ftype = fam.type
        if ftype == protos.COUNTER:
            if not (name.startswith("cluster.") or name.startswith("http.")
                    or name.startswith("listener.")):
                continue
            for m in fam.metric:
                value = int(m.counter.value)
                if value <= 0:
                    continue
                _counter(s, name, _labels(m), value, inbound_prefix)
        elif ftype == protos.HISTOGRAM:
            if name == "cluster.upstream_rq_time":
                for m in fam.metric:
                    if m.histogram.sample_count:
                        callee = _callee(_labels(m))
                        if callee:
                            s.edge(callee).latency.add(_buckets(m.histogram))
            elif name == "http.downstream_rq_time":
                for m in fam.metric:
                    if m.histogram.sample_count and _labels(m).get(L_HCM) == inbound_prefix:
                        s.inbound.latency.add(_buckets(m.histogram))
        elif ftype == protos.GAUGE and name.endswith("ssl.certificate.expiration_unix_time_seconds"):
            for m in fam.metric:
                cert = _labels(m).get(L_CERT, "")
                if "ca_cert" in cert or cert.startswith("trust-bundle") or m.gauge.value <= 0:
                    continue
                exp = float(m.gauge.value)
                s.cert_expiry = exp if s.cert_expiry is None else min(s.cert_expiry, exp)
    return s


def _counter(s: NodeSample, name: str, labels: dict[str, str], value: int,
             inbound_prefix: str) -> None:
    if name == "cluster.upstream_rq_xx":
        callee = _callee(labels)
        cls = labels.get(L_CLASS, "")
        if callee and cls in CLASSES:
            t = s.edge(callee)
            t.classes[cls] = t.classes.get(cls, 0) + value
    elif name.startswith("cluster.") and name.endswith(_TLS_FAILURE_SUFFIXES):
        callee = _callee(labels)
        if callee:
            s.edge(callee).tls_failures += value
    elif name.startswith("listener.") and name.endswith(_TLS_FAILURE_SUFFIXES):
        if labels.get(L_LISTENER, "admin") != "admin":
            s.inbound.tls_failures += value
    elif name == "http.jwt_authn.denied":
        s.inbound.jwt_denied += value
    elif labels.get(L_HCM) == inbound_prefix:
        if name == "http.downstream_rq_xx":
            cls = labels.get(L_CLASS, "")
            if cls in CLASSES:
                s.inbound.classes[cls] = s.inbound.classes.get(cls, 0) + value
        elif name == "http.rbac.denied":  # summed over the deny and allow filters
            s.inbound.rbac_denied += value
