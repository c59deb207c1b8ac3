"""The whole product in a test: `meshgate serve` as a subprocess, proxies added and
bootstrapped with the CLI, real Envoys and apps, and requests counted while things change.

    with Fleet(work / "mesh.db", work) as f:
        f.cli("init", "--trust-domain", "example.org")
        f.cli("service", "add", "orders", "--port", "8080")
        token = f.sidecar("orders-1", "orders", free_port())
        f.instance("orders", free_port(), f.app("orders").port, proxy="orders-1")
        f.serve()
        f.start_envoys({"orders-1": f.bootstrap("orders-1", token)})

Every process started here is stopped by its PID (never by name).
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from click.testing import CliRunner

from meshgate.cli import cli as meshgate_cli
from meshgate.fleet.app import App
from meshgate.fleet.envoy import EnvoyProcess, free_port
from meshgate.store.db import open_store
from tests.xds_support import instance

MESHGATE = str(Path(sys.executable).parent / "meshgate")


def wait_for(what: str, check: Callable[[], Any], timeout: float = 20.0, interval: float = 0.1) -> Any:
    """Poll `check()` until truthy. Errors of something still starting (a refused
    connection, a stat or row not there yet, a half-written reply) count as 'not yet'."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = check()
        except (OSError, KeyError, ValueError, StopIteration) as exc:
            last = exc
        else:
            if last:
                return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}; last: {last!r}")


# ---- the CLI, in process (the server runs as its own process) --------------------------------

def cli(db: Path | str, *args: str) -> str:
    """`meshgate --db DB ARGS` in process; asserts success, returns the output."""
    r = CliRunner().invoke(meshgate_cli, ["--db", str(db), *args], catch_exceptions=False)
    assert r.exit_code == 0, (args, r.output)
    return r.output


def cli_json(db: Path | str, *args: str) -> Any:
    return json.loads(cli(db, *args, "-o", "json"))


def token_of(output: str) -> str:
    """The join token in what `edge add` printed."""
    for word in output.split():
        if word.startswith("mgt_"):
            return word
    raise AssertionError(f"no token in {output!r}")


# ---- meshgate serve ---------------------------------------------------------------------------

class Serve:
    """`meshgate serve` as a subprocess on fixed ports (xDS and admin), so it can be killed
    and started again where the Envoys' bootstraps point. `args` go to `serve` as they are."""

    def __init__(self, db: Path | str, workdir: Path, name: str = "serve", *args: str) -> None:
        self.db = db
        self.args = args
        self.port, self.admin = free_port(), free_port()
        self.log_path = workdir / f"{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Serve:
        log = open(self.log_path, "ab")  # noqa: SIM115 - owned by the child
        try:
            self.proc = subprocess.Popen(
                [MESHGATE, "serve", "--listen", f"127.0.0.1:{self.port}",
                 "--admin", f"127.0.0.1:{self.admin}", *self.args],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env={**os.environ, "MESHGATE_DB": str(self.db), "MESHGATE_ACTOR": "test@meshgate"},
            )
        finally:
            log.close()
        return self

    def healthy(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"meshgate serve exited {self.proc.returncode}: {self.tail()}")
        conn = http.client.HTTPConnection("127.0.0.1", self.admin, timeout=1)
        try:
            conn.request("GET", "/healthz")
            return conn.getresponse().status == 200
        finally:
            conn.close()

    def wait_ready(self, timeout: float = 30.0) -> None:
        wait_for(f"meshgate serve /healthz ({self.log_path.name})", self.healthy, timeout)

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(sig)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)

    def tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""


# ---- a fleet: the store, servers, Envoys and apps of one test ---------------------------------

class Fleet:
    """What one test runs on its store: `meshgate serve` replicas, Envoys and apps.
    `stop()` (or leaving the `with` block) stops every one of them by PID."""

    def __init__(self, db: Path | str, work: Path) -> None:
        self.db = db
        self.work = work
        self.servers: list[Serve] = []
        self.envoys: dict[str, EnvoyProcess] = {}
        self.apps: list[App] = []

    @property
    def server(self) -> Serve:
        return self.servers[0]

    def cli(self, *args: str) -> str:
        return cli(self.db, *args)

    def cli_json(self, *args: str) -> Any:
        return cli_json(self.db, *args)

    def sidecar(self, name: str, service: str, outbound_port: int) -> str:
        """`proxy add NAME --service SERVICE --outbound-port PORT`: its join token."""
        return str(self.cli_json("proxy", "add", name, "--service", service,
                                 "--outbound-port", str(outbound_port))["token"])

    def app(self, name: str, **kwargs: Any) -> App:
        app = App(name, **kwargs).start()
        self.apps.append(app)
        return app

    def instance(self, service: str, inbound_port: int, app_port: int, proxy: str) -> int:
        """An instance that names its sidecar, as self-registration would (store API: the
        `instance add` CLI registers instances without a sidecar)."""
        engine = open_store(str(self.db))
        try:
            return instance(engine, service, inbound_port, app_port, proxy=proxy)
        finally:
            engine.dispose()

    def serve(self, *args: str, name: str = "serve", wait: bool = True) -> Serve:
        """Start one more `meshgate serve` on the store (and wait for /healthz)."""
        server = Serve(self.db, self.work, name, *args).start()
        self.servers.append(server)
        if wait:
            server.wait_ready()
        return server

    def bootstrap(self, name: str, token: str, *args: str) -> dict[str, Any]:
        """`proxy bootstrap` pointing at every server started so far, with a free admin port."""
        out = self.work / f"{name}.json"
        servers = [a for s in self.servers for a in ("--server", f"127.0.0.1:{s.port}")]
        self.cli("proxy", "bootstrap", name, "--token", token, *servers,
                 "--admin-port", str(free_port()), "--out", str(out), *args)
        return json.loads(out.read_text())  # type: ignore[no-any-return]

    def envoy(self, name: str, bootstrap: dict[str, Any]) -> EnvoyProcess:
        """Start an Envoy from `bootstrap` (not waiting for it); names are unique, so
        `stop()` reaches every Envoy started."""
        assert name not in self.envoys, f"an Envoy named {name!r} was started already"
        self.envoys[name] = EnvoyProcess(bootstrap, self.work, name).start()
        return self.envoys[name]

    def start_envoys(self, bootstraps: dict[str, dict[str, Any]]) -> None:
        """An Envoy per bootstrap, all started, then each waited for until LIVE."""
        started = [self.envoy(name, boot) for name, boot in bootstraps.items()]
        for e in started:
            e.wait_live()

    def stop(self) -> None:
        for e in self.envoys.values():
            e.stop()
        for s in self.servers:
            s.stop()
        for a in self.apps:
            a.stop()

    def __enter__(self) -> Fleet:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


