"""Faults under steady, counted traffic: real `meshgate serve`, real Envoys, real apps.

    client -> web-1 (sidecar, delta ADS) -> mTLS -> orders-1 (sidecar, SotW ADS) -> app
    client -> public (edge gateway, HTTPS) -> mTLS -> orders-1 -> app

- the server is killed with SIGKILL and started again: no request fails, and
  the Envoys modify no listener and no cluster (versions are content hashes, so
  a new process sends the same bytes). Workload keys live only in the server's
  memory, so the restarted server issues new identities: SDS pushes new
  certificates, which Envoy swaps without touching a listener or a cluster;
- an Envoy killed with SIGKILL and started from its bootstrap rejoins and gets
  the config it had (same versions ACKed);
- another process holds the database's write lock with an uncommitted insert:
  read-only commands answer at once with the committed state; a write waits for
  the busy timeout and fails with one clear line, exit 1; the server keeps
  serving, and a change made after the lock is released reaches the Envoys.

Tests run in file order on one module fixture (one server, three Envoys).
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest

from meshgate.fleet.envoy import free_port
from meshgate.store.db import BUSY_TIMEOUT_MS
from tests.edge_kit import https
from tests.mesh_kit import (
    MESHGATE,
    Fleet,
    Traffic,
    cli,
    cli_json,
    get,
    identity_serials,
    in_sync,
    status_rows,
    wait_for,
)

pytestmark = pytest.mark.envoy
PROXIES = {"web-1", "orders-1", "public"}
# Envoy's own record of config changes: a listener or cluster replaced by different
# content counts as modified; added/removed say one came or went.
CONFIG_COUNTERS = (
    "listener_manager.listener_modified", "listener_manager.listener_added",
    "listener_manager.listener_removed", "cluster_manager.cluster_modified",
    "cluster_manager.cluster_added", "cluster_manager.cluster_removed",
    "listener_manager.lds.update_rejected", "cluster_manager.cds.update_rejected",
)


class Faults(Fleet):
    """web-1, orders-1 and the gateway `public` on one server, in file order."""

    web_outbound: int
    gateway_port: int
    root_pem: str

    def mesh_traffic(self) -> Traffic:
        return Traffic.http(self.web_outbound, "orders", '"service": "orders"')

    def edge_traffic(self) -> Traffic:
        def one() -> str | None:
            r = https(self.gateway_port, "/orders/x", ca_pem=self.root_pem)
            return None if r.status == 200 and b'"orders"' in r.body else f"edge {r.status} {r.error}"

        return Traffic(one, "traffic-edge")

    def counters(self) -> dict[str, dict[str, int]]:
        return {name: {c: e.stat(c) for c in CONFIG_COUNTERS} for name, e in self.envoys.items()}

    def acked(self) -> dict[tuple[str, str], str | None]:
        return {(r["proxy"], r["type"]): r["acked_version"] for r in status_rows(self.db)
                if r["type"] != "sds"}

    def wait_in_sync(self, timeout: float = 30.0) -> None:
        try:
            wait_for("every proxy connected and in sync", lambda: in_sync(self.db, PROXIES), timeout)
        except AssertionError as exc:
            notes = [str(exc), cli(self.db, "proxy", "status"), "--- serve ---", self.server.tail()]
            notes += [f"--- {n} ---\n{e.tail(10)}" for n, e in self.envoys.items()]
            raise AssertionError("\n".join(notes)) from None


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Faults]:
    work = tmp_path_factory.mktemp("faults")
    with Faults(work / "mesh.db", work) as f:
        f.gateway_port = gw_port = free_port()
        f.cli("init", "--trust-domain", "example.org")  # strict mTLS, default deny
        f.cli("service", "add", "web", "--port", "80")
        f.cli("service", "add", "orders", "--port", "8080")
        ports = {n: free_port() for n in ("web_out", "orders_out", "orders_in", "web_in")}
        f.web_outbound = ports["web_out"]
        tokens = {
            "web-1": f.sidecar("web-1", "web", ports["web_out"]),
            "orders-1": f.sidecar("orders-1", "orders", ports["orders_out"]),
            "public": f.cli_json("proxy", "add", "public", "--edge", "--listen",
                                 f"127.0.0.1:{gw_port}")["token"],
        }
        f.cli("edge", "cert", "issue", "--gateway", "public", "--host", "api.example.com",
              "--ca-out", str(work / "root.pem"))
        f.root_pem = (work / "root.pem").read_text()
        f.cli("edge", "route", "add", "public", "--host", "api.example.com", "--prefix", "/orders",
              "--to", "orders", "--auth", "none", "--rate", "100000/s")
        f.cli("policy", "allow", "--from", "web,edge:public", "--to", "orders", "--method", "GET")
        f.instance("orders", ports["orders_in"], f.app("orders").port, proxy="orders-1")
        f.instance("web", ports["web_in"], f.app("web").port, proxy="web-1")
        f.serve("--log-level", "debug")
        f.start_envoys({name: f.bootstrap(name, tokens[name], *mode)
                        for name, mode in (("web-1", ()), ("orders-1", ("--sotw",)), ("public", ()))})
        f.wait_in_sync()
        wait_for("web -> orders", lambda: get(f.web_outbound, "orders")[0] == 200)
        wait_for("edge -> orders", lambda: https(gw_port, "/orders/x", ca_pem=f.root_pem).status == 200)
        yield f


def test_server_kill_and_restart_loses_no_request_and_changes_no_config(fleet: Faults) -> None:
    before = fleet.counters()
    acked = fleet.acked()
    serials = {n: identity_serials(e) for n, e in fleet.envoys.items()}
    with fleet.mesh_traffic() as mesh, fleet.edge_traffic() as edge:
        mesh.more(20)
        edge.more(20)
        fleet.server.stop(signal.SIGKILL)
        for e in fleet.envoys.values():  # every proxy noticed its control plane is gone
            wait_for(f"{e.name} disconnected", lambda e=e: e.stat("control_plane.connected_state") == 0, 15)
        mesh.more(10)  # traffic keeps flowing on the config Envoy holds
        edge.more(10)
        fleet.server.start()
        fleet.server.wait_ready()
        fleet.wait_in_sync()
        for e in fleet.envoys.values():
            assert e.stat("control_plane.connected_state") == 1, e.name
        mesh.more(20)
        edge.more(20)
    assert mesh.failed == [] and edge.failed == [], (mesh.failed[:5], edge.failed[:5])
    assert fleet.counters() == before  # no listener or cluster added, removed or modified
    assert fleet.acked() == acked  # the restarted server computed the very same versions
    # SDS: workload keys are never stored, so the new process issued new identities;
    # the swap happened under traffic without failures and without a listener change
    for name, e in fleet.envoys.items():
        now = identity_serials(e)
        assert now and now != serials[name], name


def test_an_envoy_killed_and_restarted_rejoins_with_its_config(fleet: Faults) -> None:
    web = fleet.envoys["web-1"]
    acked = {k: v for k, v in fleet.acked().items() if k[0] == "web-1"}
    web.kill()
    wait_for("web-1 shown disconnected",
             lambda: not any(r["connected"] for r in status_rows(fleet.db) if r["proxy"] == "web-1"), 15)
    web.start()
    web.wait_live()
    fleet.wait_in_sync()
    assert {k: v for k, v in fleet.acked().items() if k[0] == "web-1"} == acked
    dump = web.config_dump("dynamic_active_clusters")
    assert "svc/orders" in {c["cluster"]["name"] for c in dump.get("configs", [])}
    wait_for("web -> orders through the restarted Envoy", lambda: get(fleet.web_outbound, "orders")[0] == 200)
    with fleet.mesh_traffic() as mesh:
        mesh.more(10)
    assert mesh.failed == [], mesh.failed[:5]


HOLD_LOCK = """
import sqlite3, sys
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute("BEGIN IMMEDIATE")            # the write lock, held until stdin closes
conn.execute("INSERT INTO services (name, protocol, port, labels, created_at, updated_at) "
             "VALUES ('pending', 'http', 80, '{}', 0, 0)")  # never committed
