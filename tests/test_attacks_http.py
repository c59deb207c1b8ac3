"""Attacks on the data path, against real Envoys running meshgate's translated config.

One mesh made with the CLI: an edge gateway `public` (JWT, mTLS and open
routes) in front of `orders`, whose sidecar `orders-1` runs strict mTLS, and a
second sidecar `orders-2` translated from the same store with the mesh in
permissive mode (plaintext accepted beside mTLS). Resources are loaded into
three Envoys as static config (tests/edge_static.py) with identities from the
store's own CA, as in tests/test_edge_envoy.py; the apps echo what reached them.

- JWT: HS256 signed with the RSA public key (PEM or JWK) as the HMAC secret
  (RS/HS key confusion) is 401; `none`, expired, wrong issuer and audience are
  in tests/test_edge_envoy.py.
- A forged `x-forwarded-client-cert`: a mesh caller cannot choose the identity
  the app sees; a plaintext caller (permissive) gets none.
- Expired client certificates: refused by the sidecar (mesh CA) and the edge
  (client CA), while a fresh one from the same CA passes.
- Oversized headers: 431 at the edge and at the sidecar; too many headers too.
- Slowloris: a client sending headers a byte at a time is cut off by
  request_headers_timeout (edge and sidecar, at the same time: one wait).
- Bodies: no limit applies (nothing buffers them): a 4 MiB upload streams
  through the edge, the gateway's 32 KiB listener buffer included.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import hmac
import json
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from meshgate.ca import authority
from meshgate.ca.identity import IdentityIssuer
from meshgate.ca.keys import load_keybox
from meshgate.fleet.app import App
from meshgate.fleet.envoy import EnvoyProcess, free_port
from meshgate.store.ca import list_cas
from meshgate.store.db import open_store
from meshgate.store.instances import add_instance
from meshgate.store.proxies import add_proxy
from meshgate.store.txn import write
from meshgate.store.world import load_world
from meshgate.xds.secrets import IssuerSecretProvider
from meshgate.xds.translate import limits
from tests.edge_kit import AUDIENCE, ISSUER, MeshCa, Signer, https, jwks
from tests.edge_static import static_envoy
from tests.mesh_kit import cli

pytestmark = pytest.mark.envoy
TD = "example.org"
CALLER = f"spiffe://{TD}/svc/web"


@dataclass
class Fleet:
    work: Path
    edge_port: int
    strict_inbound: int
    permissive_inbound: int
    mesh_root: str
    issuer: IdentityIssuer
    signer: tuple[Any, Any]  # the store's active CA: (certificate, private key)
    rs: Signer
    clients: MeshCa
    gateway: EnvoyProcess
    strict: EnvoyProcess
    permissive: EnvoyProcess

    def edge(self, path: str, **kw: Any) -> Any:
        return https(self.edge_port, path, ca_pem=self.mesh_root, **kw)

    def mesh_client(self, cert_pem: str | None = None, key_pem: str | None = None) -> ssl.SSLContext:
        """TLS to a sidecar inbound port: trusts the mesh root, presents `cert_pem` (default: a
        fresh identity of service web from the store's CA)."""
        if cert_pem is None:
            ident = self.issuer.identity_for("attacker", CALLER, 600, time.time())
            cert_pem, key_pem = ident.cert_chain_pem, ident.key_pem
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False  # SPIFFE: the URI SAN is the name, not a DNS name
        ctx.load_verify_locations(cadata=self.mesh_root)
        name = hashlib.sha256(cert_pem.encode()).hexdigest()[:12]
        (self.work / f"{name}.crt").write_text(cert_pem)
        (self.work / f"{name}.key").write_text(key_pem or "")
        ctx.load_cert_chain(self.work / f"{name}.crt", self.work / f"{name}.key")
        return ctx


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    work = tmp_path_factory.mktemp("attacks-http")
    db = work / "mesh.db"
    es, rs = Signer.es256(), Signer.rs256()
    clients = MeshCa(trust_domain="clients.example")
    (work / "jwks.json").write_text(jwks(es, rs))
    (work / "clients.pem").write_text(clients.pem)
    edge_port, strict_in, permissive_in = free_port(), free_port(), free_port()
    apps = [App("orders", instance="strict").start(), App("orders", instance="permissive").start()]
    envoys: list[EnvoyProcess] = []
    try:
        for args in (
            ("init", "--trust-domain", TD),
            ("service", "add", "orders", "--port", "8080"),
            ("service", "add", "web", "--port", "80"),
            ("jwt", "add", "idp", "--issuer", ISSUER, "--audience", AUDIENCE, "--jwks-file", str(work / "jwks.json")),
            ("edge", "add", "public", "--listen", f"127.0.0.1:{edge_port}", "--client-ca", str(work / "clients.pem")),
            ("edge", "cert", "issue", "--gateway", "public", "--host", "api.example.com"),
            ("edge", "cert", "issue", "--gateway", "public", "--host", "machines.example.com"),
            ("edge", "route", "add", "public", "--host", "api.example.com", "--prefix", "/orders",
             "--to", "orders", "--auth", "jwt:idp"),
            ("edge", "route", "add", "public", "--host", "api.example.com", "--prefix", "/public",
             "--to", "orders", "--auth", "none"),
            ("edge", "route", "add", "public", "--host", "machines.example.com", "--prefix", "/",
             "--to", "orders", "--auth", "mtls"),
            ("policy", "allow", "--from", "web,edge:public", "--to", "orders"),
        ):
            cli(db, *args)
        engine = open_store(str(db))
        with write(engine, "sidecars") as w:
            add_proxy(w, "orders-1", kind="sidecar", service="orders", outbound_port=free_port())
            add_proxy(w, "orders-2", kind="sidecar", service="orders", outbound_port=free_port())
            add_instance(w, "orders", "127.0.0.1", strict_in, apps[0].port, proxy="orders-1")
            add_instance(w, "orders", "127.0.0.1", permissive_in, apps[1].port, proxy="orders-2")
        world = load_world(engine)
        keybox = load_keybox(str(engine.url))
        issuer = IdentityIssuer(engine, keybox)
        secrets = IssuerSecretProvider(issuer)  # what SDS sends: identity, trust bundle, edge certs

        def start(name: str, w: Any) -> EnvoyProcess:
            envoys.append(static_envoy(w, name, secrets, work))
            return envoys[-1]

        gateway = start("public", world)
        strict = start("orders-1", world)
        # plaintext callers have no identity: only a default allow lets them in
        permissive = start("orders-2", dataclasses.replace(
            world, mesh=dataclasses.replace(world.mesh, mtls_mode="permissive", default_action="allow")))
        for e in envoys:
            e.wait_live()
        with engine.connect() as conn:
            (active,) = list_cas(conn, ("active",))
        signer = (authority.load_certs(active.cert_pem)[0],
                  authority.load_key(keybox.decrypt(active.key_encrypted)))  # type: ignore[arg-type]
        f = Fleet(work, edge_port, strict_in, permissive_in, issuer.trust_bundle_pem(), issuer, signer, rs, clients,
                  gateway, strict, permissive)
        deadline = time.monotonic() + 15
        while f.edge("/public/x").status != 200 and time.monotonic() < deadline:
            time.sleep(0.1)
        yield f
        engine.dispose()
    finally:
        for e in envoys:
            e.stop()
        for app in apps:
            app.stop()


# -- helpers ------------------------------------------------------------------------


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def hs256_token(secret: bytes, kid: str | None) -> str:
    """A token signed with HMAC-SHA256 over `secret`, by hand (PyJWT refuses PEM secrets)."""
    now = int(time.time())
    header = {"alg": "HS256", "typ": "JWT", **({"kid": kid} if kid else {})}
    body = {"iss": ISSUER, "aud": AUDIENCE, "sub": "mallory", "iat": now, "exp": now + 600}
    signing = f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(body).encode())}"
    return f"{signing}.{_b64(hmac.new(secret, signing.encode(), hashlib.sha256).digest())}"


