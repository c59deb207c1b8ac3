"""Failover between two `meshgate serve` replicas sharing one PostgreSQL store.

Real parts only: PostgreSQL (MESHGATE_TEST_PG), two `meshgate serve`
subprocesses with TLS from the mesh CA, two Envoy 1.40 sidecars bootstrapped
with both replica addresses, an app behind them, and requests counted the
whole time. Replica a is killed with SIGKILL while traffic flows.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from sqlalchemy import text

from meshgate.cli import cli
from meshgate.fleet.app import App
from meshgate.fleet.envoy import EnvoyProcess, free_port
from meshgate.store.db import open_store
from tests.xds_support import instance

pytestmark = [pytest.mark.envoy, pytest.mark.postgres]
MESHGATE = str(Path(sys.executable).parent / "meshgate")


def wait_for(what: str, check: Callable[[], Any], timeout: float = 20.0) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = check()
        except (urllib.error.URLError, OSError, KeyError, ValueError) as exc:
            last = exc
        else:
            if last:
                return last
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}; last: {last!r}")


class Replica:
    """One `meshgate serve` subprocess on the shared store, stopped by PID."""

    def __init__(self, db: str, name: str, workdir: Path) -> None:
        self.name = name
        self.port, self.admin = free_port(), free_port()
        self.log_path = workdir / f"serve-{name}.log"
        self.log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [MESHGATE, "serve", "--listen", f"127.0.0.1:{self.port}", "--admin", f"127.0.0.1:{self.admin}",
             "--replica", name, "--replica-timeout", "3s"],
            stdout=self.log, stderr=subprocess.STDOUT, env={**os.environ, "MESHGATE_DB": db},
        )

    def wait_ready(self) -> None:
        def healthy() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(f"replica {self.name} exited: {self.log_path.read_text()[-2000:]}")
            with urllib.request.urlopen(f"http://127.0.0.1:{self.admin}/healthz", timeout=1) as r:  # noqa: S310
                return r.status == 200

        wait_for(f"replica {self.name}", healthy)

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.log.close()


class Traffic:
    """Requests through web-1's outbound listener to orders, one after another, counted."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.ok = 0
        self.failed: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="traffic", daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            req = urllib.request.Request(f"http://127.0.0.1:{self.port}/hello", headers={"Host": "orders"})
            try:
                with urllib.request.urlopen(req, timeout=5) as r:  # noqa: S310 - loopback
                    body = json.loads(r.read())
                if r.status == 200 and body.get("service") == "orders":
                    self.ok += 1
                else:
                    self.failed.append(f"{r.status} {body}")
            except (urllib.error.URLError, OSError, ValueError) as exc:
                self.failed.append(repr(exc))
            time.sleep(0.01)

    def at_least(self, n: int) -> None:
        target = self.ok + n
        wait_for(f"{n} more requests", lambda: self.ok >= target or self.failed)

    def __enter__(self) -> Traffic:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)


def clusters(envoy: EnvoyProcess) -> set[str]:
    dump = envoy.config_dump("dynamic_active_clusters")
    return {c["cluster"]["name"] for c in dump.get("configs", [])}


def identity_serials(envoy: EnvoyProcess) -> set[str]:
    certs = json.loads(envoy.admin("/certs"))["certificates"]
    return {c["serial_number"] for cert in certs for c in cert.get("cert_chain", [])}