print("locked", flush=True)
sys.stdin.read()
conn.execute("ROLLBACK")
"""


def _cli_process_json(db: object, *args: str) -> Any:
    """`meshgate --db DB ARGS -o json` as its own process (as a user runs it)."""
    r = subprocess.run([MESHGATE, "--db", str(db), *args, "-o", "json"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, (args, r.stdout, r.stderr)
    return json.loads(r.stdout)


def test_a_locked_database_makes_cli_writes_wait_then_fail_while_reads_and_the_server_serve(
    fleet: Faults,
) -> None:
    revisions = cli_json(fleet.db, "history")
    services = cli_json(fleet.db, "service", "list")
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(fleet.db)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        # reads take no lock: they answer while the writer is open, with the committed state
        assert _cli_process_json(fleet.db, "history") == revisions
        assert _cli_process_json(fleet.db, "service", "list") == services
        assert "pending" not in {s["name"] for s in services}
        assert {r["proxy"] for r in _cli_process_json(fleet.db, "proxy", "status")} == PROXIES
        with fleet.mesh_traffic() as mesh, fleet.edge_traffic() as edge:
            started = time.monotonic()
            r = subprocess.run([MESHGATE, "--db", str(fleet.db), "service", "add", "billing"],
                               capture_output=True, text=True, timeout=60)
            waited = time.monotonic() - started
            mesh.more(10)
            edge.more(10)
            assert fleet.server.healthy()
        assert mesh.failed == [] and edge.failed == [], (mesh.failed[:5], edge.failed[:5])
    finally:
        assert holder.stdin is not None
        holder.stdin.close()
        holder.wait(10)
    assert r.returncode == 1, (r.stdout, r.stderr)
    assert r.stdout == ""
    assert r.stderr.strip().splitlines() == [
        f"error: the database is locked by another writer (waited {BUSY_TIMEOUT_MS / 1000:g} s); "
        "nothing was changed, try again"
    ]
    assert waited >= BUSY_TIMEOUT_MS / 1000 * 0.9  # it waited for the other writer first
    assert cli_json(fleet.db, "history") == revisions
    # the lock is gone: the same command now works and the running server pushes it
    cli(fleet.db, "service", "add", "billing")
    cli(fleet.db, "policy", "allow", "--from", "web", "--to", "billing")
    web = fleet.envoys["web-1"]
    wait_for("svc/billing reaches web-1", lambda: "svc/billing::" in web.admin("/clusters"), 15)
    fleet.wait_in_sync()
