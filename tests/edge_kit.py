"""Test helpers for edge gateways: signing keys and tokens, a mesh CA, an HTTPS client.

Tokens are minted here with PyJWT (ES256 and RS256 keys generated per run); the
JWKS holds only their public halves. The client speaks TLS to 127.0.0.1 with
any SNI/Host, optionally presenting a client certificate, and reports a refused
handshake as a result instead of raising.
"""

from __future__ import annotations

import base64
import http.client
import json
import socket
import ssl
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from meshgate.ca import authority
from meshgate.fleet.envoy import free_port
from tests.mesh_kit import Fleet, token_of

ISSUER = "https://idp.example.com/"
AUDIENCE = "orders-api"


@dataclass
class Signer:
    """One JWT signing key (private, kept in the test) and its public JWK."""

    alg: str
    kid: str
    key: Any

    @staticmethod
    def es256(kid: str = "ec-1") -> Signer:
        return Signer("ES256", kid, ec.generate_private_key(ec.SECP256R1()))

    @staticmethod
    def rs256(kid: str = "rsa-1") -> Signer:
        return Signer("RS256", kid, rsa.generate_private_key(public_exponent=65537, key_size=2048))

    def jwk(self) -> dict[str, Any]:
        algo = jwt.algorithms.ECAlgorithm if self.alg.startswith("ES") else jwt.algorithms.RSAAlgorithm
        d = json.loads(algo.to_jwk(self.key.public_key()))
        d.update({"kid": self.kid, "alg": self.alg, "use": "sig"})
        return d

    def token(self, claims: dict[str, Any] | None = None, **headers: Any) -> str:
        now = int(time.time())
        body: dict[str, Any] = {"iss": ISSUER, "aud": AUDIENCE, "sub": "alice", "iat": now,
                                "exp": now + 600}
        body.update(claims or {})
        body = {k: v for k, v in body.items() if v is not None}
        return jwt.encode(body, self.key, algorithm=self.alg, headers={"kid": self.kid, **headers})


def jwks(*signers: Signer) -> str:
    return json.dumps({"keys": [s.jwk() for s in signers]})


def unsigned_token(claims: dict[str, Any] | None = None, kid: str = "ec-1") -> str:
    """`alg: none`: a token with no signature at all."""
    now = int(time.time())
    body = {"iss": ISSUER, "aud": AUDIENCE, "sub": "mallory", "exp": now + 600, **(claims or {})}

    def b64(d: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(d).encode()).rstrip(b"=").decode()

    return f"{b64({'alg': 'none', 'typ': 'JWT', 'kid': kid})}.{b64(body)}."


@dataclass
class MeshCa:
    """A root CA (meshgate's own code) and leaves for SPIFFE ids or DNS names."""

    trust_domain: str = "example.org"
    now: float = field(default_factory=time.time)

    def __post_init__(self) -> None:
        self.cert, self.key = authority.create_root(self.trust_domain, self.now)

    @property
    def pem(self) -> str:
        return authority.cert_pem(self.cert)

    def leaf(self, spiffe_id: str, dns: tuple[str, ...] = (), ttl: int = 3600) -> tuple[str, str]:
        k = authority.new_key()
        c = authority.issue_leaf(self.cert, self.key, k.public_key(), spiffe_id=spiffe_id,
                                 now=self.now, ttl_seconds=ttl, dns_names=dns)
        return authority.cert_pem(c), authority.key_pem(k)

    def client_files(self, workdir: Path, name: str, spiffe_id: str) -> tuple[Path, Path]:
        cert, key = self.leaf(spiffe_id)
        c, k = workdir / f"{name}.crt", workdir / f"{name}.key"
        c.write_text(cert)
        k.write_text(key)
        return c, k

    def client_context(self, spiffe_id: str, workdir: Path) -> ssl.SSLContext:
        """A TLS client presenting a leaf for `spiffe_id` and trusting this root, with no
        host name check (SPIFFE certificates name no host)."""
        stem = spiffe_id.rsplit("/", 2)[-2] + "-" + spiffe_id.rsplit("/", 1)[-1]
        ctx = tls_context(self.pem, self.client_files(workdir, stem, spiffe_id))
        ctx.check_hostname = False
        return ctx


