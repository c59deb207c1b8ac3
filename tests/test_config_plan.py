"""`meshgate plan` (writes nothing; objects, per-proxy resources, access changes) and
`meshgate validate` (the real Envoy's --mode validate on every proxy's config)."""

from __future__ import annotations

import json
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from meshgate.config.envoy_check import static_bootstrap
from meshgate.fleet.envoy import free_port
from meshgate.model import Proxy
from meshgate.store.db import open_store
from meshgate.store.world import load_world
from meshgate.xds.translate import translate_proxy
from tests.config_kit import write_full_config
from tests.conftest import Invoke
from tests.foreign_listener import envoy_with, foreign_listener

BASE = textwrap.dedent("""\
    kind: Service
    name: web
    ---
    kind: Service
    name: orders
    port: 8080
    ---
    kind: Sidecar
    name: web-1
    service: web
    ---
    kind: Sidecar
    name: orders-1
    service: orders
    outbound_port: 15002
    ---
    kind: Instance
    service: web
    address: 127.0.0.1
    inbound_port: 15011
    app_port: 9000
    proxy: web-1
    ---
    kind: Instance
    service: orders
    address: 127.0.0.1
    inbound_port: 15010
    app_port: 8080
    proxy: orders-1
    """)
ALLOW = textwrap.dedent("""\
    ---
    kind: Policy
    id: web-to-orders
    action: allow
    sources: [web]
    target: orders
    """)


@pytest.fixture
def base(initialized: Invoke, tmp_path: Path) -> Invoke:
    (tmp_path / "base.yaml").write_text(BASE)
    r = initialized("apply", "-f", str(tmp_path / "base.yaml"))
    assert r.exit_code == 0, r.output
    return initialized


def _plan(run: Invoke, path: Path, *extra: str) -> dict[str, Any]:
    r = run("plan", "-f", str(path), "-o", "json", *extra)
    assert r.exit_code == 0, r.output
    return json.loads(r.output)


def test_plan_shows_objects_proxies_and_access_and_writes_nothing(
    base: Invoke, tmp_path: Path, db_dump: Callable[[], str]
) -> None:
    path = tmp_path / "allow.yaml"
    path.write_text(BASE + ALLOW)
    before = db_dump()
    p = _plan(base, path)
    assert db_dump() == before
    assert [(c["kind"], c["key"], c["op"]) for c in p["changes"]] == [("Policy", "web-to-orders", "add")]
    proxies = {d["proxy"]: d for d in p["proxies"]}
    assert set(proxies) == {"web-1", "orders-1"}
    # default deny: web-1 could reach nothing; now it gets orders' cluster, endpoints and a route
    assert proxies["web-1"]["added"] == ["cds svc/orders", "eds svc/orders"]
    assert "rds outbound" in proxies["web-1"]["changed"]
    assert proxies["orders-1"]["changed"] and not proxies["orders-1"]["added"]
    assert p["access"] == [{"from": "web", "to": "orders", "before": "none", "after": "all",
                            "change": "newly allowed", "rules": ["web-to-orders"]}]
    text = base("plan", "-f", str(path))
    assert "+ Policy 'web-to-orders'" in text.output
    assert "newly allowed: web -> orders (none -> all)" in text.output
    assert "web-1 (sidecar): +cds svc/orders, +eds svc/orders" in text.output

    # applied, the same file plans nothing; removing the rule plans the way back
    assert base("apply", "-f", str(path)).exit_code == 0
    assert base("plan", "-f", str(path)).output.strip() == "no changes: the store already matches the file"
    back = _plan(base, tmp_path / "base.yaml", "--prune")
    assert [(c["key"], c["op"]) for c in back["changes"]] == [("web-to-orders", "remove")]
    assert [(a["from"], a["to"], a["change"]) for a in back["access"]] == [("web", "orders", "newly denied")]
    assert {d["proxy"]: d["removed"] for d in back["proxies"]}["web-1"] == ["cds svc/orders", "eds svc/orders"]


def test_plan_lists_new_and_removed_proxies(base: Invoke, tmp_path: Path) -> None:
    path = tmp_path / "more.yaml"
    path.write_text(BASE.replace("name: web-1", "name: web-2").replace("proxy: web-1", "proxy: web-2"))
    p = _plan(base, path, "--prune")
    status = {d["proxy"]: d["status"] for d in p["proxies"]}
    assert status == {"web-1": "removed", "web-2": "new"}
    assert {(c["kind"], c["key"], c["op"]) for c in p["changes"]} == {
        ("Sidecar", "web-2", "add"), ("Sidecar", "web-1", "remove"), ("Instance", "127.0.0.1:15011", "update")}


