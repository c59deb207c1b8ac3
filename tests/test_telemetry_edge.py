"""Telemetry at the edge: a real gateway Envoy and a sidecar, served by `meshgate serve`.

JWT and rate-limit denials happen at the gateway, before routing: they must
reach `meshgate events` with the route, the service behind it and the reason,
count against the gateway -> service edge (not one edge per client address),
and the gateway's traffic to the service shows as an edge in `meshgate top`.
"""

from __future__ import annotations

import json
import urllib.request
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest

from meshgate.fleet.envoy import free_port
from tests.edge_kit import GatewayFleet
from tests.mesh_kit import wait_for

pytestmark = pytest.mark.envoy


class Edge(GatewayFleet):
    routes: dict[str, str]  # prefix -> route id

    @property
    def admin(self) -> str:
        return f"127.0.0.1:{self.server.admin}"


@pytest.fixture(scope="module")
def edge(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Edge]:
    wd = tmp_path_factory.mktemp("telemetry-edge")
    with Edge(wd / "meshgate.db", wd) as e:
        gw_token = e.gateway()
        e.cli("edge", "route", "add", "public", "--host", "api.example.com", "--prefix",
              "/reports", "--to", "orders", "--auth", "none", "--rate", "2/m")
        e.routes = {r["prefix"]: r["id"] for r in e.cli_json("edge", "route", "list")}
        app = e.app("orders")
        sidecar_token = e.sidecar("orders-1", "orders", free_port())
        e.instance("orders", free_port(), app.port, proxy="orders-1")
        e.serve("--log-level", "warning")
        boots = {name: e.bootstrap(name, token)
                 for name, token in (("orders-1", sidecar_token), ("public", gw_token))}
        for boot in boots.values():
            boot["stats_flush_interval"] = "1s"
        e.start_envoys(boots)
        yield e


def test_gateway_denials_and_traffic(edge: Edge) -> None:
    wait_for("the gateway serving /orders",
             lambda: edge.get("/orders/1", token=edge.signer.token()).status == 200, 30)
    ok = [edge.get("/orders/1", token=edge.signer.token()).status for _ in range(5)]
    missing = [edge.get("/orders/1").status for _ in range(3)]
    wrong_aud = edge.get("/orders/1", token=edge.signer.token({"aud": "other"})).status
    limited = [edge.get("/reports/1").status for _ in range(4)]  # 2 per minute
    assert ok == [200] * 5 and missing == [401] * 3 and wrong_aud == 401
    assert limited.count(200) == 2 and limited.count(429) == 2, limited

    def events() -> list[dict[str, Any]] | None:
        rows = json.loads(edge.cli("events", "--denied", "-o", "json"))
        return rows if len(rows) == 6 else None

    rows = wait_for("6 gateway denials in the store", events, 20)
    by_kind = Counter((r["status"], r["route"], r["callee"], r["proxy"]) for r in rows)
    assert by_kind == Counter({
        (401, edge.routes["/orders"], "orders", "public"): 4,
        (429, edge.routes["/reports"], "orders", "public"): 2})
    reasons = Counter(r["reason"] for r in rows)
    assert reasons == Counter({"jwt: Jwt is missing": 3, "jwt: Audiences in Jwt are not allowed": 1,
                               "rate limited": 2}), reasons
    assert all(r["caller"] == "127.0.0.1" for r in rows)  # the client, in the event

    def edges() -> dict[tuple[str, str], dict[str, Any]] | None:
        r = edge.cli("top", "--once", "-o", "json", "--admin", edge.admin)
        out = {(e["caller"], e["callee"]): e for e in json.loads(r)}
        e = out.get(("public", "orders"))
        return out if e and e["requests_total"] >= 8 and e["denied_total"] == 6 else None

    rows_by_edge = wait_for("the gateway -> orders edge", edges, 20)
    # one edge for the gateway, whatever the clients' addresses; the requests it routed
    assert set(rows_by_edge) == {("public", "orders")}
    assert rows_by_edge[("public", "orders")]["status_total"].get("2xx", 0) >= 8
    with urllib.request.urlopen(f"http://{edge.admin}/metrics", timeout=5) as r:  # noqa: S310
        text = r.read().decode()
    assert 'meshgate_denials_total{callee="orders",caller="public",kind="jwt",rule=""} 4.0' in text
    assert ('meshgate_denials_total{callee="orders",caller="public",kind="ratelimit",rule=""} 2.0'
            in text)
    assert 'meshgate_service_jwt_denied_total{service="public"}' in text
