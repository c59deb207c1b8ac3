"""Telemetry at the edge: a real gateway Envoy and a sidecar, served by `meshgate serve`.

JWT and rate-limit denials happen at the gateway, before routing: they must
reach `meshgate events` with the route, the service behind it and the reason,
count against the gateway -> service edge (not one edge per client address),
and the gateway's traffic to the service shows as an edge in `meshgate top`.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.request
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from meshgate.cli import cli
from meshgate.fleet.app import App
from meshgate.fleet.envoy import EnvoyProcess, free_port
from meshgate.store.db import open_store
from meshgate.store.instances import add_instance
from meshgate.store.txn import write
from tests.edge_kit import Reply, Signer, https, jwks, wait_for

pytestmark = pytest.mark.envoy

ISSUER = "https://idp.example.com/"
MESHGATE = str(Path(sys.executable).parent / "meshgate")


def meshgate(db: Path, *args: str) -> str:
    r = CliRunner().invoke(cli, ["--db", str(db), *args], catch_exceptions=False)
    assert r.exit_code == 0, (args, r.output)
    return r.output


def token_of(output: str) -> str:
    return next(w for w in output.split() if w.startswith("mgt_"))


@dataclass
class Edge:
    db: Path
    admin: str
    gateway_port: int
    root_pem: str
    signer: Signer
    routes: dict[str, str]  # prefix -> route id

    def get(self, path: str, **kw: Any) -> Reply:
        return https(self.gateway_port, path, ca_pem=self.root_pem, **kw)


@pytest.fixture(scope="module")
def edge(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Edge]:
    wd = tmp_path_factory.mktemp("telemetry-edge")
    db = wd / "meshgate.db"
    signer = Signer.es256()
    (wd / "jwks.json").write_text(jwks(signer))
    xds_port, gw_port, admin_port = free_port(), free_port(), free_port()
    meshgate(db, "init", "--trust-domain", "example.org")
    meshgate(db, "service", "add", "orders", "--port", "8080")
    meshgate(db, "jwt", "add", "idp", "--issuer", ISSUER, "--audience", "orders-api",
             "--jwks-file", str(wd / "jwks.json"))
    gw_token = token_of(meshgate(db, "edge", "add", "public", "--listen", f"127.0.0.1:{gw_port}"))
    meshgate(db, "edge", "cert", "issue", "--gateway", "public", "--host", "api.example.com",
             "--ca-out", str(wd / "root.pem"))
    meshgate(db, "edge", "route", "add", "public", "--host", "api.example.com", "--prefix",
             "/orders", "--to", "orders", "--auth", "jwt:idp")
    meshgate(db, "edge", "route", "add", "public", "--host", "api.example.com", "--prefix",
             "/reports", "--to", "orders", "--auth", "none", "--rate", "2/m")
    meshgate(db, "policy", "allow", "--from", "edge:public", "--to", "orders")
    routes = {r["prefix"]: r["id"] for r in json.loads(
        meshgate(db, "edge", "route", "list", "-o", "json"))}
    app = App("orders").start()
    sidecar_token = token_of(meshgate(db, "proxy", "add", "orders-1", "--service", "orders",
                                      "--outbound-port", str(free_port())))
    engine = open_store(str(db))
    try:
        with write(engine, "instance of orders behind orders-1") as w:
            add_instance(w, "orders", "127.0.0.1", free_port(), app.port, proxy="orders-1")
    finally:
        engine.dispose()
    server = subprocess.Popen(
        [MESHGATE, "--db", str(db), "serve", "--listen", f"127.0.0.1:{xds_port}",
         "--admin", f"127.0.0.1:{admin_port}", "--log-level", "warning"],
        stdout=subprocess.DEVNULL, stderr=open(wd / "serve.log", "wb"),  # noqa: SIM115
        env={**os.environ, "MESHGATE_ACTOR": "test@meshgate"})
    envoys: list[EnvoyProcess] = []
    try:
        wait_for(lambda: _up(admin_port), 20, "meshgate serve")
        for name, token in (("orders-1", sidecar_token), ("public", gw_token)):
            out = wd / f"{name}.json"
            meshgate(db, "proxy", "bootstrap", name, "--token", token, "--server",
                     f"127.0.0.1:{xds_port}", "--admin-port", str(free_port()), "--out", str(out))
            boot = json.loads(out.read_text())
            boot["stats_flush_interval"] = "1s"
            envoys.append(EnvoyProcess(boot, wd, name).start())
        for e in envoys:
            e.wait_live()
        yield Edge(db, f"127.0.0.1:{admin_port}", gw_port, (wd / "root.pem").read_text(),
                   signer, routes)
    finally:
        for e in envoys:
            e.stop()
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(5)
        app.stop()


def _up(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1) as r:  # noqa: S310
            return r.status == 200
    except OSError:
        return False


def test_gateway_denials_and_traffic(edge: Edge) -> None:
    wait_for(lambda: edge.get("/orders/1", token=edge.signer.token()).status == 200, 30,
             "the gateway serving /orders")
    ok = [edge.get("/orders/1", token=edge.signer.token()).status for _ in range(5)]
    missing = [edge.get("/orders/1").status for _ in range(3)]
    wrong_aud = edge.get("/orders/1", token=edge.signer.token({"aud": "other"})).status
    limited = [edge.get("/reports/1").status for _ in range(4)]  # 2 per minute
    assert ok == [200] * 5 and missing == [401] * 3 and wrong_aud == 401
    assert limited.count(200) == 2 and limited.count(429) == 2, limited

    def events() -> list[dict[str, Any]] | None:
        rows = json.loads(meshgate(edge.db, "events", "--denied", "-o", "json"))
        return rows if len(rows) == 6 else None

    rows = wait_for(events, 20, "6 gateway denials in the store")
    by_kind = Counter((r["status"], r["route"], r["callee"], r["proxy"]) for r in rows)
    assert by_kind == Counter({
        (401, edge.routes["/orders"], "orders", "public"): 4,
        (429, edge.routes["/reports"], "orders", "public"): 2})
    reasons = Counter(r["reason"] for r in rows)
    assert reasons == Counter({"jwt: Jwt is missing": 3, "jwt: Audiences in Jwt are not allowed": 1,
                               "rate limited": 2}), reasons
    assert all(r["caller"] == "127.0.0.1" for r in rows)  # the client, in the event

    def edges() -> dict[tuple[str, str], dict[str, Any]] | None:
        r = meshgate(edge.db, "top", "--once", "-o", "json", "--admin", edge.admin)
        out = {(e["caller"], e["callee"]): e for e in json.loads(r)}
        e = out.get(("public", "orders"))
        return out if e and e["requests_total"] >= 8 and e["denied_total"] == 6 else None

    rows_by_edge = wait_for(edges, 20, "the gateway -> orders edge")
    # one edge for the gateway, whatever the clients' addresses; the requests it routed
    assert set(rows_by_edge) == {("public", "orders")}
    assert rows_by_edge[("public", "orders")]["status_total"].get("2xx", 0) >= 8
    with urllib.request.urlopen(f"http://{edge.admin}/metrics", timeout=5) as r:  # noqa: S310
        text = r.read().decode()
    assert 'meshgate_denials_total{callee="orders",caller="public",kind="jwt",rule=""} 4.0' in text
    assert ('meshgate_denials_total{callee="orders",caller="public",kind="ratelimit",rule=""} 2.0'
            in text)
    assert 'meshgate_service_jwt_denied_total{service="public"}' in text
