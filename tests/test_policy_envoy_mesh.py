"""Policies end to end: `meshgate serve` (subprocess), real sidecars, changes live.

    client -> web-1 (outbound) -> mTLS -> orders-1 (inbound RBAC) -> app orders
    client -> other-1 (outbound)        (no policy names other: default deny)

The rules are made with the CLI while everything runs; each change must reach
the Envoys without a restart (same PIDs). Waits are bounded polls; no test
asserts how long a change took.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from click.testing import CliRunner

from meshgate.ca.identity import IdentityIssuer
from meshgate.ca.keys import load_keybox
from meshgate.cli import cli
from meshgate.fleet.app import App
from meshgate.fleet.envoy import EnvoyProcess, free_port
from meshgate.store.db import open_store
from tests.policy_envoy_kit import http_call, mtls_call, wait_until
from tests.xds_support import instance

pytestmark = pytest.mark.envoy
TD = "example.org"
DENY_STAT = "http.inbound.rbac.deny.policy.{}.denied"
AUDIT_STAT = "http.inbound.rbac.deny_audit.policy.{}.shadow_denied"
DEFAULT_DENY_STAT = "http.inbound.rbac.allow.denied"


@dataclass
class Mesh:
    db: Path
    work: Path
    envoys: dict[str, EnvoyProcess]
    outbound: dict[str, int]
    orders_inbound: int
    apps: list[App] = field(default_factory=list)

    def cli(self, *args: str) -> str:
        r = CliRunner().invoke(cli, ["--db", str(self.db), *args], catch_exceptions=False)
        assert r.exit_code == 0, r.output
        return r.output

    def call(self, caller: str, path: str) -> int:
        return http_call(self.outbound[caller], "orders", path)[0]

    def stat(self, name: str) -> int:
        return self.envoys["orders-1"].stat(name)

    def pids(self) -> dict[str, int]:
        return {n: e.pid for n, e in self.envoys.items() if e.proc and e.proc.poll() is None}


def _serve(db: Path, xds_port: int, admin_port: int, log: Path) -> subprocess.Popen[bytes]:
    out = open(log, "wb")  # noqa: SIM115 - owned by the child
    try:
        return subprocess.Popen(
            [str(Path(sys.executable).parent / "meshgate"), "serve", "--listen", f"127.0.0.1:{xds_port}",
             "--admin", f"127.0.0.1:{admin_port}"],
            stdout=out, stderr=subprocess.STDOUT, env={**os.environ, "MESHGATE_DB": str(db)},
        )
    finally:
        out.close()


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    work = tmp_path_factory.mktemp("policy-mesh")
    db = work / "mesh.db"
    runner = CliRunner()

    def run(*args: str) -> str:
        r = runner.invoke(cli, ["--db", str(db), *args], catch_exceptions=False)
        assert r.exit_code == 0, r.output
        return r.output

    run("init", "--trust-domain", TD)  # the mesh default is deny
    for svc, port in (("web", "80"), ("orders", "8080"), ("other", "80")):
        run("service", "add", svc, "--port", port)
    outbound = {"web": free_port(), "other": free_port()}
    orders_inbound = free_port()
    tokens: dict[str, str] = {}
    for name, svc, port in (("web-1", "web", outbound["web"]), ("other-1", "other", outbound["other"]),
                            ("orders-1", "orders", free_port())):
        tokens[name] = json.loads(run("proxy", "add", name, "--service", svc, "--outbound-port",
                                      str(port), "-o", "json"))["token"]
    run("policy", "allow", "--from", "web", "--to", "orders", "--method", "GET", "--path", "/api/**",
        "--id", "web-reads")
    run("policy", "deny", "--from", "*", "--to", "orders", "--path-prefix", "/admin", "--id", "no-admin")
    run("policy", "allow", "--from", "web", "--to", "orders", "--path-prefix", "/admin",
        "--id", "web-admin")  # allowed, but the deny rule wins
    run("policy", "deny", "--from", "web", "--to", "orders", "--path-exact", "/api/legacy", "--audit",
        "--id", "audit-legacy")
    apps = [App("orders").start()]
    engine = open_store(str(db))
    instance(engine, "orders", orders_inbound, apps[0].port, proxy="orders-1")
    engine.dispose()
    xds_port, admin_port = free_port(), free_port()
    server = _serve(db, xds_port, admin_port, work / "serve.log")
    envoys: dict[str, EnvoyProcess] = {}
    try:
        wait_until("meshgate serve", lambda: urllib.request.urlopen(  # noqa: S310
            f"http://127.0.0.1:{admin_port}/healthz", timeout=1).status == 200, 20)
        for name, token in tokens.items():
            out = work / f"{name}.json"
            run("proxy", "bootstrap", name, "--token", token, "--server", f"127.0.0.1:{xds_port}",
                "--admin-port", str(free_port()), "--out", str(out))
            envoys[name] = EnvoyProcess(json.loads(out.read_text()), work, name).start()
        for e in envoys.values():
            e.wait_live()
        m = Mesh(db, work, envoys, outbound, orders_inbound, apps)
        wait_until("web -> orders", lambda: m.call("web", "/api/items") == 200, 20)
        yield m
    finally:
        for e in envoys.values():
            e.stop()
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(5)
        for app in apps:
            app.stop()


def test_allowed_call_reaches_the_app(mesh: Mesh) -> None:
    status, text = http_call(mesh.outbound["web"], "orders", "/api/items?page=2")
    assert status == 200, text
    body = json.loads(text)
    assert body["service"] == "orders" and body["path"] == "/api/items?page=2"
    assert f"URI=spiffe://{TD}/svc/web" in body["headers"]["x-forwarded-client-cert"]


def test_denied_call_is_403_and_envoy_counts_the_rule(mesh: Mesh) -> None:
    for path in ("/admin", "/admin/users", "/api/../admin", "/ADMIN", "//admin"):
        before = mesh.stat(DENY_STAT.format("no-admin"))
        status, body = http_call(mesh.outbound["web"], "orders", path)
        assert status == 403, (path, body)
        assert "RBAC: access denied" in body
        assert mesh.stat(DENY_STAT.format("no-admin")) == before + 1, path
    # not allowed by any rule (POST is not in web-reads): the default decides
    before = mesh.stat(DEFAULT_DENY_STAT)
    assert http_call(mesh.outbound["web"], "orders", "/api/items", "POST")[0] == 403
    assert mesh.stat(DEFAULT_DENY_STAT) == before + 1


def test_policy_check_agrees_with_the_mesh(mesh: Mesh) -> None:
    for path, expected in (("/api/items", 200), ("/admin", 403), ("/api/legacy", 200), ("/x", 403)):
        d = json.loads(mesh.cli("policy", "check", "--from", "web", "--to", "orders", "--path", path,
                                "-o", "json"))
        assert (200 if d["allowed"] else d["status"]) == expected == mesh.call("web", path), (path, d)


def test_audit_rule_passes_and_counts_as_would_deny(mesh: Mesh) -> None:
    before = mesh.stat(AUDIT_STAT.format("audit-legacy"))
    assert mesh.call("web", "/api/legacy") == 200
    assert mesh.stat(AUDIT_STAT.format("audit-legacy")) == before + 1


def test_default_deny_blocks_an_unlisted_pair(mesh: Mesh, tmp_path: Path) -> None:
    # other's sidecar is not even given a route to orders (outbound scoping) ...
    assert mesh.call("other", "/api/items") == 404
    # ... and orders' sidecar refuses other's genuine mesh identity presented directly
    engine = open_store(str(mesh.db))
    try:
        issuer = IdentityIssuer(engine, load_keybox(str(engine.url)))
        ident = issuer.identity_for("tester", f"spiffe://{TD}/svc/other", 600, time.time())
        bundle = issuer.trust_bundle_pem()
    finally:
        engine.dispose()
    before = mesh.stat(DEFAULT_DENY_STAT)
    got = mtls_call(mesh.orders_inbound, tmp_path, bundle, ident.cert_chain_pem, ident.key_pem,
                    "/api/items")
    assert got == 403
    assert mesh.stat(DEFAULT_DENY_STAT) == before + 1


def test_adding_and_removing_policies_takes_effect_without_restart(mesh: Mesh) -> None:
    pids = mesh.pids()
    assert len(pids) == 3
    orders = mesh.envoys["orders-1"]
    modified = orders.stats("^listener_manager\\.listener_modified$")
    assert list(modified) == ["listener_manager.listener_modified"]  # the counter exists
    # a new allow rule: other gets a route and passes orders' RBAC
    mesh.cli("policy", "allow", "--from", "other", "--to", "orders", "--id", "other-orders")
    try:
        wait_until("other -> orders allowed", lambda: mesh.call("other", "/api/items") == 200, 10)
    finally:
        mesh.cli("policy", "remove", "other-orders")
    wait_until("other -> orders blocked again", lambda: mesh.call("other", "/api/items") in (403, 404), 10)
    # removing the deny rule lets web reach /admin (web-admin allows it); adding it back denies
    mesh.cli("policy", "remove", "no-admin")
    try:
        wait_until("/admin allowed", lambda: mesh.call("web", "/admin") == 200, 10)
    finally:
        mesh.cli("policy", "deny", "--from", "*", "--to", "orders", "--path-prefix", "/admin",
                 "--id", "no-admin")
    wait_until("/admin denied again", lambda: mesh.call("web", "/admin") == 403, 10)
    assert mesh.pids() == pids  # no Envoy restarted
    # the rules travel on RDS: the target's listener was never replaced (no drain)
    assert orders.stats("^listener_manager\\.listener_modified$") == modified
    for e in mesh.envoys.values():
        assert e.stat("listener_manager.lds.update_rejected") == 0
