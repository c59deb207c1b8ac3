"""Real Envoy 1.40 against a real `meshgate serve` (subprocess, TLS from the mesh CA),
bootstrapped with `meshgate proxy bootstrap`: config lands, requests flow through two
sidecars over mTLS, CLI changes arrive without restarts, delta and SotW, NACKs."""

from __future__ import annotations

import json
import socket
import time
import urllib.error
import urllib.request
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
from tests.mesh_kit import Serve
from tests.xds_support import change_instance

pytestmark = pytest.mark.envoy


@dataclass
class Mesh:
    db: Path
    workdir: Path
    xds_port: int
    web: EnvoyProcess
    orders: EnvoyProcess
    web_outbound: int
    orders_inbound: int
    orders_outbound: int
    app: App
    orders_instance: int

    def cli(self, *args: str) -> Any:
        result = CliRunner().invoke(cli, ["--db", str(self.db), *args], catch_exceptions=False)
        assert result.exit_code == 0, result.output
        return result

    def status(self, proxy: str) -> dict[str, dict[str, Any]]:
        rows = json.loads(self.cli("proxy", "status", proxy, "-o", "json").output)
        return {r["type"]: r for r in rows}


def wait_for(what: str, check: Callable[[], Any], timeout: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = check()
        except (urllib.error.URLError, OSError, KeyError, AssertionError) as exc:
            last = exc
        else:
            if last:
                return last
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}; last: {last!r}")


def get(port: int, host: str, path: str = "/hello") -> tuple[int, dict[str, Any] | str]:
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", headers={"Host": host})
    try:
        with urllib.request.urlopen(req, timeout=5) as r:  # noqa: S310 - loopback
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def dynamic(dump: dict[str, Any], kind: str) -> dict[str, Any]:
    """name -> resource from a /config_dump section."""
    out: dict[str, Any] = {}
    for section in dump["configs"]:
        t = section["@type"]
        if kind == "clusters" and t.endswith("ClustersConfigDump"):
            for c in section.get("dynamic_active_clusters", []):
                out[c["cluster"]["name"]] = c["cluster"]
        elif kind == "listeners" and t.endswith("ListenersConfigDump"):
            for li in section.get("dynamic_listeners", []):
                if "active_state" in li:
                    out[li["name"]] = li["active_state"]["listener"]
        elif kind == "routes" and t.endswith("RoutesConfigDump"):
            for r in section.get("dynamic_route_configs", []):
                out[r["route_config"]["name"]] = r["route_config"]
        elif kind == "endpoints" and t.endswith("EndpointsConfigDump"):
            for e in section.get("dynamic_endpoint_configs", []):
                cla = e["endpoint_config"]
                out[cla["cluster_name"]] = [
                    lb["endpoint"]["address"]["socket_address"]["port_value"]
                    for loc in cla.get("endpoints", []) for lb in loc.get("lb_endpoints", [])
                ]
    return out


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    work = tmp_path_factory.mktemp("xds-envoy")
    db = work / "mesh.db"
    runner = CliRunner()

    def run(*args: str) -> str:
        r = runner.invoke(cli, ["--db", str(db), *args], catch_exceptions=False)
        assert r.exit_code == 0, r.output
        return r.output

    run("init", "--trust-domain", "example.org", "--default-action", "allow")
    run("service", "add", "web", "--port", "80")
    run("service", "add", "orders", "--port", "8080")
    web_out, orders_in, orders_out = free_port(), free_port(), free_port()
    tokens = {}
    for name, svc, port in (("web-1", "web", web_out), ("orders-1", "orders", orders_out)):
        tokens[name] = json.loads(run("proxy", "add", name, "--service", svc, "--outbound-port", str(port),
                                      "-o", "json"))["token"]
    app = App("orders").start()
    # linked to its sidecar by the CLI: orders-1 serves the inbound side from its first config
    added = run("instance", "add", "orders", "--address", "127.0.0.1", "--inbound-port", str(orders_in),
                "--app-port", str(app.port), "--proxy", "orders-1")
    orders_instance = int(added.split()[1])
    server = Serve(db, work).start()
    xds_port = server.port
    envoys: list[EnvoyProcess] = []
    try:
        server.wait_ready()
        for name, mode in (("web-1", []), ("orders-1", ["--sotw"])):
            out = work / f"{name}.json"
            run("proxy", "bootstrap", name, "--token", tokens[name], "--server", f"127.0.0.1:{xds_port}",
                "--admin-port", str(free_port()), "--out", str(out), *mode)
            envoys.append(EnvoyProcess(json.loads(out.read_text()), work, name).start())
        for e in envoys:
            e.wait_live()
        yield Mesh(db, work, xds_port, envoys[0], envoys[1], web_out, orders_in, orders_out, app, orders_instance)
    finally:
        for e in envoys:
            e.stop()
        server.stop()
        app.stop()