def test_killing_a_replica_loses_no_request_and_changes_still_arrive(
    pg_url: str, tmp_path: Path
) -> None:
    runner = CliRunner()

    def run(*args: str) -> str:
        r = runner.invoke(cli, ["--db", pg_url, *args], catch_exceptions=False)
        assert r.exit_code == 0, r.output
        return r.output

    run("init", "--trust-domain", "example.org", "--default-action", "allow")
    run("service", "add", "web", "--port", "80")
    run("service", "add", "orders", "--port", "8080")
    web_out, orders_in, orders_out = free_port(), free_port(), free_port()
    tokens = {
        name: json.loads(run("proxy", "add", name, "--service", svc, "--outbound-port", str(port),
                             "-o", "json"))["token"]
        for name, svc, port in (("web-1", "web", web_out), ("orders-1", "orders", orders_out))
    }
    app = App("orders").start()
    engine = open_store(pg_url)
    replicas: list[Replica] = []
    envoys: list[EnvoyProcess] = []
    try:
        instance(engine, "orders", orders_in, app.port, proxy="orders-1")

        def status() -> dict[str, list[dict[str, Any]]]:
            rows = json.loads(run("proxy", "status", "-o", "json"))
            out: dict[str, list[dict[str, Any]]] = {}
            for r in rows:
                out.setdefault(r["proxy"], []).append(r)
            return out

        def all_on(replica: str) -> bool:
            """Both proxies: every xDS type connected through `replica`, and ACKed."""
            rows = status()
            return set(rows) == {"web-1", "orders-1"} and all(
                len(rs) == 5 and all(r["replica"] == replica and r["connected"]
                                     and r["sent_version"] == r["acked_version"] for r in rs)
                for rs in rows.values()
            )

        # Replica a alone at first, so both proxies stream from it; b starts afterwards.
        a = Replica(pg_url, "a", tmp_path)
        replicas.append(a)
        a.wait_ready()
        b = Replica(pg_url, "b", tmp_path)
        replicas.append(b)
        for name, mode in (("web-1", []), ("orders-1", ["--sotw"])):
            out = tmp_path / f"{name}.json"
            run("proxy", "bootstrap", name, "--token", tokens[name],
                "--server", f"127.0.0.1:{a.port}", "--server", f"127.0.0.1:{b.port}",
                "--admin-port", str(free_port()), "--out", str(out), *mode)
            boot = json.loads(out.read_text())
            xds = next(c for c in boot["static_resources"]["clusters"] if c["name"] == "meshgate-xds")
            ports = [e["endpoint"]["address"]["socket_address"]["port_value"]
                     for e in xds["load_assignment"]["endpoints"][0]["lb_endpoints"]]
            assert ports == [a.port, b.port]
            envoys.append(EnvoyProcess(boot, tmp_path, name).start())
        web, orders = envoys
        for e in envoys:
            e.wait_live()
        b.wait_ready()
        wait_for("both proxies on replica a, in sync", lambda: all_on("a"))
        def live() -> list[str]:
            with engine.connect() as conn:
                return list(conn.execute(text("SELECT name FROM replicas ORDER BY name")).scalars())

        assert live() == ["a", "b"]
        serials_before = identity_serials(web)

        with Traffic(web_out) as traffic:
            traffic.at_least(30)
            assert not traffic.failed, traffic.failed[:5]
            before_kill = traffic.ok

            a.stop(signal.SIGKILL)
            wait_for("both proxies reconnected to replica b", lambda: all_on("b"))
            for e in envoys:
                assert e.stat("control_plane.connected_state") == 1
            # b declared a gone (3 s of silence) and took its row out
            wait_for("replica a swept", lambda: live() == ["b"], timeout=15)

            # a change made after the failure, through the CLI on the same store
            run("service", "add", "payments", "--port", "9090")
            for e in envoys:
                wait_for(f"{e.name} has svc/payments", lambda e=e: "svc/payments" in clusters(e))
            wait_for("both proxies ACKed the change on b", lambda: all_on("b"))

            traffic.at_least(30)
        assert traffic.failed == [], traffic.failed[:5]
        assert traffic.ok - before_kill >= 30
        # b holds its own in-memory workload keys: web-1 got a new certificate from it
        assert identity_serials(web) - serials_before
        assert "svc/payments" in clusters(orders)
    finally:
        for e in envoys:
            e.stop()
        for r in replicas:
            r.stop()
        engine.dispose()
        app.stop()
