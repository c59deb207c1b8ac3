"""A small HTTPS client for an edge gateway on loopback, a JWT issuer, and steady traffic.

    edge = EdgeClient("shop.example.com", 8443, ca_pem=root)     # SNI + Host, mesh root trusted
    reply = edge.get("/call/orders/x", token=issuer.token())
    with Traffic(lambda: (edge.get("/").status == 200, "")) as t: # requests on a thread
        ...
    t.ok, t.failed, t.failures

Standard library plus PyJWT; used by the demo and tests, never in the request
path of the mesh (Envoy is).
"""

from __future__ import annotations

import http.client
import json
import socket
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec


@dataclass
class Reply:
    status: int | str  # "error" when no HTTP answer came (refused, reset, TLS failure)
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    error: str = ""

    def json(self) -> Any:
        try:
            return json.loads(self.body)
        except ValueError:
            return None

    def text(self, limit: int = 200) -> str:
        return self.body.decode(errors="replace").strip()[:limit]


class _Sni(http.client.HTTPSConnection):
    """Connects to `address` but speaks TLS (SNI) and HTTP (Host) for `host`."""

    def __init__(self, host: str, port: int, address: str, context: ssl.SSLContext, timeout: float) -> None:
        super().__init__(host, port, context=context, timeout=timeout)
        self._address = address
        self._tls = context

    def connect(self) -> None:
        sock = socket.create_connection((self._address, self.port), self.timeout)
        self.sock = self._tls.wrap_socket(sock, server_hostname=self.host)


class EdgeClient:
    def __init__(self, host: str, port: int, *, ca_pem: str, address: str = "127.0.0.1",
                 timeout: float = 10.0) -> None:
        self.host, self.port, self.address, self.timeout = host, port, address, timeout
        self.context = ssl.create_default_context(cadata=ca_pem)

    @property
    def url(self) -> str:
        return f"https://{self.host}:{self.port}"

    def get(self, path: str, *, token: str | None = None, headers: dict[str, str] | None = None) -> Reply:
        conn = _Sni(self.host, self.port, self.address, self.context, self.timeout)
        h = dict(headers or {})
        if token is not None:
            h["authorization"] = f"Bearer {token}"
        try:
            conn.request("GET", path, headers=h)
            resp = conn.getresponse()
            return Reply(resp.status, resp.read(), {k.lower(): v for k, v in resp.getheaders()})
        except (OSError, ssl.SSLError, http.client.HTTPException) as exc:
            return Reply("error", error=f"{type(exc).__name__}: {exc}")
        finally:
            conn.close()


def http_get(port: int, path: str, host: str = "127.0.0.1", timeout: float = 10.0) -> Reply:
    """Plain HTTP on loopback (an app, or a sidecar's outbound port)."""
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return Reply(resp.status, resp.read(), {k.lower(): v for k, v in resp.getheaders()})
    except (OSError, http.client.HTTPException) as exc:
        return Reply("error", error=f"{type(exc).__name__}: {exc}")
    finally:
        conn.close()


class Issuer:
    """A JWT issuer made on the spot: one ES256 key, its JWKS, tokens for `audience`."""

    def __init__(self, issuer: str, audience: str, kid: str = "demo-1") -> None:
        self.issuer, self.audience, self.kid = issuer, audience, kid
        self.key = ec.generate_private_key(ec.SECP256R1())

    def jwks(self) -> str:
        jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(self.key.public_key()))
        jwk.update({"kid": self.kid, "alg": "ES256", "use": "sig"})
        return json.dumps({"keys": [jwk]})

    def token(self, subject: str = "alice", ttl: int = 3600, **claims: Any) -> str:
        now = int(time.time())
        body = {"iss": self.issuer, "aud": self.audience, "sub": subject, "iat": now, "exp": now + ttl, **claims}
        return jwt.encode(body, self.key, algorithm="ES256", headers={"kid": self.kid})


class Traffic:
    """Calls `request()` in a loop on a thread until stopped; counts ok and failed.

    `request` returns True for a success; failures keep their description.
    """

    def __init__(self, request: Callable[[], tuple[bool, str]], pause: float = 0.0) -> None:
        self.request = request
        self.pause = pause
        self.ok = 0
        self.failed = 0
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="demo-traffic", daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            good, what = self.request()
            if good:
                self.ok += 1
            else:
                self.failed += 1
                if len(self.failures) < 10:
                    self.failures.append(what)
            if self.pause:
                self._stop.wait(self.pause)

    @property
    def total(self) -> int:
        return self.ok + self.failed

    def start(self) -> Traffic:
        self._thread.start()
        return self

    def stop(self) -> Traffic:
        self._stop.set()
        self._thread.join(30)
        return self

    def __enter__(self) -> Traffic:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> None:
    """`python -m meshgate.fleet.client --issuer URL --audience AUD --jwks-out F --token-out F`:
    a fresh signing key, its JWKS (for `meshgate jwt add --jwks-file`) and one token (compose/)."""
    import argparse
    from pathlib import Path

    p = argparse.ArgumentParser(description=main.__doc__)
    p.add_argument("--issuer", required=True)
    p.add_argument("--audience", required=True)
    p.add_argument("--jwks-out", required=True, type=Path)
    p.add_argument("--token-out", required=True, type=Path)
    p.add_argument("--ttl", type=int, default=7 * 24 * 3600, help="token lifetime, seconds")
    a = p.parse_args(argv)
    issuer = Issuer(a.issuer, a.audience)
    a.jwks_out.write_text(issuer.jwks() + "\n")
    a.token_out.write_text(issuer.token(ttl=a.ttl) + "\n")


if __name__ == "__main__":
    main()