def exchange(port: int, request: bytes, ctx: ssl.SSLContext | None, sni: str | None = None,
             timeout: float = 10.0) -> bytes:
    """Send raw bytes (over TLS when `ctx`), read until the server closes or 2 s of silence.
    b"" when the server refuses the TLS handshake or closes without answering."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as raw:
        try:
            sock = ctx.wrap_socket(raw, server_hostname=sni) if ctx is not None else raw
            sock.sendall(request)
        except (ssl.SSLError, ConnectionResetError, BrokenPipeError):
            return b""
        sock.settimeout(2.0)
        data = b""
        try:
            while chunk := sock.recv(65536):
                data += chunk
        except (TimeoutError, ssl.SSLError, ConnectionResetError):
            pass
        return data


def status_of(response: bytes) -> int:
    return int(response.split(b" ", 2)[1]) if response.startswith(b"HTTP/1.1 ") else 0


def body_json(response: bytes) -> Any:
    return json.loads(response.split(b"\r\n\r\n", 1)[1])


# -- JWT key confusion --------------------------------------------------------------


def test_hs256_signed_with_the_rsa_public_key_is_401(fleet: Fleet) -> None:
    assert fleet.edge("/orders/1", token=fleet.rs.token()).status == 200  # the control: a real RS256 token
    public = fleet.rs.key.public_key()
    from cryptography.hazmat.primitives import serialization

    pem = public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    der = public.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    jwk = json.dumps(fleet.rs.jwk()).encode()
    for secret in (pem, pem.strip(), der, jwk):
        for kid in (fleet.rs.kid, None):
            r = fleet.edge("/orders/1", token=hs256_token(secret, kid))
            assert r.status == 401, (kid, secret[:30], r)
            assert b'"service"' not in r.body  # Envoy answered; the app never saw it


# -- forged identity headers ---------------------------------------------------------


FORGED = "By=spiffe://example.org/svc/orders;URI=spiffe://example.org/svc/admin"


def test_a_mesh_caller_cannot_choose_the_identity_the_app_sees(fleet: Fleet) -> None:
    request = (f"GET /echo HTTP/1.1\r\nhost: orders\r\nx-forwarded-client-cert: {FORGED}\r\n"
               "connection: close\r\n\r\n").encode()
    got = exchange(fleet.strict_inbound, request, fleet.mesh_client())
    assert status_of(got) == 200, got[:300]
    xfcc = body_json(got)["headers"]["x-forwarded-client-cert"]
    assert "svc/admin" not in xfcc
    assert xfcc.endswith(f"URI={CALLER}") and xfcc.count("URI=") == 1, xfcc  # only what the handshake proved


def test_a_plaintext_caller_gets_no_identity_header_through(fleet: Fleet) -> None:
    request = (f"GET /echo HTTP/1.1\r\nhost: orders\r\n"
               f"x-forwarded-client-cert: {FORGED}\r\nconnection: close\r\n\r\n").encode()
    got = exchange(fleet.permissive_inbound, request, None)
    assert status_of(got) == 200, got[:300]  # permissive: plaintext is served ...
    assert "x-forwarded-client-cert" not in body_json(got)["headers"]  # ... without any identity
    # strict: plaintext is not even a TLS handshake
    assert exchange(fleet.strict_inbound, request, None) == b""


# -- expired client certificates ------------------------------------------------------


def _mesh_leaf(fleet: Fleet, now: float) -> tuple[str, str]:
    """Signed by the store's own active CA (a root: no chain to add), valid 10 minutes from `now`."""
    ca_cert, ca_key = fleet.signer
    key = authority.new_key()
    cert = authority.issue_leaf(ca_cert, ca_key, key.public_key(), spiffe_id=CALLER, now=now, ttl_seconds=600)
    return authority.cert_pem(cert), authority.key_pem(key)