def test_config_dump_holds_the_mesh(mesh: Mesh) -> None:
    dump = wait_for("web-1 config", lambda: (lambda d: d if "svc/orders" in dynamic(d, "endpoints") else None)(
        mesh.web.config_dump()))
    clusters = dynamic(dump, "clusters")
    assert {"svc/orders", "svc/web"} <= set(clusters)
    assert clusters["svc/orders"]["type"] == "EDS"
    tls = clusters["svc/orders"]["transport_socket"]["typed_config"]["common_tls_context"]
    sans = tls["combined_validation_context"]["default_validation_context"]["match_typed_subject_alt_names"]
    assert sans[0]["matcher"]["exact"] == "spiffe://example.org/svc/orders"
    assert set(dynamic(dump, "listeners")) == {"outbound"}  # web-1 fronts no instance yet
    vhosts = {v["name"]: v for v in dynamic(dump, "routes")["outbound"]["virtual_hosts"]}
    assert set(vhosts["orders"]["domains"]) == {"orders", "orders:8080"}
    assert dynamic(dump, "endpoints")["svc/orders"] == [mesh.orders_inbound]
    odump = mesh.orders.config_dump()
    assert set(dynamic(odump, "listeners")) == {"inbound", "outbound"}
    assert "local-app" in dynamic(odump, "clusters")


def test_request_flows_through_two_sidecars_over_mtls(mesh: Mesh) -> None:
    status, body = wait_for("a routed request", lambda: (lambda r: r if r[0] == 200 else None)(
        get(mesh.web_outbound, "orders")))
    assert isinstance(body, dict) and body["service"] == "orders" and body["path"] == "/hello"
    # the orders sidecar verified web's certificate and told the app who called
    assert "URI=spiffe://example.org/svc/web" in body["headers"]["x-forwarded-client-cert"]
    assert get(mesh.web_outbound, "orders:8080")[0] == 200
    status, text = get(mesh.web_outbound, "unknown-service")
    assert status == 404 and "no route" in str(text)
    # delta (web-1) and state-of-the-world (orders-1) both in sync
    for proxy in ("web-1", "orders-1"):
        rows = wait_for(f"{proxy} in sync", lambda p=proxy: (lambda s: s if all(
            r["sent_version"] == r["acked_version"] for r in s.values()) and len(s) == 5 else None)(mesh.status(p)))
        assert all(r["connected"] for r in rows.values())
    assert mesh.web.stat("control_plane.connected_state") == 1


