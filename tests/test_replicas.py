"""Failover between two `meshgate serve` replicas sharing one PostgreSQL store.

Real parts only: PostgreSQL (MESHGATE_TEST_PG), two `meshgate serve`
subprocesses with TLS from the mesh CA, two Envoy 1.40 sidecars bootstrapped
with both replica addresses, an app behind them, and requests counted the
whole time. Replica a is killed with SIGKILL while traffic flows.
"""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from meshgate.fleet.envoy import EnvoyProcess, free_port
from meshgate.store.db import open_store
from tests.mesh_kit import Fleet, Traffic, identity_serials, wait_for

pytestmark = [pytest.mark.envoy, pytest.mark.postgres]


def clusters(envoy: EnvoyProcess) -> set[str]:
    dump = envoy.config_dump("dynamic_active_clusters")
    return {c["cluster"]["name"] for c in dump.get("configs", [])}


def test_killing_a_replica_loses_no_request_and_changes_still_arrive(
    pg_url: str, tmp_path: Path
) -> None:
    f = Fleet(pg_url, tmp_path)
    f.cli("init", "--trust-domain", "example.org", "--default-action", "allow")
    engine = open_store(pg_url)
    try:
        f.cli("service", "add", "web", "--port", "80")
        f.cli("service", "add", "orders", "--port", "8080")
        web_out, orders_in, orders_out = free_port(), free_port(), free_port()
        tokens = {name: f.sidecar(name, svc, port)
                  for name, svc, port in (("web-1", "web", web_out), ("orders-1", "orders", orders_out))}
        f.instance("orders", orders_in, f.app("orders").port, proxy="orders-1")

        def status() -> dict[str, list[dict[str, Any]]]:
            out: dict[str, list[dict[str, Any]]] = {}
            for r in f.cli_json("proxy", "status"):
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
        replica = ("--replica-timeout", "3s")
        a = f.serve("--replica", "a", *replica, name="serve-a")
        b = f.serve("--replica", "b", *replica, name="serve-b", wait=False)
        boots = {name: f.bootstrap(name, tokens[name], *mode)
                 for name, mode in (("web-1", ()), ("orders-1", ("--sotw",)))}
        for boot in boots.values():
            xds = next(c for c in boot["static_resources"]["clusters"] if c["name"] == "meshgate-xds")
            ports = [e["endpoint"]["address"]["socket_address"]["port_value"]
                     for e in xds["load_assignment"]["endpoints"][0]["lb_endpoints"]]
            assert ports == [a.port, b.port]
        f.start_envoys(boots)
        web, orders = f.envoys["web-1"], f.envoys["orders-1"]
        b.wait_ready()
        wait_for("both proxies on replica a, in sync", lambda: all_on("a"))
        def live() -> list[str]:
            with engine.connect() as conn:
                return list(conn.execute(text("SELECT name FROM replicas ORDER BY name")).scalars())

        assert live() == ["a", "b"]
        serials_before = identity_serials(web)

        with Traffic.http(web_out, "orders", '"service": "orders"') as traffic:
            traffic.more(30)
            assert not traffic.failed, traffic.failed[:5]
            before_kill = traffic.ok

            a.stop(signal.SIGKILL)
            wait_for("both proxies reconnected to replica b", lambda: all_on("b"))
            for e in f.envoys.values():
                assert e.stat("control_plane.connected_state") == 1
            # b declared a gone (3 s of silence) and took its row out
            wait_for("replica a swept", lambda: live() == ["b"], timeout=15)

            # a change made after the failure, through the CLI on the same store
            f.cli("service", "add", "payments", "--port", "9090")
            for e in f.envoys.values():
                wait_for(f"{e.name} has svc/payments", lambda e=e: "svc/payments" in clusters(e))
            wait_for("both proxies ACKed the change on b", lambda: all_on("b"))

            traffic.more(30)
        assert traffic.failed == [], traffic.failed[:5]
        assert traffic.ok - before_kill >= 30
        # b holds its own in-memory workload keys: web-1 got a new certificate from it
        assert identity_serials(web) - serials_before
        assert "svc/payments" in clusters(orders)
    finally:
        f.stop()
        engine.dispose()
