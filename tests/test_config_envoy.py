"""Config as code against a real `meshgate serve` (subprocess, TLS) and two real Envoys:
- a plan's predicted per-proxy resource versions are exactly what the server then pushes;
- `apply --validate` refuses a config Envoy rejects: web-1's Envoy has a listener of
  its own on 127.0.0.1 (its operator's, in its bootstrap: tests/foreign_listener.py),
  which meshgate cannot know, and web-1's instance moves onto that port (the store
  refuses the collisions it can see: tests/test_local_ports.py); applied anyway,
  the NACK in `proxy status` names the Instance it came from, and a rollback
  resolves it;
- a rollback restores a removed allow rule and real requests pass again.
"""

from __future__ import annotations

import json
import re
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from meshgate.cli import cli
from meshgate.config.load import load_path
from meshgate.config.plan import make_plan, resource_versions
from meshgate.fleet.app import App
from meshgate.fleet.envoy import EnvoyProcess, free_port
from meshgate.store.db import open_store
from meshgate.store.telemetry_key import load_key_secret
from meshgate.telemetry.service import Telemetry
from tests.foreign_listener import envoy_with, foreign_listener
from tests.mesh_kit import Serve
from tests.test_xds_envoy import get, wait_for

pytestmark = pytest.mark.envoy


@dataclass
class Mesh:
    db: Path
    work: Path
    base: str  # the base config file's text
    envoys: dict[str, EnvoyProcess]
    web_outbound: int
    orders_inbound: int
    app: App
    reserved: int  # web-1's Envoy has a listener of its own on 127.0.0.1:reserved

    def cli(self, *args: str, ok: bool = True) -> Any:
        result = CliRunner().invoke(cli, ["--db", str(self.db), *args], catch_exceptions=False)
        if ok:
            assert result.exit_code == 0, result.output
        return result

    def file(self, name: str, text: str) -> str:
        path = self.work / name
        path.write_text(text)
        return str(path)

    def status(self, proxy: str) -> dict[str, dict[str, Any]]:
        return {r["type"]: r for r in json.loads(self.cli("proxy", "status", proxy, "-o", "json").output)}

    def revision(self) -> int:
        return int(json.loads(self.cli("history", "-n", "1", "-o", "json").output)[0]["revision"])


def envoy_versions(envoy: EnvoyProcess) -> dict[tuple[str, str], str]:
    """(short type, name) -> version_info of every dynamic resource Envoy holds.

    Envoy 1.40's config dump has no version_info for delta EDS resources (seen
    here): endpoints get a fingerprint of their content instead."""
    out: dict[tuple[str, str], str] = {}
    eds_clusters: set[str] = set()
    for section in envoy.config_dump()["configs"]:
        t = section["@type"]
        if t.endswith("ClustersConfigDump"):
            for c in section.get("dynamic_active_clusters", []):
                out[("cds", c["cluster"]["name"])] = c["version_info"]
                if c["cluster"].get("type") == "EDS":
                    eds_clusters.add(c["cluster"]["name"])
        elif t.endswith("ListenersConfigDump"):
            for li in section.get("dynamic_listeners", []):
                if "active_state" in li:
                    out[("lds", li["name"])] = li["active_state"]["version_info"]
        elif t.endswith("RoutesConfigDump"):
            for r in section.get("dynamic_route_configs", []):
                out[("rds", r["route_config"]["name"])] = r["version_info"]
        elif t.endswith("EndpointsConfigDump"):
            for e in section.get("dynamic_endpoint_configs", []):
                cla = e["endpoint_config"]
                out[("eds", cla["cluster_name"])] = "content:" + json.dumps(cla, sort_keys=True)
    # a STATIC cluster's inline endpoints show up too: only EDS resources count
    return {k: v for k, v in out.items() if k[0] != "eds" or k[1] in eds_clusters}


