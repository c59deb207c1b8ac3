"""The demo's fleet: a mesh built with the CLI, `meshgate serve`, apps, sidecars, an edge gateway.

Every change goes through the real `meshgate` commands (run in this process,
against the demo's database, so they are fast), and every process is real: the
server, one tiny app per instance (`python -m meshgate.fleet.app`), one Envoy
per proxy started with `meshgate proxy run`. All on 127.0.0.1, on free ports.

    fleet = Fleet(workdir, grace_seconds=2)
    fleet.build_mesh(); fleet.start_server(); fleet.start_instance("web", "web-1"); ...
    fleet.edge_get("/call/orders/x", token=fleet.token)
    fleet.close()                                  # every process, by PID
"""

from __future__ import annotations

import json
import shlex
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from click.testing import CliRunner

from meshgate.errors import MeshgateError
from meshgate.fleet.client import EdgeClient, Issuer, Reply
from meshgate.fleet.envoy import free_port
from meshgate.fleet.errors import FleetError
from meshgate.fleet.procs import Child, Children, meshgate_argv

T = TypeVar("T")

TRUST_DOMAIN = "example.org"
EDGE_HOST = "shop.example.com"
GATEWAY = "public"
PROVIDER = "demo-idp"
ISSUER_URL = "https://idp.demo.example/"
AUDIENCE = "shop"
ADDRESS = "127.0.0.1"
# who may call whom (each a `meshgate policy` command; ids show up in Envoy's denials)
POLICIES: tuple[tuple[str, ...], ...] = (
    ("allow", "--from", f"edge:{GATEWAY}", "--to", "web", "--id", "edge-to-web"),
    ("allow", "--from", "web", "--to", "orders", "--id", "web-to-orders"),
    ("allow", "--from", "*", "--to", "payments", "--id", "mesh-to-payments"),
    ("deny", "--from", "web", "--to", "payments", "--id", "web-never-pays"),
)
CHAIN_PATH = "/call/orders/call/payments/charge"  # edge -> web -> orders -> payments
FORBIDDEN_PATH = "/call/payments/charge"  # edge -> web -> payments


def token_in(output: str) -> str:
    for word in output.replace('"', " ").split():
        if word.startswith("mgt_"):
            return word
    raise FleetError(f"no join token in: {output.strip()[:200]}")