def test_an_expired_mesh_certificate_is_refused_by_the_sidecar(fleet: Fleet) -> None:
    request = b"GET /echo HTTP/1.1\r\nhost: orders\r\nconnection: close\r\n\r\n"
    # the control: a leaf from the same CA, same code, valid now, passes
    assert status_of(exchange(fleet.strict_inbound, request, fleet.mesh_client(*_mesh_leaf(fleet, time.time())))) == 200
    stat = f"listener.127.0.0.1_{fleet.strict_inbound}.ssl.fail_verify_error"
    before = fleet.strict.stat(stat)
    expired = _mesh_leaf(fleet, time.time() - 2 * 3600)  # expired an hour and 50 minutes ago
    assert exchange(fleet.strict_inbound, request, fleet.mesh_client(*expired)) == b""
    assert fleet.strict.stat(stat) > before  # refused in the handshake, for the certificate


def test_an_expired_client_certificate_is_refused_at_the_edge(fleet: Fleet) -> None:
    fresh = fleet.clients.client_files(fleet.work, "bot-fresh", "spiffe://clients.example/bot")
    assert fleet.edge("/x", sni="machines.example.com", client=fresh).status == 200  # control
    old = MeshCa(trust_domain="clients.example", now=time.time())
    old.cert, old.key = fleet.clients.cert, fleet.clients.key  # the same client CA ...
    old.now = time.time() - 2 * 3600  # ... issuing a leaf that expired an hour ago
    expired = old.client_files(fleet.work, "bot-expired", "spiffe://clients.example/bot")
    r = fleet.edge("/x", sni="machines.example.com", client=expired)
    assert r.status == "refused", r


