"""End to end: `meshgate serve` + a real edge Envoy + real sidecar Envoys + Python apps.

Everything is made with the CLI, proxies get their config (edge certificates by
SDS, JWKS, routes) over ADS from the running server, and changes made while
they run (instances added and removed, a route added) reach them without a
restart.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from meshgate.fleet.envoy import EnvoyProcess, free_port
from tests.edge_kit import GatewayFleet, Signer
from tests.mesh_kit import wait_for

pytestmark = pytest.mark.envoy


class EdgeFleet(GatewayFleet):
    def wait(self, check: Callable[[], Any], what: str, timeout: float = 30.0) -> Any:
        """wait_for, and on timeout say what the proxies and the server were doing."""
        try:
            return wait_for(what, check, timeout)
        except AssertionError as exc:
            notes = [str(exc), self.cli("proxy", "list")]
            for p in self.envoys.values():
                notes.append(f"--- {p.name} log ---\n{p.tail(15)}")
            notes.append("--- serve.log ---\n" + self.server.tail())
            raise AssertionError("\n".join(notes)) from None

    def start_proxy(self, name: str, token: str) -> EnvoyProcess:
        self.start_envoys({name: self.bootstrap(name, token)})
        return self.envoys[name]

    def add_orders(self, name: str, instance: str) -> EnvoyProcess:
        """One more orders app, its sidecar, and the instance naming that sidecar."""
        app = self.app("orders", instance=instance)
        token = self.sidecar(name, "orders", free_port())
        self.instance("orders", free_port(), app.port, proxy=name)
        return self.start_proxy(name, token)


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EdgeFleet]:
    wd = tmp_path_factory.mktemp("edge-e2e")
    with EdgeFleet(wd / "meshgate.db", wd) as f:
        gw_token = f.gateway()
        f.serve("--log-level", "warning")
        f.add_orders("orders-1", "orders-a")
        f.start_proxy("public", gw_token)
        yield f


def _instances_seen(f: EdgeFleet, n: int = 12) -> list[str]:
    out = []
    for _ in range(n):
        r = f.get("/orders/x", token=f.signer.token())
        out.append(r.json()["instance"] if r.status == 200 else str(r.status))
    return out


def test_jwt_through_the_served_gateway(fleet: EdgeFleet) -> None:
    ok = fleet.wait(lambda: (r := fleet.get("/orders/1", token=fleet.signer.token())).status == 200 and r,
                    "the gateway to serve /orders (certificate by SDS, JWKS, routes)")
    assert ok.json()["service"] == "orders"
    assert fleet.get("/orders/1").status == 401
    assert fleet.get("/orders/1", token=Signer.es256(kid="ec-1").token()).status == 401
    assert fleet.get("/orders/1", token=fleet.signer.token({"aud": "other"})).status == 401
    assert fleet.get("/orders/1", host="nope.example.com", token=fleet.signer.token()).status == 404
    forged = fleet.get("/orders/1", token=fleet.signer.token(),
                       headers={"x-forwarded-client-cert": "URI=spiffe://example.org/svc/admin"})
    assert "svc/admin" not in json.dumps(forged.json()["headers"])


def test_routing_follows_instances(fleet: EdgeFleet) -> None:
    fleet.wait(lambda: set(_instances_seen(fleet, 3)) == {"orders-a"}, "orders-a serving")
    fleet.add_orders("orders-2", "orders-b")  # scale up: the new sidecar registers its instance
    fleet.wait(lambda: set(_instances_seen(fleet)) == {"orders-a", "orders-b"},
               "both instances behind the gateway")
    listed = json.loads(fleet.cli("instance", "list", "--output", "json"))
    first = next(i for i in listed if i.get("proxy") == "orders-1")
    fleet.cli("instance", "remove", str(first["id"]))  # scale down
    fleet.wait(lambda: set(_instances_seen(fleet)) == {"orders-b"}, "only orders-b")


def test_a_route_added_while_running_is_served(fleet: EdgeFleet) -> None:
    assert fleet.get("/reports/1").status == 404
    fleet.cli("edge", "route", "add", "public", "--host", "api.example.com",
              "--prefix", "/reports", "--to", "orders", "--auth", "none", "--rate", "2/m")
    fleet.wait(lambda: fleet.get("/reports/1").status == 200, "the new route")
    statuses = [fleet.get("/reports/1").status for _ in range(3)]
    assert 429 in statuses, statuses