def wait_until(check: Callable[[], T], timeout: float, what: str, interval: float = 0.1) -> T:
    """Poll `check()` until truthy; FleetError naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        last = check()
        if last:
            return last
        if time.monotonic() >= deadline:
            raise FleetError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(interval)


@dataclass
class CliRun:
    args: tuple[str, ...]
    code: int
    output: str

    @property
    def json(self) -> Any:
        return json.loads(self.output)


class Cli:
    """`meshgate --db <demo db> ...` in this process (no interpreter start-up per command)."""

    def __init__(self, db: Path) -> None:
        self.db = db
        self.runner = CliRunner()

    def __call__(self, *args: str, check: bool = True) -> CliRun:
        from meshgate.cli import cli

        result = self.runner.invoke(cli, ["--db", str(self.db), *args], catch_exceptions=True,
                                    env={"MESHGATE_ACTOR": "demo@meshgate"})
        if result.exception is not None and not isinstance(result.exception, SystemExit):
            raise FleetError(f"meshgate {shlex.join(args)}: {result.exception!r}") from result.exception
        if result.exit_code == 1 and result.output.rstrip().endswith("Aborted!"):
            raise KeyboardInterrupt  # click turned a Ctrl-C during the command into "Aborted!"
        run = CliRun(tuple(args), result.exit_code, result.output)
        if check and run.code != 0:
            raise FleetError(f"meshgate {shlex.join(args)} exited with {run.code}: {run.output.strip()}")
        return run


def shown(*args: str, workdir: Path | None = None) -> str:
    """A command as a user types it in the demo's directory (MESHGATE_DB set): join
    tokens replaced by a variable, paths relative."""
    prefix = f"{workdir}/" if workdir is not None else None
    words = []
    for a in args:
        if a.startswith("mgt_"):
            words.append('"$TOKEN"')
            continue
        if prefix and a.startswith(prefix):
            a = a[len(prefix):]
        words.append(shlex.quote(a))
    return "meshgate " + " ".join(words)


@dataclass
class Instance:
    proxy: str
    service: str
    app_port: int
    inbound_port: int
    outbound_port: int
    admin_port: int
    app: Child
    sidecar: Child

    def app_command(self) -> str:
        return (f"python -m meshgate.fleet.app --name {self.service} --port {self.app_port} "
                f"--outbound {ADDRESS}:{self.outbound_port}")

    def command(self, server: str) -> str:
        """The `meshgate proxy run` that started its sidecar, as a user would type it."""
        return shown("proxy", "run", self.proxy, "--token", "mgt_", "--server", server,
                     "--address", ADDRESS, "--inbound-port", str(self.inbound_port),
                     "--app-port", str(self.app_port))


@dataclass
class Fleet:
    workdir: Path
    grace_seconds: int = 2
    db: Path = field(init=False)
    cli: Cli = field(init=False)
    children: Children = field(init=False)
    issuer: Issuer = field(init=False)
    tokens: dict[str, str] = field(default_factory=dict)
    instances: dict[str, Instance] = field(default_factory=dict)
    xds_port: int = 0
    admin_port: int = 0
    edge_port: int = 0
    edge: EdgeClient | None = None
    server: Child | None = None
    gateway: Child | None = None
    stopped: set[int] = field(default_factory=set)  # pids stopped on purpose

    def __post_init__(self) -> None:
        self.workdir = Path(self.workdir)
        self.db = self.workdir / "meshgate.db"
        self.cli = Cli(self.db)
        self.children = Children(self.workdir / "logs")
        self.issuer = Issuer(ISSUER_URL, AUDIENCE)

    def shown(self, *args: str) -> str:
        return shown(*args, workdir=self.workdir)

    # -- addresses -------------------------------------------------------------------
    @property
    def server_address(self) -> str:
        return f"{ADDRESS}:{self.xds_port}"

    @property
    def admin_address(self) -> str:
        return f"{ADDRESS}:{self.admin_port}"

    @property
    def token(self) -> str:
        """A valid JWT for the edge (the demo's issuer; also in token.jwt)."""
        return self.tokens["jwt"]

    def curl(self, path: str, token: bool = True) -> str:
        auth = ' -H "authorization: Bearer $(cat token.jwt)"' if token else ""
        return (f"curl --cacert mesh-root.pem --resolve {EDGE_HOST}:{self.edge_port}:{ADDRESS}{auth} "
                f"https://{EDGE_HOST}:{self.edge_port}{path}")

    # -- the mesh, with the CLI --------------------------------------------------------
    def build_mesh(self) -> list[str]:
        """Everything the tour needs, in the store; returns the commands run."""
        done: list[str] = []

        def run(*args: str) -> CliRun:
            r = self.cli(*args)
            done.append(self.shown(*args))
            return r

        self.xds_port, self.admin_port, self.edge_port = free_port(), free_port(), free_port()
        run("init", "--trust-domain", TRUST_DOMAIN)
        run("mesh", "set", "--instance-grace", f"{self.grace_seconds}s")
        for svc in ("web", "orders", "payments"):
            run("service", "add", svc, "--port", "8080")
        jwks = self.workdir / "jwks.json"
        jwks.write_text(self.issuer.jwks())
        run("jwt", "add", PROVIDER, "--issuer", ISSUER_URL, "--audience", AUDIENCE, "--jwks-file", str(jwks))
        self.tokens[GATEWAY] = token_in(run("edge", "add", GATEWAY, "--listen", f"{ADDRESS}:{self.edge_port}").output)
        run("edge", "cert", "issue", "--gateway", GATEWAY, "--host", EDGE_HOST,
            "--ca-out", str(self.workdir / "mesh-root.pem"))
        for p in POLICIES:
            run("policy", *p)
        run("edge", "route", "add", GATEWAY, "--host", EDGE_HOST, "--prefix", "/", "--to", "web",
            "--auth", f"jwt:{PROVIDER}")
        self.tokens["jwt"] = self.issuer.token()
        (self.workdir / "token.jwt").write_text(self.tokens["jwt"] + "\n")
        self.edge = EdgeClient(EDGE_HOST, self.edge_port, ca_pem=(self.workdir / "mesh-root.pem").read_text())
        return done

    def add_proxy(self, name: str, service: str) -> int:
        outbound = free_port()
        r = self.cli("proxy", "add", name, "--service", service, "--outbound-port", str(outbound), "--output", "json")
        self.tokens[name] = r.json["token"]
        return outbound

    # -- processes ----------------------------------------------------------------------
    def start_server(self) -> Child:
        self.server = self.children.start("meshgate-serve", [
            *meshgate_argv(), "--db", str(self.db), "serve", "--listen", self.server_address,
            "--admin", self.admin_address, "--log-level", "warning",
        ])
        return self.server

    def wait_server(self, timeout: float = 30.0) -> None:
        server = self.server
        assert server is not None

        def up() -> bool:
            if not server.running():
                raise FleetError(f"meshgate serve exited with {server.popen.poll()}:\n{server.tail()}")
            for port in (self.xds_port, self.admin_port):
                try:
                    socket.create_connection((ADDRESS, port), 0.2).close()
                except OSError:
                    return False
            return True

        wait_until(up, timeout, "meshgate serve to listen")

    def _proxy_run(self, name: str, admin_port: int, *extra: str) -> Child:
        return self.children.start(f"envoy-{name}", [
            *meshgate_argv(), "--db", str(self.db), "proxy", "run", name, "--token", self.tokens[name],
            "--server", self.server_address, "--admin-port", str(admin_port), "--log-level", "error", *extra,
        ])

    def start_instance(self, service: str, proxy: str) -> Instance:
        """The app and its sidecar (which registers the instance when it connects)."""
        outbound = self.add_proxy(proxy, service)
        app_port, inbound, admin = free_port(), free_port(), free_port()
        app = self.children.start(f"app-{proxy}", [
            sys.executable, "-m", "meshgate.fleet.app", "--name", service, "--port", str(app_port),
            "--outbound", f"{ADDRESS}:{outbound}", "--instance", proxy,
        ])
        sidecar = self._proxy_run(proxy, admin, "--address", ADDRESS, "--inbound-port", str(inbound),
                                  "--app-port", str(app_port))
        inst = Instance(proxy, service, app_port, inbound, outbound, admin, app, sidecar)
        self.instances[proxy] = inst
        return inst

    def stop_instance(self, proxy: str) -> int | None:
        """Stop the sidecar (`proxy run` passes SIGTERM to Envoy), then the app; the sidecar's exit code."""
        inst = self.instances.pop(proxy)
        self.stopped.update((inst.sidecar.pid, inst.app.pid))
        code = inst.sidecar.stop()
        inst.app.stop()
        return code

    def start_gateway(self) -> Child:
        self.gateway = self._proxy_run(GATEWAY, free_port())
        return self.gateway

    # -- looking -------------------------------------------------------------------------
    def registered(self) -> dict[str, dict[str, Any]]:
        """Instances in the store, by the proxy that registered them."""
        rows = self.cli("instance", "list", "--output", "json").json
        return {r["proxy"]: r for r in rows if r.get("proxy")}

    def edge_get(self, path: str, token: str | None = None) -> Reply:
        assert self.edge is not None
        return self.edge.get(path, token=token)

    def check_children(self) -> None:
        """FleetError naming a process that exited on its own, with its log's tail."""
        for c in self.children.items:
            code = c.popen.poll()
            if code is not None and c.pid not in self.stopped:
                raise FleetError(f"{c.name} exited with {code}:\n{c.tail()}")

    def close(self) -> None:
        self.children.stop_all()


def describe(exc: BaseException) -> str:
    return str(exc) if isinstance(exc, MeshgateError) else f"{type(exc).__name__}: {exc}"
