"""The telemetry hub: what every proxy pushed, aggregated per service and per edge.

Proxies push stats deltas (receivers -> `ingest_metrics`) and denied or
failed requests (-> `ingest_http_logs`). The hub keeps:

- totals since the server started, per caller -> callee edge and per service
  (requests by status class, latency buckets, denials, TLS failures): exact
  sums of what Envoy counted;
- a sliding window (`window_seconds`) of pushes for rates, success rates and
  p50/p90/p99 latency, merged from histogram buckets across proxies;
- the latest denials and failures (bounded), and a queue of denials for the
  store (`DenialWriter`).

A proxy's service is `proxy_service(node_id)` when given, else its node
cluster (bootstraps set node.cluster to the service or gateway name).
Everything runs on the event loop of the gRPC server; nothing blocks.
"""

from __future__ import annotations

import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from meshgate.telemetry.accesslog import Denial, Failure, read_http_entry, read_tcp_entry
from meshgate.telemetry.denials import DenialWriter
from meshgate.telemetry.stats import (
    INBOUND_STAT_PREFIX,
    Buckets,
    NodeSample,
    Traffic,
    read_push,
)

Authenticate = Callable[[str, Mapping[str, str], str], bool]
EdgeKey = tuple[str, str]
QUANTILES = (0.5, 0.9, 0.99)


@dataclass
class ProxySeen:
    node_id: str
    service: str
    kind: str = ""  # sidecar | edge, from the bootstrap's node metadata when given
    streams: int = 0  # open stats streams (a reconnect can overlap the old one)
    connected_at: float | None = None
    first_push_at: float | None = None
    last_push_at: float | None = None
    interval: float | None = None  # seconds between its last two pushes
    pushes: int = 0
    cert_expiry: float | None = None

    @property
    def connected(self) -> bool:
        return self.streams > 0


@dataclass
class _Push:
    at: float
    node_id: str
    sample: NodeSample


@dataclass
class _Totals:
    traffic: Traffic = field(default_factory=Traffic)
    denied: int = 0
    audited: int = 0  # requests an audit-mode rule would have denied (they passed)
    last_denied_at: float | None = None
    failures: int = 0