# -- oversized headers ----------------------------------------------------------------


def test_oversized_headers_get_431_at_the_edge_and_the_sidecar(fleet: Fleet) -> None:
    big = "x" * (100 * 1024)
    r = fleet.edge("/public/x", headers={"x-big": big})
    assert r.status == 431, r
    many = {f"x-h{i}": "1" for i in range(limits.MAX_HEADERS_COUNT + 5)}
    assert fleet.edge("/public/x", headers=many).status == 431
    assert fleet.edge("/public/x", headers={"x-ok": "y" * 1024}).status == 200  # a normal request passes
    request = f"GET /echo HTTP/1.1\r\nhost: orders\r\nx-big: {big}\r\nconnection: close\r\n\r\n".encode()
    assert status_of(exchange(fleet.strict_inbound, request, fleet.mesh_client())) == 431
    assert fleet.strict.stat("http.inbound.downstream_rq_4xx") >= 1


def test_a_large_body_streams_to_the_app_no_limit_applies(fleet: Fleet) -> None:
    body = b"z" * (4 * 1024 * 1024)
    r = fleet.edge("/public/upload", method="POST", body=body)
    assert r.status == 200, r
    assert r.json()["headers"]["content-length"] == str(len(body))


# -- connection holding ----------------------------------------------------------------


def _slowloris(port: int, ctx: ssl.SSLContext, sni: str | None, result: dict[str, Any]) -> None:
    """Start a request, then send one header byte every 0.5 s; note when the server hangs up."""
    start = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        sock = ctx.wrap_socket(raw, server_hostname=sni)
        sock.sendall(b"GET /public/x HTTP/1.1\r\nhost: api.example.com\r\nx-slow: ")
        sock.settimeout(0.5)
        while time.monotonic() - start < 40:  # bounded: far beyond the 10 s limit
            try:
                sock.sendall(b"a")
                data = sock.recv(4096)
            except TimeoutError:
                continue
            except (OSError, ssl.SSLError) as exc:
                result["closed"], result["how"] = time.monotonic() - start, repr(exc)
                return
            result["closed"], result["how"] = time.monotonic() - start, data[:40]
            return
    result["closed"] = None


def test_slowloris_is_cut_off_by_the_header_timeout(fleet: Fleet) -> None:
    edge_ctx = ssl.create_default_context(cadata=fleet.mesh_root)
    results: dict[str, dict[str, Any]] = {"edge": {}, "sidecar": {}}
    threads = [
        threading.Thread(target=_slowloris, args=(fleet.edge_port, edge_ctx, "api.example.com", results["edge"])),
        threading.Thread(target=_slowloris, args=(fleet.strict_inbound, fleet.mesh_client(), None,
                                                  results["sidecar"])),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    for name, r in results.items():
        assert r.get("closed") is not None, (name, r)  # cut off within the bounded wait
        assert r["closed"] >= limits.REQUEST_HEADERS_TIMEOUT_S * 0.9, (name, r)  # by the header timeout
    assert fleet.gateway.stat("http.edge_https.downstream_rq_header_timeout") >= 1
    assert fleet.strict.stat("http.inbound.downstream_rq_header_timeout") >= 1


def test_callers_listeners_and_connection_managers_carry_the_limits(fleet: Fleet) -> None:
    """What the three Envoys run (config_dump), not just what translation meant."""
    for envoy, listener in ((fleet.gateway, "edge-https"), (fleet.strict, "inbound"), (fleet.permissive, "inbound")):
        dump = envoy.config_dump("static_listeners")
        found = [c["listener"] for c in dump["configs"] if c["listener"]["name"] == listener]
        assert found and found[0]["per_connection_buffer_limit_bytes"] == limits.LISTENER_BUFFER_BYTES, envoy.name
        for chain in found[0]["filter_chains"]:
            hcm = chain["filters"][-1]["typed_config"]
            assert hcm["request_headers_timeout"] == f"{limits.REQUEST_HEADERS_TIMEOUT_S:g}s"
            assert hcm["max_request_headers_kb"] == limits.MAX_REQUEST_HEADERS_KB
            assert hcm["stream_idle_timeout"] == f"{limits.STREAM_IDLE_TIMEOUT_S:g}s"
            if listener == "edge-https":
                assert hcm["common_http_protocol_options"]["idle_timeout"] == f"{limits.EDGE_IDLE_TIMEOUT_S:g}s"
                assert hcm["http2_protocol_options"]["max_concurrent_streams"] == limits.H2_MAX_CONCURRENT_STREAMS
