"""Policies end to end: `meshgate serve` (subprocess), real sidecars, changes live.

    client -> web-1 (outbound) -> mTLS -> orders-1 (inbound RBAC) -> app orders
    client -> other-1 (outbound)        (no policy names other: default deny)

The rules are made with the CLI while everything runs; each change must reach
the Envoys without a restart (same PIDs). Waits are bounded polls; no test
asserts how long a change took.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from meshgate.ca.identity import IdentityIssuer
from meshgate.ca.keys import load_keybox
from meshgate.fleet.envoy import free_port
from meshgate.store.db import open_store
from tests.mesh_kit import Fleet, get, tls_get, wait_for

pytestmark = pytest.mark.envoy
TD = "example.org"
DENY_STAT = "http.inbound.rbac.deny.policy.{}.denied"
AUDIT_STAT = "http.inbound.rbac.deny_audit.policy.{}.shadow_denied"
DEFAULT_DENY_STAT = "http.inbound.rbac.allow.denied"


class Mesh(Fleet):
    outbound: dict[str, int]
    orders_inbound: int

    def call(self, caller: str, path: str) -> int:
        return get(self.outbound[caller], "orders", path)[0]

    def stat(self, name: str) -> int:
        return self.envoys["orders-1"].stat(name)

    def pids(self) -> dict[str, int]:
        return {n: e.pid for n, e in self.envoys.items() if e.proc and e.proc.poll() is None}


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    work = tmp_path_factory.mktemp("policy-mesh")
    with Mesh(work / "mesh.db", work) as m:
        m.cli("init", "--trust-domain", TD)  # the mesh default is deny
        for svc, port in (("web", "80"), ("orders", "8080"), ("other", "80")):
            m.cli("service", "add", svc, "--port", port)
        m.outbound = {"web": free_port(), "other": free_port()}
        m.orders_inbound = free_port()
        tokens = {name: m.sidecar(name, svc, port)
                  for name, svc, port in (("web-1", "web", m.outbound["web"]),
                                          ("other-1", "other", m.outbound["other"]),
                                          ("orders-1", "orders", free_port()))}
        m.cli("policy", "allow", "--from", "web", "--to", "orders", "--method", "GET", "--path", "/api/**",
              "--id", "web-reads")
        m.cli("policy", "deny", "--from", "*", "--to", "orders", "--path-prefix", "/admin", "--id", "no-admin")
        m.cli("policy", "allow", "--from", "web", "--to", "orders", "--path-prefix", "/admin",
              "--id", "web-admin")  # allowed, but the deny rule wins
        m.cli("policy", "deny", "--from", "web", "--to", "orders", "--path-exact", "/api/legacy", "--audit",
              "--id", "audit-legacy")
        m.instance("orders", m.orders_inbound, m.app("orders").port, proxy="orders-1")
        m.serve()
        m.start_envoys({name: m.bootstrap(name, token) for name, token in tokens.items()})
        wait_for("web -> orders", lambda: m.call("web", "/api/items") == 200, 20)
        yield m


def test_allowed_call_reaches_the_app(mesh: Mesh) -> None:
    status, text = get(mesh.outbound["web"], "orders", "/api/items?page=2")
    assert status == 200, text
    body = json.loads(text)
    assert body["service"] == "orders" and body["path"] == "/api/items?page=2"
    assert f"URI=spiffe://{TD}/svc/web" in body["headers"]["x-forwarded-client-cert"]


def test_denied_call_is_403_and_envoy_counts_the_rule(mesh: Mesh) -> None:
    for path in ("/admin", "/admin/users", "/api/../admin", "/ADMIN", "//admin"):
        before = mesh.stat(DENY_STAT.format("no-admin"))
        status, body = get(mesh.outbound["web"], "orders", path)
        assert status == 403, (path, body)
        assert "RBAC: access denied" in body
        assert mesh.stat(DENY_STAT.format("no-admin")) == before + 1, path
    # not allowed by any rule (POST is not in web-reads): the default decides
    before = mesh.stat(DEFAULT_DENY_STAT)
    assert get(mesh.outbound["web"], "orders", "/api/items", method="POST")[0] == 403
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
    got = tls_get(mesh.orders_inbound, tmp_path, bundle, ident.cert_chain_pem, ident.key_pem, "/api/items")
    assert got.startswith("HTTP/1.1 403 "), got
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
        wait_for("other -> orders allowed", lambda: mesh.call("other", "/api/items") == 200, 10)
    finally:
        mesh.cli("policy", "remove", "other-orders")
    wait_for("other -> orders blocked again", lambda: mesh.call("other", "/api/items") in (403, 404), 10)
    # removing the deny rule lets web reach /admin (web-admin allows it); adding it back denies
    mesh.cli("policy", "remove", "no-admin")
    try:
        wait_for("/admin allowed", lambda: mesh.call("web", "/admin") == 200, 10)
    finally:
        mesh.cli("policy", "deny", "--from", "*", "--to", "orders", "--path-prefix", "/admin",
                 "--id", "no-admin")
    wait_for("/admin denied again", lambda: mesh.call("web", "/admin") == 403, 10)
    assert mesh.pids() == pids  # no Envoy restarted
    # the rules travel on RDS: the target's listener was never replaced (no drain)
    assert orders.stats("^listener_manager\\.listener_modified$") == modified
    for e in mesh.envoys.values():
        assert e.stat("listener_manager.lds.update_rejected") == 0