def base_config(web_in: int, web_out: int, orders_in: int, orders_out: int, app_port: int) -> str:
    return textwrap.dedent(f"""\
        kind: Mesh
        default_action: deny
        ---
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
        outbound_port: {web_out}
        ---
        kind: Sidecar
        name: orders-1
        service: orders
        outbound_port: {orders_out}
        ---
        kind: Instance
        service: web
        address: 127.0.0.1
        inbound_port: {web_in}
        app_port: 9
        proxy: web-1
        ---
        kind: Instance
        service: orders
        address: 127.0.0.1
        inbound_port: {orders_in}
        app_port: {app_port}
        proxy: orders-1
        ---
        kind: Policy
        id: web-reads-orders
        action: allow
        sources: [web]
        target: orders
        methods: [GET]
        """)


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    work = tmp_path_factory.mktemp("config-envoy")
    db = work / "mesh.db"
    app = App("orders").start()
    ports = {k: free_port() for k in ("web_in", "web_out", "orders_in", "orders_out")}
    base = base_config(ports["web_in"], ports["web_out"], ports["orders_in"], ports["orders_out"], app.port)
    m = Mesh(db, work, base, {}, ports["web_out"], ports["orders_in"], app, free_port())
    m.cli("init", "--trust-domain", "example.org")
    applied = m.cli("apply", "-f", m.file("base.yaml", base)).output
    tokens = dict(re.findall(r'join token for proxy "([^"]+)" \(shown once, keep it secret\): (\S+)', applied))
    assert set(tokens) == {"web-1", "orders-1"}
    server = Serve(db, work).start()
    xds_port = server.port
    try:
        server.wait_ready()
        for name in ("web-1", "orders-1"):
            out = work / f"{name}.json"
            m.cli("proxy", "bootstrap", name, "--token", tokens[name], "--server", f"127.0.0.1:{xds_port}",
                  "--admin-port", str(free_port()), "--out", str(out))
            boot = json.loads(out.read_text())
            if name == "web-1":  # a listener its operator added, which meshgate does not know
                boot["static_resources"].setdefault("listeners", []).append(foreign_listener(m.reserved))
            m.envoys[name] = EnvoyProcess(boot, work, name).start()
        for e in m.envoys.values():
            e.wait_live()
        wait_for("web -> orders", lambda: get(m.web_outbound, "orders")[0] == 200, timeout=20)
        yield m
    finally:
        for e in m.envoys.values():
            e.stop()
        server.stop()
        app.stop()


def _in_sync(m: Mesh, proxy: str) -> bool:
    rows = m.status(proxy)
    return bool(rows) and all(r["sent_version"] == r["acked_version"] for r in rows.values())


def _back_to_base(m: Mesh) -> None:
    m.cli("apply", "-f", m.file("base.yaml", m.base), "--prune")
    wait_for("base config served", lambda: get(m.web_outbound, "orders")[0] == 200
             and all(_in_sync(m, p) for p in m.envoys), timeout=15)


def test_plan_predicts_exactly_what_the_server_pushes(mesh: Mesh) -> None:
    _back_to_base(mesh)
    changed = mesh.base.replace("methods: [GET]", "methods: [GET, POST]") + textwrap.dedent("""\
        ---
        kind: Service
        name: billing
        port: 7070
        ---
        kind: Instance
        service: billing
        address: 127.0.0.1
        inbound_port: 15999
        app_port: 7070
        ---
        kind: Policy
        action: allow
        sources: [web]
        target: billing
        """)
    path = mesh.file("changed.yaml", changed)
    shown = json.loads(mesh.cli("plan", "-f", path, "-o", "json").output)
    predicted = {p["proxy"]: p for p in shown["proxies"]}
    assert set(predicted) == {"web-1", "orders-1"}
    assert predicted["web-1"]["added"] == ["cds svc/billing", "eds svc/billing"]
    assert "rds outbound" in predicted["web-1"]["changed"]  # a route to billing
    # the inbound side of orders-1 now lets POST in (listener or route config, by design)
    assert predicted["orders-1"]["changed"] and all("inbound" in r for r in predicted["orders-1"]["changed"])
    assert [(a["from"], a["to"], a["change"]) for a in shown["access"]] == [
        ("web", "billing", "newly allowed")]
    # the exact versions the planned World gives each proxy
    engine = open_store(str(mesh.db))
    try:
        plan = make_plan(engine, load_path(path), prune=False)
        served = Telemetry.translate_options(secret=load_key_secret(engine))  # the real keys
    finally:
        engine.dispose()
    expected = {p: resource_versions(plan.after, p, options=served) for p in mesh.envoys}
    before = {p: envoy_versions(e) for p, e in mesh.envoys.items()}

    def holds_plan(envoy: EnvoyProcess, name: str) -> bool:
        got = envoy_versions(envoy)
        if set(got) != set(expected[name]):
            return False
        return all(v == expected[name][k] for k, v in got.items() if k[0] != "eds")

    applied = mesh.cli("apply", "-f", path, "--validate")  # Envoy accepts it first
    assert "applied" in applied.output
    for name, envoy in mesh.envoys.items():
        wait_for(f"{name} holds the planned versions", lambda e=envoy, n=name: holds_plan(e, n))
        got = envoy_versions(envoy)
        moved = sorted(f"{t} {r}" for (t, r), v in got.items() if before[name].get((t, r)) != v)
        assert moved == sorted(predicted[name]["added"] + predicted[name]["changed"]), name
        assert not predicted[name]["removed"]
    # and what the plan said about access holds for real requests
    assert get(mesh.web_outbound, "orders")[0] == 200


