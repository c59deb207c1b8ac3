"""End to end: `meshgate serve` + a real edge Envoy + real sidecar Envoys + Python apps.

Everything is made with the CLI, proxies get their config (edge certificates by
SDS, JWKS, routes) over ADS from the running server, and changes made while
they run (instances added and removed, a route added) reach them without a
restart.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from click.testing import CliRunner

from meshgate.cli import cli
from meshgate.fleet.app import App
from meshgate.fleet.envoy import EnvoyProcess, free_port
from meshgate.store.db import open_store
from meshgate.store.instances import add_instance
from meshgate.store.txn import write
from tests.edge_kit import AUDIENCE, Reply, Signer, https, jwks, wait_for

pytestmark = pytest.mark.envoy

ISSUER = "https://idp.example.com/"


MESHGATE = str(Path(sys.executable).parent / "meshgate")


def meshgate(db: Path, *args: str) -> str:
    """One CLI command, in process (the server runs as its own process)."""
    r = CliRunner().invoke(cli, ["--db", str(db), *args], catch_exceptions=False)
    assert r.exit_code == 0, (args, r.output)
    return r.output


def token_of(output: str) -> str:
    for word in output.split():
        if word.startswith("mgt_"):
            return word
    raise AssertionError(f"no token in {output!r}")


@dataclass
class Fleet:
    db: Path
    workdir: Path
    xds_port: int
    gateway_port: int
    root_pem: str
    signer: Signer
    procs: list[EnvoyProcess] = field(default_factory=list)
    apps: list[App] = field(default_factory=list)

    def wait(self, check: object, what: str, timeout: float = 30.0) -> object:
        """wait_for, and on timeout say what the proxies and the server were doing."""
        try:
            return wait_for(check, timeout, what)
        except AssertionError as exc:
            notes = [str(exc), meshgate(self.db, "proxy", "list")]
            for p in self.procs:
                notes.append(f"--- {p.name} log ---\n{p.tail(15)}")
            log = self.workdir / "serve.log"
            notes.append("--- serve.log ---\n" + (log.read_text()[-2000:] if log.exists() else ""))
            raise AssertionError("\n".join(notes)) from None

    def get(self, path: str, **kw: object) -> Reply:
        return https(self.gateway_port, path, ca_pem=self.root_pem, **kw)  # type: ignore[arg-type]

    def envoy(self, name: str, *bootstrap_args: str) -> EnvoyProcess:
        admin = free_port()
        out = self.workdir / f"{name}.json"
        meshgate(self.db, "proxy", "bootstrap", name, "--server", f"127.0.0.1:{self.xds_port}",
                 "--admin-port", str(admin), "--out", str(out), *bootstrap_args)
        proc = EnvoyProcess(out, self.workdir, name, admin_port=admin)
        self.procs.append(proc.start())
        proc.wait_live()
        return proc

    def sidecar(self, name: str, instance: str) -> EnvoyProcess:
        app = App("orders", instance=instance).start()
        self.apps.append(app)
        token = token_of(meshgate(self.db, "proxy", "add", name, "--service", "orders",
                                  "--outbound-port", str(free_port())))
        # the instance names its sidecar, as self-registration would (store API: the
        # `instance add` CLI registers instances without a sidecar)
        engine = open_store(str(self.db))
        try:
            with write(engine, f"instance of orders behind {name}") as w:
                add_instance(w, "orders", "127.0.0.1", free_port(), app.port, proxy=name)
        finally:
            engine.dispose()
        return self.envoy(name, "--token", token)


def _wait_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 20.0) -> None:
    def up() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"meshgate serve exited with {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
        except OSError:
            return False
        return True

    wait_for(up, timeout, f"meshgate serve on port {port}")


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    wd = tmp_path_factory.mktemp("edge-e2e")
    db = wd / "meshgate.db"
    signer = Signer.es256()
    (wd / "jwks.json").write_text(jwks(signer))
    xds_port, gw_port = free_port(), free_port()
    meshgate(db, "init", "--trust-domain", "example.org")
    meshgate(db, "service", "add", "orders", "--port", "8080")
    meshgate(db, "jwt", "add", "idp", "--issuer", ISSUER, "--audience", AUDIENCE,
             "--jwks-file", str(wd / "jwks.json"))
    gw_token = token_of(meshgate(db, "edge", "add", "public", "--listen", f"127.0.0.1:{gw_port}"))
    meshgate(db, "edge", "cert", "issue", "--gateway", "public", "--host", "api.example.com",
             "--ca-out", str(wd / "mesh-root.pem"))
    meshgate(db, "edge", "route", "add", "public", "--host", "api.example.com", "--prefix", "/orders",
             "--to", "orders", "--auth", "jwt:idp")
    meshgate(db, "policy", "allow", "--from", "edge:public", "--to", "orders")
    server = subprocess.Popen(
        [MESHGATE, "--db", str(db), "serve", "--listen", f"127.0.0.1:{xds_port}",
         "--log-level", "warning"],
        stdout=subprocess.DEVNULL, stderr=open(wd / "serve.log", "wb"),  # noqa: SIM115
        env={**os.environ, "MESHGATE_ACTOR": "test@meshgate"},
    )
    f = Fleet(db, wd, xds_port, gw_port, (wd / "mesh-root.pem").read_text(), signer)
    try:
        _wait_port(xds_port, server)
        f.sidecar("orders-1", "orders-a")
        f.envoy("public", "--token", gw_token)
        yield f
    finally:
        for p in f.procs:
            p.stop()
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(5)
        for a in f.apps:
            a.stop()


def _instances_seen(f: Fleet, n: int = 12) -> list[str]:
    out = []
    for _ in range(n):
        r = f.get("/orders/x", token=f.signer.token())
        out.append(r.json()["instance"] if r.status == 200 else str(r.status))
    return out


def test_jwt_through_the_served_gateway(fleet: Fleet) -> None:
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


def test_routing_follows_instances(fleet: Fleet) -> None:
    fleet.wait(lambda: set(_instances_seen(fleet, 3)) == {"orders-a"}, "orders-a serving")
    fleet.sidecar("orders-2", "orders-b")  # scale up: the new sidecar registers its instance
    fleet.wait(lambda: set(_instances_seen(fleet)) == {"orders-a", "orders-b"},
               "both instances behind the gateway")
    listed = json.loads(meshgate(fleet.db, "instance", "list", "--output", "json"))
    first = next(i for i in listed if i.get("proxy") == "orders-1")
    meshgate(fleet.db, "instance", "remove", str(first["id"]))  # scale down
    fleet.wait(lambda: set(_instances_seen(fleet)) == {"orders-b"}, "only orders-b")


def test_a_route_added_while_running_is_served(fleet: Fleet) -> None:
    assert fleet.get("/reports/1").status == 404
    meshgate(fleet.db, "edge", "route", "add", "public", "--host", "api.example.com",
             "--prefix", "/reports", "--to", "orders", "--auth", "none", "--rate", "2/m")
    fleet.wait(lambda: fleet.get("/reports/1").status == 200, "the new route")
    statuses = [fleet.get("/reports/1").status for _ in range(3)]
    assert 429 in statuses, statuses