def test_plan_reports_store_refusals_like_apply(base: Invoke, tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(BASE + ALLOW.replace("target: orders", "target: billing"))
    r = base("plan", "-f", str(path))
    assert r.exit_code == 1
    assert f'{path}:' in r.output and 'target: unknown service "billing"' in r.output


@pytest.mark.envoy
def test_validate_accepts_every_kind_of_config(initialized: Invoke, tmp_path: Path, db: str) -> None:
    """The full config (sidecars, an edge gateway with JWT, mtls and rate-limited routes,
    gRPC and audit policies) through the real Envoy, proxy by proxy."""
    path = write_full_config(tmp_path)
    assert initialized("apply", "-f", str(path)).exit_code == 0
    assert initialized("proxy", "add", "web-1", "--service", "web").exit_code == 0
    # a certificate for the gateway's host: its HTTPS listener and SNI chain exist only then
    r = initialized("edge", "cert", "issue", "--gateway", "public", "--host", "api.example.com")
    assert r.exit_code == 0, r.output
    r = initialized("validate")
    assert r.exit_code == 0, r.output
    assert r.output.strip() == "Envoy accepts the config of 3 proxies: orders-1, public, web-1"
    # the bootstrap Envoy saw: everything static, no ADS, SDS names served inline
    world = load_world(open_store(db))
    boot = static_bootstrap(world.proxies["public"], translate_proxy(world, "public"))
    text = json.dumps(boot)
    assert "dynamic_resources" not in boot and '"ads"' not in text and "sds_config" not in text
    assert '"EDS"' not in text and '"rds"' not in text
    names = {s["name"] for s in boot["static_resources"]["secrets"]}
    assert {"edge-client-ca", "edge-cert/api.example.com"} <= names
    assert [li["name"] for li in boot["static_resources"]["listeners"]] == ["edge-https", "edge-http"]


@pytest.mark.envoy
def test_validate_names_the_proxy_envoy_rejects(base: Invoke, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # what only Envoy can refuse: the Envoy validating has a listener of its own on 127.0.0.1:port
    # (its operator's, tests/foreign_listener.py), and orders-1's instance moves onto that port
    port = free_port()
    monkeypatch.setenv("MESHGATE_ENVOY", str(envoy_with(tmp_path, foreign_listener(port))))
    path = tmp_path / "collision.yaml"
    # (a sidecar fronts one instance: orders-1's instance moves there, --prune drops the old)
    assert (BASE + ALLOW).count("inbound_port: 15010") == 1
    path.write_text((BASE + ALLOW).replace("inbound_port: 15010", f"inbound_port: {port}"))
    r = base("validate", "-f", str(path), "--prune", "-o", "json")
    assert r.exit_code == 1
    out = json.loads(r.output[: r.output.rindex("}") + 1])
    assert [x["proxy"] for x in out["rejected"]] == ["orders-1"]
    assert f"duplicate address '127.0.0.1:{port}'" in out["rejected"][0]["reason"]
    assert base("validate", "--proxy", "web-1", "-f", str(path), "--prune").exit_code == 0


@pytest.mark.envoy
def test_validate_accepts_an_instance_with_a_host_name(base: Invoke, tmp_path: Path) -> None:
    # Envoy's EDS refuses host names; such a service gets a DNS cluster instead (tests/test_xds_dns.py)
    path = tmp_path / "hostname.yaml"
    path.write_text(BASE + ALLOW + textwrap.dedent("""\
        ---
        kind: Instance
        service: orders
        address: orders-2.internal
        inbound_port: 15010
        app_port: 8080
        """))
    r = base("validate", "-f", str(path))
    assert r.exit_code == 0, r.output
    assert r.output.startswith("Envoy accepts the config of 2 proxies")


def test_static_bootstrap_inlines_eds_and_rds() -> None:
    from meshgate.model import Instance, Mesh, Policy, Service, World

    world = World(
        revision=1, mesh=Mesh("example.org", default_action="allow"),
        services={"a": Service("a"), "b": Service("b", port=8080)},
        instances=(Instance(1, "b", "127.0.0.1", 15010, 8080),),
        proxies={"a-1": Proxy("a-1", "sidecar", service="a")},
        policies=(Policy("p", "allow", ("a",), "b"),),
    )
    boot = static_bootstrap(world.proxies["a-1"], translate_proxy(world, "a-1"))
    clusters = {c["name"]: c for c in boot["static_resources"]["clusters"]}
    assert clusters["svc/b"]["type"] == "STATIC"
    assert clusters["svc/b"]["load_assignment"]["cluster_name"] == "svc/b"
    outbound = next(li for li in boot["static_resources"]["listeners"] if li["name"] == "outbound")
    hcm = outbound["filter_chains"][0]["filters"][0]["typed_config"]
    assert "rds" not in hcm and hcm["route_config"]["name"] == "outbound"
    assert {s["name"] for s in boot["static_resources"]["secrets"]} == {"identity", "trust-bundle"}