# ---- requests --------------------------------------------------------------------------------

def get(port: int, host: str, path: str = "/hello", *, method: str = "GET",
        timeout: float = 5.0) -> tuple[int, str]:
    """One plaintext request to 127.0.0.1:port (a sidecar's outbound listener) with a Host
    header, the path sent as it is: (status, body). A POST carries a one-byte body."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request(method, path, body=b"x" if method == "POST" else None, headers={"Host": host})
        resp = conn.getresponse()
        return resp.status, resp.read().decode(errors="replace")
    finally:
        conn.close()


def _exchange(sock: socket.socket, path: str) -> str:
    sock.sendall(f"GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n".encode())
    data = b""
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return data.decode(errors="replace") if data else "refused: connection closed without a response"


def raw_http(port: int, path: str = "/hello") -> str:
    """One plaintext HTTP request on a new TCP connection: the response, or 'refused: ...'."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            return _exchange(s, path)
    except OSError as exc:
        return f"refused: {exc!r}"


def tls_get(port: int, tmp: Path, bundle: str, chain: str | None, key: str | None,
            path: str = "/hello") -> str:
    """One HTTP request over TLS, straight to a sidecar's inbound port, with an optional
    client certificate (SPIFFE: no host name check): the response, or 'refused: ...'."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.load_verify_locations(cadata=bundle)
    if chain and key:
        (tmp / "client.crt").write_text(chain)
        (tmp / "client.key").write_text(key)
        ctx.load_cert_chain(tmp / "client.crt", tmp / "client.key")
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as raw, ctx.wrap_socket(raw) as s:
            return _exchange(s, path)
    except (ssl.SSLError, OSError) as exc:
        return f"refused: {exc!r}"


class Traffic:
    """Requests made one after another in a thread until stopped, every one counted.

    `one()` makes one request and returns None when it passed, else what went wrong.
    `Traffic.http(port, host, expect)` is a GET through a sidecar's outbound port.
    """

    def __init__(self, one: Callable[[], str | None], name: str = "traffic") -> None:
        self.one = one
        self.ok = 0
        self.failed: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    @staticmethod
    def http(port: int, host: str, expect: str) -> Traffic:
        def one() -> str | None:
            status, body = get(port, host)
            return None if status == 200 and expect in body else f"{status} {body[:200]}"

        return Traffic(one, f"traffic-{host}")

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                problem = self.one()
            except (OSError, http.client.HTTPException) as exc:
                problem = repr(exc)
            if problem is None:
                self.ok += 1
            else:
                self.failed.append(f"{time.time():.3f} {problem}")
            self._stop.wait(0.01)  # continuous, but leave the shared CPUs some air

    def more(self, n: int, timeout: float = 20.0) -> None:
        """Wait for `n` more successful requests (returns early on a failure)."""
        target = self.ok + n
        wait_for(f"{n} more requests", lambda: self.ok >= target or self.failed, timeout)

    def __enter__(self) -> Traffic:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)


# ---- what the store and the Envoys say --------------------------------------------------------

def status_rows(db: Path | str) -> list[dict[str, Any]]:
    from meshgate.store import status as store_status

    engine = open_store(str(db))
    try:
        with engine.connect() as conn:
            return store_status.status_rows(conn)
    finally:
        engine.dispose()


def in_sync(db: Path | str, proxies: set[str]) -> bool:
    """Every xDS type each proxy was sent (at least CDS, LDS, SDS): connected, and the
    version sent is the version ACKed."""
    by_proxy: dict[str, list[dict[str, Any]]] = {}
    for r in status_rows(db):
        if r["proxy"] in proxies:
            by_proxy.setdefault(r["proxy"], []).append(r)
    return set(by_proxy) == proxies and all(
        {"cds", "lds", "sds"} <= {r["type"] for r in rs}
        and all(r["connected"] and r["sent_version"] is not None
                and r["sent_version"] == r["acked_version"] for r in rs)
        for rs in by_proxy.values()
    )


def identity_serials(envoy: EnvoyProcess) -> set[str]:
    """Serial numbers of every certificate in the chains an Envoy holds (admin /certs)."""
    certs = json.loads(envoy.admin("/certs"))["certificates"]
    return {c["serial_number"] for cert in certs for c in cert.get("cert_chain", [])}


def leaf_serials(envoy: EnvoyProcess) -> set[int]:
    """Serial numbers of the leaf certificates alone (the first of each chain)."""
    certs = json.loads(envoy.admin("/certs")).get("certificates", [])
    return {int(c["cert_chain"][0]["serial_number"], 16) for c in certs if c.get("cert_chain")}