class TelemetryHub:
    def __init__(
        self,
        *,
        window_seconds: float = 60.0,
        proxy_service: Callable[[str], str | None] | None = None,
        route_service: Callable[[str], str | None] | None = None,
        authenticate: Authenticate | None = None,
        denial_writer: DenialWriter | None = None,
        inbound_prefix: str = INBOUND_STAT_PREFIX,
        keep_recent: int = 500,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.window = float(window_seconds)
        self.proxy_service = proxy_service
        self.route_service = route_service
        self.auth_check = authenticate  # (node_id, metadata, stream) -> bool, or raises
        self.writer = denial_writer
        self.inbound_prefix = inbound_prefix
        self.clock = clock
        self.proxies: dict[str, ProxySeen] = {}
        self._pushes: deque[_Push] = deque()
        self._edges: dict[EdgeKey, _Totals] = {}
        self._services: dict[str, _Totals] = {}
        self._denial_times: deque[tuple[float, EdgeKey, str]] = deque()
        self.denial_rules: Counter[tuple[str, str, str, str]] = Counter()  # caller,callee,kind,rule
        self.recent_denials: deque[Denial] = deque(maxlen=keep_recent)
        self.recent_failures: deque[Failure] = deque(maxlen=keep_recent)
        self.metric_pushes = 0
        self.log_entries = 0

    # ---- identity -------------------------------------------------------------------------

    def authenticate(self, node_id: str, metadata: Mapping[str, str], stream: str) -> bool:
        return True if self.auth_check is None else bool(
            self.auth_check(node_id, metadata, stream))

    def service_of(self, node_id: str, node_cluster: str = "") -> str:
        if self.proxy_service is not None:
            svc = self.proxy_service(node_id)
            if svc:
                return svc
        seen = self.proxies.get(node_id)
        if not node_cluster and seen is not None:
            return seen.service
        return node_cluster or node_id

    def _proxy(self, node_id: str, node_cluster: str = "") -> ProxySeen:
        p = self.proxies.get(node_id)
        if p is None:
            p = self.proxies[node_id] = ProxySeen(node_id, self.service_of(node_id, node_cluster))
        return p

    # ---- stats ----------------------------------------------------------------------------

    def node_seen(self, node_id: str, node_cluster: str, kind: str = "") -> None:
        """A stream's first message named this node (and maybe its kind)."""
        p = self._proxy(node_id, node_cluster)
        if kind:
            p.kind = kind

    def metrics_stream_opened(self, node_id: str, node_cluster: str) -> None:
        p = self._proxy(node_id, node_cluster)
        p.service = self.service_of(node_id, node_cluster)
        p.streams += 1
        p.connected_at = self.clock()
        p.first_push_at = p.last_push_at = p.interval = None

    def metrics_stream_closed(self, node_id: str) -> None:
        p = self.proxies.get(node_id)
        if p is not None:
            p.streams = max(0, p.streams - 1)

    def ingest_metrics(self, node_id: str, families: Iterable, now: float | None = None) -> None:  # type: ignore[type-arg]
        now = self.clock() if now is None else now
        p = self._proxy(node_id)
        if p.last_push_at is not None:
            p.interval = now - p.last_push_at
        if p.first_push_at is None:
            p.first_push_at = now
        p.last_push_at = now
        p.pushes += 1
        self.metric_pushes += 1
        sample = read_push(families, self.inbound_prefix)
        if sample.cert_expiry is not None:
            p.cert_expiry = sample.cert_expiry
        for callee, traffic in sample.outbound.items():
            self._edge_totals((p.service, callee)).traffic.add(traffic)
        if not sample.inbound.empty():
            self._service_totals(p.service).traffic.add(sample.inbound)
        if sample.outbound or not sample.inbound.empty():
            self._pushes.append(_Push(now, node_id, sample))
        self._prune(now)

    def _edge_totals(self, key: EdgeKey) -> _Totals:
        t = self._edges.get(key)
        if t is None:
            t = self._edges[key] = _Totals()
        return t

    def _service_totals(self, service: str) -> _Totals:
        t = self._services.get(service)
        if t is None:
            t = self._services[service] = _Totals()
        return t

    def _prune(self, now: float) -> None:
        horizon = now - self.window
        while self._pushes and self._pushes[0].at < horizon:
            self._pushes.popleft()
        while self._denial_times and self._denial_times[0][0] < horizon:
            self._denial_times.popleft()

    # ---- access logs ----------------------------------------------------------------------

    def ingest_http_logs(self, node_id: str, node_cluster: str, log_name: str,
                         entries: Iterable) -> None:  # type: ignore[type-arg]
        self._ingest(node_id, node_cluster, entries, http=True)

    def ingest_tcp_logs(self, node_id: str, node_cluster: str, log_name: str,
                        entries: Iterable) -> None:  # type: ignore[type-arg]
        self._ingest(node_id, node_cluster, entries, http=False)

    def _ingest(self, node_id: str, node_cluster: str, entries: Iterable, *, http: bool) -> None:  # type: ignore[type-arg]
        now = self.clock()
        service = self._proxy(node_id, node_cluster).service
        for entry in entries:
            self.log_entries += 1
            if http:
                denial, failure = read_http_entry(entry, node_id, service, now)
            else:
                denial, failure = read_tcp_entry(entry, node_id, service, now)
            if denial is not None:
                self.record_denial(self._resolve_route(denial, service), now,
                                   edge_caller=self._edge_caller(denial, node_id))
            if failure is not None:
                self.recent_failures.append(failure)
                if failure.callee:
                    self._service_totals(failure.callee).failures += 1

    def _resolve_route(self, d: Denial, node_service: str) -> Denial:
        # A gateway denies before routing (JWT, rate limit): the route tells the service.
        if d.callee == node_service and d.route and self.route_service is not None:
            svc = self.route_service(d.route)
            if svc:
                return replace(d, callee=svc)
        return d

    def _edge_caller(self, d: Denial, node_id: str) -> str:
        """Who the denial counts against in edges and metrics. A mesh identity is a
        service (or gateway); any other caller (a client address, a foreign
        certificate) is folded into the gateway that refused it, or `external`,
        so that labels stay few."""
        if d.mesh_caller and d.caller:
            return d.caller
        p = self.proxies.get(node_id)
        if p is not None and p.kind == "edge":
            return p.service
        return "external"

    def record_denial(self, d: Denial, now: float | None = None,
                      edge_caller: str | None = None) -> None:
        """Count one denial (the event keeps the raw caller; the edge uses `edge_caller`)."""
        now = self.clock() if now is None else now
        key = (edge_caller or d.caller or "?", d.callee or "?")
        totals = [self._edge_totals(key)]
        if d.callee:
            totals.append(self._service_totals(d.callee))
        for t in totals:
            if d.kind == "audit":  # passed: an audit-mode rule only flagged it
                t.audited += 1
            else:
                t.denied += 1
                t.last_denied_at = d.at
        if d.kind != "audit":
            self._denial_times.append((now, key, d.kind))
        self.denial_rules[(key[0], key[1], d.kind, d.rule_id or "")] += 1
        self.recent_denials.append(d)
        if self.writer is not None:
            self.writer.put(d)

    # ---- views ----------------------------------------------------------------------------

    def _span(self, node_id: str, now: float) -> float:
        """Seconds of traffic the window holds for one proxy (short after it connects)."""
        p = self.proxies.get(node_id)
        if p is None or p.first_push_at is None:
            return self.window
        covered = now - p.first_push_at + (p.interval or 0.0)
        return max(1e-3, min(self.window, covered))

    def _windowed(self, now: float) -> tuple[dict[EdgeKey, tuple[Traffic, float]],
                                              dict[str, tuple[Traffic, float]]]:
        self._prune(now)
        edges: dict[EdgeKey, tuple[Traffic, float]] = {}
        services: dict[str, tuple[Traffic, float]] = {}
        for push in self._pushes:
            svc = self.proxies[push.node_id].service if push.node_id in self.proxies else "?"
            span = self._span(push.node_id, now)
            for callee, t in push.sample.outbound.items():
                cur, rate = edges.get((svc, callee), (Traffic(), 0.0))
                cur.add(t)
                edges[(svc, callee)] = (cur, rate + t.requests / span)
            if not push.sample.inbound.empty():
                cur, rate = services.get(svc, (Traffic(), 0.0))
                cur.add(push.sample.inbound)
                services[svc] = (cur, rate + push.sample.inbound.requests / span)
        return edges, services

    @staticmethod
    def _view(traffic: Traffic | None, rate: float) -> dict[str, Any]:
        t = traffic or Traffic()
        req = t.requests
        out: dict[str, Any] = {
            "rps": round(rate, 3),
            "requests": req,
            "success_rate": None if not req else round(1.0 - t.errors / req, 4),
        }
        for q in QUANTILES:
            v = t.latency.quantile(q)
            out[f"p{int(q * 100)}_ms"] = None if v is None else round(v, 2)
        return out

    @staticmethod
    def _totals_view(t: _Totals) -> dict[str, Any]:
        return {
            "requests_total": t.traffic.requests,
            "status_total": {f"{k}xx": v for k, v in sorted(t.traffic.classes.items())},
            "denied_total": t.denied,
            "audited_total": t.audited,
            "last_denied_at": t.last_denied_at,
            "tls_failures_total": t.traffic.tls_failures,
        }

    def edges(self, now: float | None = None) -> list[dict[str, Any]]:
        """One row per caller -> callee edge seen in stats or denials."""
        now = self.clock() if now is None else now
        windowed, _ = self._windowed(now)
        denied = Counter(k for _, k, _ in self._denial_times)
        rows = []
        for key in sorted(set(self._edges) | set(windowed)):
            traffic, rate = windowed.get(key, (None, 0.0))
            row = {"caller": key[0], "callee": key[1], **self._view(traffic, rate),
                   "denied": denied.get(key, 0),
                   "tls_failures": traffic.tls_failures if traffic else 0}
            row.update(self._totals_view(self._edges.get(key) or _Totals()))
            rows.append(row)
        return rows

    def services(self, now: float | None = None) -> list[dict[str, Any]]:
        """One row per service with inbound traffic, denials or reporting proxies."""
        now = self.clock() if now is None else now
        _, windowed = self._windowed(now)
        names = set(self._services) | set(windowed) | {p.service for p in self.proxies.values()}
        denied = Counter(k[1] for _, k, _ in self._denial_times)
        rows = []
        for name in sorted(names):
            traffic, rate = windowed.get(name, (None, 0.0))
            totals = self._services.get(name) or _Totals()
            row = {"service": name, **self._view(traffic, rate),
                   "denied": denied.get(name, 0),
                   "rbac_denied_total": totals.traffic.rbac_denied,
                   "jwt_denied_total": totals.traffic.jwt_denied,
                   "failures_logged_total": totals.failures,
                   "proxies": sorted(p.node_id for p in self.proxies.values()
                                     if p.service == name and p.connected)}
            row.update(self._totals_view(totals))
            rows.append(row)
        return rows

    def edge_latency_totals(self) -> dict[EdgeKey, Buckets]:
        """Latency buckets per edge since the server started (a cumulative histogram)."""
        return {k: t.traffic.latency for k, t in sorted(self._edges.items())
                if t.traffic.latency.count}

    def proxy_rows(self) -> list[dict[str, Any]]:
        return [
            {"proxy": p.node_id, "service": p.service, "stats_connected": p.connected,
             "last_push_at": p.last_push_at, "pushes": p.pushes, "cert_expiry": p.cert_expiry}
            for p in sorted(self.proxies.values(), key=lambda p: p.node_id)
        ]

    def denials(self, limit: int = 100) -> list[dict[str, Any]]:
        """Newest first, from memory (the store keeps the longer history)."""
        items = list(self.recent_denials)[-limit:]
        return [dict(d.row(), kind=d.kind) for d in reversed(items)]

    def failures(self, limit: int = 100) -> list[dict[str, Any]]:
        items = list(self.recent_failures)[-limit:]
        return [asdict(f) for f in reversed(items)]
