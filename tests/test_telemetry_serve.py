"""Telemetry through the whole product: `meshgate serve` (subprocess, TLS from the mesh
CA), two Envoys bootstrapped with `meshgate proxy bootstrap`, policies made with the
CLI. The config the xDS server sends (listeners, clusters `svc/<name>`, RBAC, access
logs) and the bootstraps' stats sink must give the same numbers as the requests sent,
and the admin port must serve /metrics, the JSON API and `meshgate top`."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from meshgate.cli import cli
from meshgate.fleet.app import App
from meshgate.fleet.envoy import EnvoyProcess, free_port
from meshgate.store.db import open_store
from tests.xds_support import instance

pytestmark = pytest.mark.envoy

# (path, expected status, count), sent web -> orders through web-1's outbound listener
TRAFFIC = [("/anything/a", 200, 12), ("/status/503", 503, 3), ("/anything/admin/x", 403, 4),
           ("/nope", 403, 2)]
TOTAL = sum(n for _, _, n in TRAFFIC)


@dataclass
class Stack:
    db: Path
    admin: str
    outbound: int
    sent: list[int]

    def cli(self, *args: str) -> Any:
        r = CliRunner().invoke(cli, ["--db", str(self.db), *args], catch_exceptions=False)
        assert r.exit_code == 0, r.output
        return r

    def get(self, path: str) -> Any:
        with urllib.request.urlopen(f"http://{self.admin}{path}", timeout=5) as r:  # noqa: S310
            body = r.read()
        return json.loads(body) if path.startswith("/api/") else body.decode()


def wait_for(what: str, check: Callable[[], Any], timeout: float = 20.0) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = check()
        except (urllib.error.URLError, OSError, KeyError, StopIteration) as exc:
            last = exc
        else:
            if last:
                return last
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}; last: {last!r}")


def send(port: int, path: str) -> int:
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", headers={"Host": "orders"})
    try:
        with urllib.request.urlopen(req, timeout=5) as r:  # noqa: S310 - loopback
            r.read()
            return r.status
    except urllib.error.HTTPError as e:
        e.read()
        return e.code


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    work = tmp_path_factory.mktemp("telemetry-serve")
    db = work / "mesh.db"
    runner = CliRunner()

    def run(*args: str) -> str:
        r = runner.invoke(cli, ["--db", str(db), *args], catch_exceptions=False)
        assert r.exit_code == 0, r.output
        return r.output

    run("init", "--trust-domain", "example.org")  # default deny
    run("service", "add", "web", "--port", "80")
    run("service", "add", "orders", "--port", "8080")
    run("policy", "allow", "--from", "web", "--to", "orders", "--path-prefix", "/anything",
        "--path-prefix", "/status", "--id", "web-reads-orders")
    run("policy", "deny", "--from", "*", "--to", "orders", "--path-prefix", "/anything/admin",
        "--id", "no-admin")
    web_out, orders_in, orders_out = free_port(), free_port(), free_port()
    tokens = {}
    for name, svc, port in (("web-1", "web", web_out), ("orders-1", "orders", orders_out)):
        tokens[name] = json.loads(run("proxy", "add", name, "--service", svc,
                                      "--outbound-port", str(port), "-o", "json"))["token"]
    app = App("orders").start()
    engine = open_store(str(db))
    instance(engine, "orders", orders_in, app.port, proxy="orders-1")
    engine.dispose()
    xds_port, admin_port = free_port(), free_port()
    env = {**os.environ, "MESHGATE_DB": str(db)}
    log = open(work / "serve.log", "wb")  # noqa: SIM115 - closed in teardown
    server = subprocess.Popen(
        [str(Path(sys.executable).parent / "meshgate"), "serve", "--listen",
         f"127.0.0.1:{xds_port}", "--admin", f"127.0.0.1:{admin_port}"],
        stdout=log, stderr=subprocess.STDOUT, env=env)
    envoys: list[EnvoyProcess] = []
    try:
        wait_for("meshgate serve", lambda: urllib.request.urlopen(  # noqa: S310
            f"http://127.0.0.1:{admin_port}/healthz", timeout=1).status == 200)
        for name in ("web-1", "orders-1"):
            out = work / f"{name}.json"
            run("proxy", "bootstrap", name, "--token", tokens[name], "--server",
                f"127.0.0.1:{xds_port}", "--admin-port", str(free_port()), "--out", str(out))
            boot = json.loads(out.read_text())
            boot["stats_flush_interval"] = "1s"  # the default 5 s: the test need not wait
            envoys.append(EnvoyProcess(boot, work, name).start())
        for e in envoys:
            e.wait_live()
        wait_for("a routed request", lambda: send(web_out, "/anything/warmup") == 200)
        sent = [send(web_out, path) for path, _, n in TRAFFIC for _ in range(n)]
        yield Stack(db, f"127.0.0.1:{admin_port}", web_out, sent)
    finally:
        for e in envoys:
            e.stop()
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(5)
        log.close()
        app.stop()


def test_traffic_passes_as_the_policies_say(stack: Stack) -> None:
    assert stack.sent == [status for _, status, n in TRAFFIC for _ in range(n)]


def test_top_reports_the_edge_from_the_served_config(stack: Stack) -> None:
    def edge() -> dict[str, Any] | None:
        r = stack.cli("top", "--once", "--output", "json", "--admin", stack.admin)
        rows = [e for e in json.loads(r.output) if (e["caller"], e["callee"]) == ("web", "orders")]
        return rows[0] if rows and rows[0]["requests_total"] == TOTAL + 1 else None

    e = wait_for("web -> orders in `meshgate top`", edge)
    assert e["status_total"] == {"2xx": 13, "4xx": 6, "5xx": 3}  # with the warm-up request
    assert e["p99_ms"] is not None and e["success_rate"] < 1


def test_denials_reach_events_with_rule_ids(stack: Stack) -> None:
    def rows() -> list[dict[str, Any]] | None:
        out = json.loads(stack.cli("events", "--denied", "--since", "10m", "-o", "json").output)
        return out if len(out) == 6 else None

    events = wait_for("6 denials in the store", rows)
    assert Counter(e["rule_id"] for e in events) == Counter({"no-admin": 4, None: 2})
    assert {(e["caller"], e["callee"], e["proxy"]) for e in events} == {("web", "orders", "orders-1")}


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
    proxies = {p["proxy"]: p for p in stack.get("/api/proxies")["proxies"]}
    for name in ("web-1", "orders-1"):
        p = proxies[name]
        assert p["connected"] is True and p["stats_connected"] is True
        states = {t: s["state"] for t, s in p["types"].items()}
        # orders-1 may call nothing (default deny): no outbound cluster, so no EDS
        assert {"cds", "sds", "lds", "rds"} <= set(states) and set(states.values()) == {"ACK"}
        assert p["cert_expiry"] > time.time()
    assert stack.get("/").startswith("<!doctype html>")
