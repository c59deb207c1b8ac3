"""Helpers for the mesh-identity Envoy tests: requests that say what happened, counted traffic."""

from __future__ import annotations

import json
import socket
import ssl
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from meshgate.fleet.envoy import EnvoyProcess


def wait_for(what: str, check: Callable[[], Any], timeout: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = check()
        except (OSError, KeyError, ValueError) as exc:
            last = exc
        else:
            if last:
                return last
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}; last: {last!r}")


def http_get(port: int, host: str, path: str = "/hello") -> tuple[int, Any]:
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", headers={"Host": host})
    try:
        with urllib.request.urlopen(req, timeout=5) as r:  # noqa: S310 - loopback
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode(errors="replace")


def _exchange(sock: socket.socket) -> str:
    sock.sendall(b"GET /hello HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
    data = b""
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return data.decode(errors="replace") if data else "refused: connection closed without a response"


def raw_http(port: int) -> str:
    """One plaintext HTTP request on a new TCP connection: the response, or 'refused: ...'."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            return _exchange(s)
    except OSError as exc:
        return f"refused: {exc!r}"


def tls_get(port: int, tmp: Path, bundle: str, chain: str | None, key: str | None) -> str:
    """One HTTP request over TLS with an optional client certificate (SPIFFE: no host name check)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.load_verify_locations(cadata=bundle)
    if chain and key:
        (tmp / "client.crt").write_text(chain)
        (tmp / "client.key").write_text(key)
        ctx.load_cert_chain(tmp / "client.crt", tmp / "client.key")
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as raw, ctx.wrap_socket(raw) as s:
            return _exchange(s)
    except (ssl.SSLError, OSError) as exc:
        return f"refused: {exc!r}"


def leaf_serials(envoy: EnvoyProcess) -> set[int]:
    """Serial numbers of the leaf certificates Envoy has loaded (admin /certs)."""
    certs = json.loads(envoy.admin("/certs")).get("certificates", [])
    return {int(c["cert_chain"][0]["serial_number"], 16) for c in certs if c.get("cert_chain")}


class Traffic:
    """HTTP through sidecar A's outbound listener and TCP through its listener for c, each
    in its own thread, one request after another until stopped. Every request is counted."""

    def __init__(self, http_port: int, tcp_port: int) -> None:
        self.http_port, self.tcp_port = http_port, tcp_port
        self.http_ok = self.tcp_ok = 0
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._loop, args=(self._http,), daemon=True),
                         threading.Thread(target=self._loop, args=(self._tcp,), daemon=True)]

    def _http(self) -> None:
        status, body = http_get(self.http_port, "b")
        if status == 200:
            self.http_ok += 1
        else:
            self.failures.append(f"{time.time():.3f} http {status} {str(body)[:200]}")

    def _tcp(self) -> None:
        got = raw_http(self.tcp_port)
        if got.startswith("HTTP/1.1 200"):
            self.tcp_ok += 1
        else:
            self.failures.append(f"{time.time():.3f} tcp {got[:200]}")

    def _loop(self, one: Callable[[], None]) -> None:
        while not self._stop.is_set():
            one()
            self._stop.wait(0.01)  # continuous, but leave the shared CPUs some air

    def more(self, n: int, timeout: float = 20.0) -> None:
        """Wait until both kinds of traffic made `n` more successful requests."""
        h, t = self.http_ok, self.tcp_ok
        wait_for(f"{n} more requests", lambda: self.http_ok >= h + n and self.tcp_ok >= t + n, timeout)

    def __enter__(self) -> Traffic:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(10)
