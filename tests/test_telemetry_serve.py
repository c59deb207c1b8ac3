"""Telemetry through the whole product: `meshgate serve` (subprocess, TLS from the mesh
CA), two Envoys bootstrapped with `meshgate proxy bootstrap`, policies made with the
CLI (telemetry_support.serve_stack). The config the xDS server sends (listeners,
clusters `svc/<name>`, RBAC, access logs) and the bootstraps' stats sink must give the
same numbers as the requests sent; the admin port serves /metrics, the JSON API and
`meshgate top`."""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
from telemetry_support import SERVE_TRAFFIC, Stack, serve_stack

from tests.mesh_kit import wait_for

pytestmark = pytest.mark.envoy

TOTAL = sum(n for _, _, n in SERVE_TRAFFIC) + 1  # and the warm-up request
BY_CLASS = Counter({"2xx": 1})
for _path, _status, _n in SERVE_TRAFFIC:
    BY_CLASS[f"{_status // 100}xx"] += _n


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with serve_stack(tmp_path_factory.mktemp("telemetry-serve")) as s:
        yield s


def test_traffic_passes_as_the_policies_say(stack: Stack) -> None:
    assert stack.sent == [status for _, status, n in SERVE_TRAFFIC for _ in range(n)]


def test_top_reports_the_edge_from_the_served_config(stack: Stack) -> None:
    def edge() -> dict[str, Any] | None:
        r = stack.cli("top", "--once", "--output", "json", "--admin", stack.admin)
        rows = [e for e in json.loads(r) if (e["caller"], e["callee"]) == ("web", "orders")]
        return rows[0] if rows and rows[0]["requests_total"] == TOTAL else None

    e = wait_for("web -> orders in `meshgate top`", edge)
    assert e["status_total"] == dict(BY_CLASS)
    assert e["p99_ms"] is not None and e["success_rate"] < 1


def test_denials_reach_events_with_rule_ids(stack: Stack) -> None:
    def rows() -> list[dict[str, Any]] | None:
        out = json.loads(stack.cli("events", "--denied", "--since", "10m", "-o", "json"))
        return out if len(out) == 8 else None

    events = wait_for("8 denials (6 enforced, 2 audit) in the store", rows)
    assert Counter((e["rule_id"], e["status"]) for e in events) == Counter(
        {("no-admin", 403): 4, (None, 403): 2, ("watch", 200): 2})
    assert {(e["caller"], e["callee"], e["proxy"]) for e in events} == {
        ("web", "orders", "orders-1")}


def test_metrics_and_api_show_xds_and_mesh(stack: Stack) -> None:
    text = wait_for("mesh metrics", lambda: (lambda t: t if 'code_class="5xx"} 3.0' in t else None)(
        stack.get("/metrics")))
    assert "meshgate_proxies_connected 2.0" in text
    for t in ("cds", "eds", "sds", "lds", "rds"):
        assert f'meshgate_xds_acks_total{{type="{t}"}}' in text
        assert f'meshgate_xds_push_ack_seconds_count{{type="{t}"}}' in text
    assert 'meshgate_edge_requests_total{callee="orders",caller="web",code_class="5xx"} 3.0' in text
    assert 'meshgate_service_rbac_denied_total{service="orders"} 6.0' in text
    assert "meshgate_ca_expiry_timestamp_seconds{" in text
    assert 'meshgate_proxy_certificate_expiry_timestamp_seconds{proxy="orders-1"}' in text
    # what the server sent and each proxy ACKed over SDS: a leaf valid for the mesh TTL
    sent = [line for line in text.splitlines()
            if line.startswith('meshgate_certificate_expiry_timestamp_seconds{proxy="orders-1"}')]
    assert len(sent) == 1 and float(sent[0].split()[-1]) > time.time()
    proxies = {p["proxy"]: p for p in stack.get("/api/proxies")["proxies"]}
    for name in ("web-1", "orders-1"):
        p = proxies[name]
        assert p["connected"] is True and p["stats_connected"] is True
        states = {t: s["state"] for t, s in p["types"].items()}
        # orders-1 may call nothing (default deny): no outbound cluster, so no EDS
        assert {"cds", "sds", "lds", "rds"} <= set(states) and set(states.values()) == {"ACK"}
        assert p["cert_expiry"] > time.time()
    assert stack.get("/").startswith("<!doctype html>")