def test_cli_changes_reach_envoy_without_restart(mesh: Mesh) -> None:
    pid = mesh.web.pid
    extra = free_port()
    out = mesh.cli("instance", "add", "orders", "--address", "127.0.0.1", "--inbound-port", str(extra),
                   "--app-port", "9")
    new_id = out.output.split()[1]
    wait_for("the new endpoint", lambda: sorted(dynamic(mesh.web.config_dump(), "endpoints")["svc/orders"])
             == sorted([mesh.orders_inbound, extra]))
    mesh.cli("instance", "remove", new_id)
    wait_for("the endpoint gone", lambda: dynamic(mesh.web.config_dump(), "endpoints")["svc/orders"]
             == [mesh.orders_inbound])
    mesh.cli("service", "add", "billing", "--port", "7070")
    wait_for("billing cluster", lambda: "svc/billing" in dynamic(mesh.web.config_dump(), "clusters"))
    vhosts = {v["name"] for v in dynamic(mesh.web.config_dump(), "routes")["outbound"]["virtual_hosts"]}
    assert "billing" in vhosts
    mesh.cli("service", "remove", "billing")
    wait_for("billing removed", lambda: "svc/billing" not in dynamic(mesh.web.config_dump(), "clusters"))
    wait_for("billing route removed", lambda: "billing" not in {
        v["name"] for v in dynamic(mesh.web.config_dump(), "routes")["outbound"]["virtual_hosts"]})
    assert mesh.web.pid == pid and mesh.web.proc is not None and mesh.web.proc.poll() is None
    assert get(mesh.web_outbound, "orders")[0] == 200


def test_rejected_listener_shows_as_nack_and_is_not_resent(mesh: Mesh) -> None:
    """A config Envoy refuses that the store cannot know about: orders-1's instance moves
    to a port another process on its host holds (a plain socket bound and listening on
    127.0.0.1), so Envoy cannot bind the new inbound listener. (The store refuses the
    collisions it can see, such as an inbound port equal to the sidecar's own outbound
    port: tests/test_local_ports.py.)"""
    engine = open_store(str(mesh.db))
    busy = socket.socket()  # not SO_REUSEPORT: Envoy's bind next to it fails
    try:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        bad = f"instance:127.0.0.1:{port}"
        rejected_before = mesh.orders.stat("listener_manager.lds.update_rejected")
        change_instance(engine, mesh.orders_instance, inbound_port=port)
        row = wait_for("the NACK in proxy status", lambda: (lambda r: r if r.get("nack_open") else None)(
            mesh.status("orders-1")["lds"]))  # orders-1 speaks state-of-the-world
        assert f"cannot bind '127.0.0.1:{port}': Address already in use" in row["nack_detail"], row
        assert row["nack_resources"] == ["inbound"]
        assert "service:orders" in row["nack_sources"] and bad in row["nack_sources"]
        table = mesh.cli("proxy", "status", "orders-1").output
        assert "NACKED" in table and bad in table, table
        rejected = wait_for("Envoy's counter", lambda: mesh.orders.stat("listener_manager.lds.update_rejected")
                            > rejected_before and mesh.orders.stat("listener_manager.lds.update_rejected"))
        # Envoy keeps running the inbound listener it accepted last
        assert dynamic(mesh.orders.config_dump(), "listeners")["inbound"]["address"]["socket_address"][
            "port_value"] == mesh.orders_inbound
        # an unrelated change later (a new cluster and route for orders-1): the rejected
        # listeners are not sent again
        mesh.cli("service", "add", "audit", "--port", "7071")
        wait_for("audit cluster", lambda: "svc/audit" in dynamic(mesh.orders.config_dump(), "clusters"))
        time.sleep(0.5)
        assert mesh.orders.stat("listener_manager.lds.update_rejected") == rejected
        assert mesh.status("orders-1")["lds"]["nack_open"]
        # fixed: a new version is sent, ACKed, the NACK reads as resolved, requests flow again
        change_instance(engine, mesh.orders_instance, inbound_port=mesh.orders_inbound)
        wait_for("resolved", lambda: not mesh.status("orders-1")["lds"]["nack_open"])
        assert "(resolved)" in mesh.cli("proxy", "status", "orders-1").output
        wait_for("requests again", lambda: get(mesh.web_outbound, "orders")[0] == 200)
        mesh.cli("service", "remove", "audit")
    finally:
        busy.close()
        engine.dispose()