@dataclass
class Reply:
    status: int | str  # "refused" when the TLS handshake or connection failed
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    error: str = ""

    def json(self) -> Any:
        return json.loads(self.body)


class _SniConnection(http.client.HTTPSConnection):
    def __init__(self, sni: str, port: int, context: ssl.SSLContext, address: str) -> None:
        super().__init__(sni, port, context=context, timeout=5)
        self._address = address

    def connect(self) -> None:
        sock = socket.create_connection((self._address, self.port), self.timeout)
        self.sock = self._context.wrap_socket(sock, server_hostname=self.host)


def tls_context(ca_pem: str, client: tuple[Path, Path] | None = None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cadata=ca_pem)
    if client is not None:
        ctx.load_cert_chain(str(client[0]), str(client[1]))
    return ctx


def https(
    port: int,
    path: str,
    *,
    ca_pem: str,
    sni: str = "api.example.com",
    host: str | None = None,
    headers: dict[str, str] | None = None,
    token: str | None = None,
    client: tuple[Path, Path] | None = None,
    address: str = "127.0.0.1",
    method: str = "GET",
    body: bytes | None = None,
) -> Reply:
    conn = _SniConnection(sni, port, tls_context(ca_pem, client), address)
    h = {"host": host or sni, **(headers or {})}
    if token is not None:
        h["authorization"] = f"Bearer {token}"
    try:
        conn.request(method, path, body=body, headers=h)
        resp = conn.getresponse()
        return Reply(resp.status, resp.read(), {k.lower(): v for k, v in resp.getheaders()})
    except (ssl.SSLError, ConnectionError, OSError, http.client.HTTPException) as exc:
        return Reply("refused", error=repr(exc))
    finally:
        conn.close()


def alpn(port: int, ca_pem: str, sni: str = "api.example.com") -> str | None:
    """The protocol the gateway picks when offered h2 and http/1.1."""
    ctx = tls_context(ca_pem)
    ctx.set_alpn_protocols(["h2", "http/1.1"])
    with socket.create_connection(("127.0.0.1", port), 5) as raw:
        with ctx.wrap_socket(raw, server_hostname=sni) as s:
            return s.selected_alpn_protocol()


class GatewayFleet(Fleet):
    """A Fleet whose store has orders behind the edge gateway `public` (see `gateway`)."""

    gateway_port: int
    root_pem: str
    signer: Signer

    def gateway(self) -> str:
        """With the CLI: the mesh, service orders, JWT provider idp (this signer's JWKS),
        gateway `public` with a certificate for api.example.com, the route /orders -> orders
        needing a JWT from idp, and edge:public allowed to call orders. The gateway's token."""
        self.signer = Signer.es256()
        (self.work / "jwks.json").write_text(jwks(self.signer))
        self.gateway_port = free_port()
        self.cli("init", "--trust-domain", "example.org")
        self.cli("service", "add", "orders", "--port", "8080")
        self.cli("jwt", "add", "idp", "--issuer", ISSUER, "--audience", AUDIENCE,
                 "--jwks-file", str(self.work / "jwks.json"))
        token = token_of(self.cli("edge", "add", "public", "--listen", f"127.0.0.1:{self.gateway_port}"))
        self.cli("edge", "cert", "issue", "--gateway", "public", "--host", "api.example.com",
                 "--ca-out", str(self.work / "root.pem"))
        self.root_pem = (self.work / "root.pem").read_text()
        self.cli("edge", "route", "add", "public", "--host", "api.example.com", "--prefix", "/orders",
                 "--to", "orders", "--auth", "jwt:idp")
        self.cli("policy", "allow", "--from", "edge:public", "--to", "orders")
        return token

    def get(self, path: str, **kw: Any) -> Reply:
        """One HTTPS request to the gateway (see `https`)."""
        return https(self.gateway_port, path, ca_pem=self.root_pem, **kw)