def test_validate_refuses_what_envoy_rejects_and_a_nack_names_its_instance(
    mesh: Mesh, monkeypatch: pytest.MonkeyPatch
) -> None:
    _back_to_base(mesh)
    port = mesh.reserved  # web-1's Envoy has a listener of its own on 127.0.0.1:port
    # validation runs an Envoy configured like web-1's (with that listener)
    monkeypatch.setenv("MESHGATE_ENVOY", str(envoy_with(mesh.work, foreign_listener(port))))
    # web-1's one instance moves onto that port (a sidecar fronts one instance, so the
    # file replaces it: --prune drops the old one)
    bad, moved = re.subn(r"inbound_port: \d+\n(app_port: 9\nproxy: web-1)", f"inbound_port: {port}\n\\1",
                         mesh.base)
    assert moved == 1
    path = mesh.file("bad.yaml", bad)
    good_rev = mesh.revision()
    r = mesh.cli("apply", "-f", path, "--prune", "--validate", ok=False)
    assert r.exit_code == 1, r.output
    assert "Envoy rejected the configuration of 1 proxy; nothing was changed" in r.output
    assert f"proxy web-1: error adding listener: 'host-reserved' has duplicate address '127.0.0.1:{port}'" in r.output
    assert mesh.revision() == good_rev
    assert mesh.cli("validate").output.startswith("Envoy accepts the config of 2 proxies")
    v = mesh.cli("validate", "-f", path, "--prune", ok=False)
    assert v.exit_code == 1 and "proxy web-1: error adding listener" in v.output

    # applied without --validate: the server pushes it and web-1 NACKs the listener update
    mesh.cli("apply", "-f", path, "--prune")
    row = wait_for("the NACK", lambda: (lambda r: r if r.get("nack_open") else None)(mesh.status("web-1")["lds"]))
    assert f"'inbound' has duplicate address '127.0.0.1:{port}'" in row["nack_detail"], row
    assert row["nack_resources"] == ["inbound"]
    assert {"service:web", f"instance:127.0.0.1:{port}"} <= set(row["nack_sources"])
    table = mesh.cli("proxy", "status", "web-1").output
    assert "NACKED" in table and f"instance:127.0.0.1:{port}" in table, table
    assert get(mesh.web_outbound, "orders")[0] == 200  # the listeners Envoy accepted keep serving

    # rolling back removes the bad instance: a new version is ACKed, the NACK is resolved
    r = mesh.cli("rollback", str(good_rev), "--yes")
    assert "- instances" in r.output
    wait_for("resolved", lambda: not mesh.status("web-1")["lds"]["nack_open"])
    assert "(resolved)" in mesh.cli("proxy", "status", "web-1").output


def test_a_rollback_is_followed_by_real_envoys(mesh: Mesh) -> None:
    _back_to_base(mesh)
    allowed_rev = mesh.revision()
    without_rule = mesh.base.split("---\nkind: Policy")[0].rstrip().rstrip("-").rstrip()
    r = mesh.cli("apply", "-f", mesh.file("deny.yaml", without_rule + "\n"), "--prune")
    assert "- Policy 'web-reads-orders'" in r.output
    # default deny: without the rule the orders sidecar refuses web (and web-1 drops the route)
    wait_for("web denied", lambda: get(mesh.web_outbound, "orders")[0] in (403, 404))
    r = mesh.cli("rollback", str(allowed_rev), "--yes")
    assert "+ policies 'web-reads-orders'" in r.output
    status, body = wait_for("web allowed again", lambda: (lambda x: x if x[0] == 200 else None)(
        get(mesh.web_outbound, "orders")))
    assert isinstance(body, dict) and body["service"] == "orders"
    assert "URI=spiffe://example.org/svc/web" in body["headers"]["x-forwarded-client-cert"]
