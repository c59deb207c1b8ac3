"""Real Envoy: a tcp service through the caller's local `outbound-tcp/<svc>` listener and
the callee's mTLS inbound side; permissive mode also takes plaintext on the inbound port."""

from __future__ import annotations

import socket
import socketserver
import threading
import time
from pathlib import Path

import pytest

from meshgate.fleet.bootstrap import render_bootstrap
from meshgate.fleet.envoy import EnvoyProcess, free_port
from meshgate.store.world import load_world
from tests.xds_support import ServerThread, instance, issuer_secrets, new_mesh, service, sidecar

pytestmark = pytest.mark.envoy


class _Echo(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        data = self.request.recv(4096)
        self.request.sendall(b"echo:" + data)


def _roundtrip(port: int, payload: bytes, timeout: float = 10.0) -> bytes | None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
                s.sendall(payload)
                got = s.recv(4096)
                if got:
                    return got
        except OSError:
            pass
        time.sleep(0.1)
    return None


def test_tcp_service_over_mtls_and_permissive_plaintext(tmp_path: Path) -> None:
    engine = new_mesh(tmp_path / "mesh.db", mtls_mode="permissive")
    db_port = free_port()
    service(engine, "web")
    service(engine, "db", protocol="tcp", port=db_port)
    tokens = {"web-1": sidecar(engine, "web-1", "web", free_port()), "db-1": sidecar(engine, "db-1", "db", free_port())}
    echo = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _Echo)
    echo.daemon_threads = True
    threading.Thread(target=echo.serve_forever, daemon=True).start()
    db_inbound = free_port()
    instance(engine, "db", db_inbound, echo.server_address[1], proxy="db-1")
    world = load_world(engine)
    envoys = []
    try:
        with ServerThread(engine, secrets=issuer_secrets(engine)) as srv:
            for name in ("web-1", "db-1"):
                boot = render_bootstrap(world.proxies[name], tokens[name], servers=[f"127.0.0.1:{srv.port}"],
                                        admin_port=free_port(), xds_ca_pem=None)
                envoys.append(EnvoyProcess(boot, tmp_path, name).start())
            for e in envoys:
                e.wait_live()
            # web's local port for db -> db's sidecar (mTLS, tls chain) -> the echo app
            assert _roundtrip(db_port, b"hello") == b"echo:hello"
            db_envoy = envoys[1]
            assert db_envoy.stat(f"listener.127.0.0.1_{db_inbound}.ssl.handshake") >= 1
            # permissive: a caller without a sidecar reaches the inbound port in plaintext
            assert _roundtrip(db_inbound, b"plain") == b"echo:plain"
    finally:
        for e in envoys:
            e.stop()
        echo.shutdown()
        echo.server_close()
