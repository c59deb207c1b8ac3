"""The edge data path in the real Envoy: gateway -> sidecar -> app, every check asserted
on real requests.

The store is made with the CLI; its World is translated (edge and sidecar) and
loaded into two real Envoys as static config (RDS inlined, EDS as STATIC,
secrets static with the same names: tests/edge_static.py), with identities
from the store's own mesh CA. This isolates translation from the xDS server;
tests/test_edge_e2e.py runs the same path through `meshgate serve`.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from meshgate.ca.identity import IdentityIssuer
from meshgate.ca.keys import load_keybox
from meshgate.fleet.app import App
from meshgate.fleet.envoy import EnvoyProcess, free_port
from meshgate.model import Policy
from meshgate.store.db import open_store
from meshgate.store.instances import add_instance
from meshgate.store.policies import add_policy
from meshgate.store.proxies import add_proxy
from meshgate.store.txn import write
from meshgate.store.world import load_world
from meshgate.xds.secrets import IssuerSecretProvider
from tests.edge_kit import AUDIENCE, MeshCa, Reply, Signer, alpn, https, jwks, unsigned_token
from tests.edge_static import static_envoy
from tests.mesh_kit import cli

pytestmark = pytest.mark.envoy


@dataclass
class Edge:
    port: int
    redirect_port: int
    mesh_root: str
    es: Signer
    rs: Signer
    clients: MeshCa
    workdir: Path
    gateway: EnvoyProcess
    remote: Signer

    def get(self, path: str, **kw: object) -> Reply:
        return https(self.port, path, ca_pem=self.mesh_root, **kw)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def edge(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Edge]:
    wd = tmp_path_factory.mktemp("edge")
    db = wd / "meshgate.db"
    es, rs = Signer.es256(), Signer.rs256()
    clients = MeshCa(trust_domain="clients.example")
    (wd / "jwks.json").write_text(jwks(es, rs))
    (wd / "clients.pem").write_text(clients.pem)
    port, redirect_port, inbound = free_port(), free_port(), free_port()
    app = App("orders").start()
    remote = Signer.es256(kid="remote-1")
    jwks_server = _serve_jwks(jwks(remote))
    gw = sc = None
    try:
        for args in (
            ("init", "--trust-domain", "example.org"),
            ("service", "add", "orders", "--port", "8080"),
            ("jwt", "add", "idp", "--issuer", "https://idp.example.com/", "--audience", AUDIENCE,
             "--jwks-file", str(wd / "jwks.json")),
            ("edge", "add", "public", "--listen", f"127.0.0.1:{port}",
             "--http-redirect-port", str(redirect_port), "--client-ca", str(wd / "clients.pem")),
            ("edge", "cert", "issue", "--gateway", "public", "--host", "api.example.com"),
            ("edge", "cert", "issue", "--gateway", "public", "--host", "machines.example.com"),
            ("edge", "route", "add", "public", "--host", "api.example.com", "--prefix", "/orders",
             "--to", "orders", "--auth", "jwt:idp"),
            ("edge", "route", "add", "public", "--host", "api.example.com", "--prefix", "/admin",
             "--to", "orders", "--auth", "jwt:idp", "--claim", "role=admin"),
            ("edge", "route", "add", "public", "--host", "api.example.com", "--prefix", "/limited",
             "--to", "orders", "--auth", "none", "--rate", "3/m", "--id", "limited"),
            ("edge", "route", "add", "public", "--host", "api.example.com", "--prefix", "/public",
             "--to", "orders", "--auth", "none"),
            ("edge", "route", "add", "public", "--host", "api.example.com", "--prefix", "/bots",
             "--to", "orders", "--auth", "mtls", "--claim", "san=spiffe://clients.example/bot-1"),
            ("edge", "route", "add", "public", "--host", "machines.example.com", "--prefix", "/",
             "--to", "orders", "--auth", "mtls"),
            ("edge", "route", "add", "public", "--host", "api.example.com", "--prefix", "/scoped",
             "--to", "orders", "--auth", "jwt:idp", "--claim", "scope=orders:write",
             "--claim", "email_verified=true"),
            ("jwt", "add", "remote", "--issuer", "https://idp.example.com/", "--audience", AUDIENCE,
             "--jwks-uri", f"http://127.0.0.1:{jwks_server.server_address[1]}/jwks.json"),
            ("edge", "route", "add", "public", "--host", "api.example.com", "--prefix", "/remote",
             "--to", "orders", "--auth", "jwt:remote"),
        ):
            cli(db, *args)
        engine = open_store(str(db))
        with write(engine, "sidecar and policies") as w:
            add_proxy(w, "orders-1", kind="sidecar", service="orders", outbound_port=free_port())
            add_instance(w, "orders", "127.0.0.1", inbound, app.port, proxy="orders-1")
            add_policy(w, Policy("", "allow", ("edge:public",), "orders", methods=("GET",)))
            add_policy(w, Policy("", "allow", ("edge:public",), "orders", methods=("POST",),
                                 claims=(("role", "writer"),)))
            add_policy(w, Policy("", "deny", ("edge:public",), "orders", claims=(("sub", "mallory"),)))
        world = load_world(engine)
        issuer = IdentityIssuer(engine, load_keybox(str(engine.url)))
        secrets = IssuerSecretProvider(issuer)  # what SDS sends: identity, trust bundle, edge certs
        gw = static_envoy(world, "public", secrets, wd, "gateway")
        sc = static_envoy(world, "orders-1", secrets, wd, "sidecar")
        gw.wait_live()
        sc.wait_live()
        engine.dispose()
        yield Edge(port, redirect_port, issuer.trust_bundle_pem(), es, rs, clients, wd, gw, remote)
    finally:
        for p in (gw, sc):
            if p is not None:
                p.stop()
        app.stop()
        jwks_server.shutdown()
        jwks_server.server_close()


def _serve_jwks(body: str) -> ThreadingHTTPServer:
    """An identity provider's JWKS endpoint on loopback (what --jwks-uri points at)."""

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:  # noqa: A002
            pass

        def do_GET(self) -> None:
            data = body.encode()
            self.send_response(200 if self.path == "/jwks.json" else 404)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def test_valid_tokens_reach_the_service(edge: Edge) -> None:
    for signer in (edge.es, edge.rs):
        r = edge.get("/orders/1", token=signer.token())
        assert r.status == 200, (signer.alg, r)
        seen = r.json()
        assert seen["service"] == "orders" and seen["path"] == "/orders/1"
        assert "authorization" not in seen["headers"]  # the token stays at the edge
        assert "x-meshgate-jwt-payload" in seen["headers"]  # verified claims for the app


@pytest.mark.parametrize(
    "case",
    ["missing", "bad-signature", "expired", "wrong-audience", "wrong-issuer", "alg-none",
     "unknown-kid", "not-yet-valid"],
)
def test_bad_tokens_get_401_before_any_service(edge: Edge, case: str) -> None:
    other = Signer.es256(kid="ec-1")  # same kid, a key the JWKS does not hold
    now = int(time.time())
    token = {
        "missing": None,
        "bad-signature": other.token(),
        "expired": edge.es.token({"exp": now - 3600, "iat": now - 7200}),
        "wrong-audience": edge.es.token({"aud": "someone-else"}),
        "wrong-issuer": edge.es.token({"iss": "https://evil.example.com/"}),
        "alg-none": unsigned_token(),
        "unknown-kid": Signer.rs256(kid="who").token(),
        "not-yet-valid": edge.es.token({"nbf": now + 3600}),
    }[case]
    r = edge.get("/orders/1", token=token)
    assert r.status == 401, (case, r)
    assert b'"service"' not in r.body  # Envoy answered; the app never saw it
    assert r.headers.get("www-authenticate", "").startswith("Bearer")


def test_claims_on_routes(edge: Edge) -> None:
    assert edge.get("/admin/x", token=edge.es.token({"role": "admin"})).status == 200
    assert edge.get("/admin/x", token=edge.rs.token({"role": ["viewer", "admin"]})).status == 200
    denied = edge.get("/admin/x", token=edge.es.token({"role": "viewer"}))
    assert denied.status == 403 and b"RBAC" in denied.body
    assert edge.get("/admin/x", token=edge.es.token()).status == 403  # claim absent


def test_claims_on_edge_policies(edge: Edge) -> None:
    """Mesh policies from edge:public: allow GET; allow POST only with role=writer;
    deny sub=mallory. The sidecar sees only the gateway's identity, so the gateway
    enforces the claims."""
    def call(method: str, claims: dict[str, object]) -> int | str:
        return edge.get("/orders/1", method=method, body=b"{}", token=edge.es.token(claims)).status

    assert call("GET", {"role": "reader"}) == 200
    assert call("POST", {"role": "writer"}) == 200
    assert call("POST", {"role": "reader"}) == 403
    assert call("GET", {"sub": "mallory"}) == 403


def test_rate_limit_gives_429(edge: Edge) -> None:
    statuses = [edge.get("/limited").status for _ in range(5)]
    assert statuses[:3] == [200, 200, 200] and statuses[3:] == [429, 429], statuses
    assert edge.get("/public/x").status == 200  # other routes keep their own budget


def test_unknown_host_and_path_are_404(edge: Edge) -> None:
    r = edge.get("/orders/1", host="evil.example.com", token=edge.es.token())
    assert r.status == 404 and b"no route" in r.body
    assert edge.get("/nothing-here").status == 404
    # an SNI with no certificate gets no TLS at all
    assert edge.get("/", sni="unknown.example.com").status == "refused"


def test_client_certificate_routes(edge: Edge) -> None:
    bot1 = edge.clients.client_files(edge.workdir, "bot1", "spiffe://clients.example/bot-1")
    bot2 = edge.clients.client_files(edge.workdir, "bot2", "spiffe://clients.example/bot-2")
    foreign = MeshCa(trust_domain="clients.example").client_files(
        edge.workdir, "forged", "spiffe://clients.example/bot-1")
    # machines.example.com is mtls only: the handshake itself requires the certificate
    assert edge.get("/x", sni="machines.example.com", client=bot1).status == 200
    assert edge.get("/x", sni="machines.example.com").status == "refused"
    assert edge.get("/x", sni="machines.example.com", client=foreign).status == "refused"
    # api.example.com mixes auth modes: a certificate is optional in TLS, required by the route
    assert edge.get("/bots/x", client=bot1).status == 200
    assert edge.get("/bots/x", client=bot2).status == 403  # wrong SAN
    assert edge.get("/bots/x").status == 403
    assert edge.get("/bots/x", client=foreign).status == "refused"


def test_identity_headers_from_outside_are_stripped(edge: Edge) -> None:
    forged = {
        "x-forwarded-client-cert": "By=spiffe://example.org/svc/orders;URI=spiffe://example.org/svc/admin",
        "x-meshgate-jwt-payload": "eyJyb2xlIjoiYWRtaW4ifQ",
        "X-Meshgate-Caller": "admin",
        "x_meshgate_caller": "admin",
        "x-envoy-internal": "true",
    }
    r = edge.get("/public/echo", headers=forged)
    assert r.status == 200, r
    headers = r.json()["headers"]
    assert "svc/admin" not in json.dumps(headers)
    for name in ("x-meshgate-jwt-payload", "x-meshgate-caller", "x_meshgate_caller", "x-envoy-internal"):
        assert name not in headers, headers
    # what the app sees in XFCC is the sidecar's record of the real caller: the gateway
    assert headers["x-forwarded-client-cert"].endswith("URI=spiffe://example.org/edge/public")


def test_http2_is_offered_and_http_redirects_to_https(edge: Edge) -> None:
    assert alpn(edge.port, edge.mesh_root) == "h2"
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", edge.redirect_port, timeout=5)
    conn.request("GET", "/orders/1?x=1", headers={"host": "api.example.com"})
    resp = conn.getresponse()
    assert resp.status == 301
    assert resp.getheader("location") == f"https://api.example.com:{edge.port}/orders/1?x=1"
    conn.close()


def test_remote_jwks_is_fetched_by_the_gateway(edge: Edge) -> None:
    r = edge.get("/remote/x", token=edge.remote.token())
    assert r.status == 200, r
    # the local provider's keys are not the remote provider's
    assert edge.get("/remote/x", token=edge.es.token()).status == 401
    assert edge.get("/orders/x", token=edge.remote.token()).status == 401


def test_token_in_query_parameter_and_typed_claims(edge: Edge) -> None:
    assert edge.get("/orders/1?access_token=" + edge.es.token()).status == 200
    ok = {"scope": "orders:read orders:write", "email_verified": True}
    assert edge.get("/scoped/x", token=edge.es.token(ok)).status == 200
    assert edge.get("/scoped/x", token=edge.es.token({**ok, "scope": "orders:read"})).status == 403
    assert edge.get("/scoped/x", token=edge.es.token({**ok, "email_verified": False})).status == 403
    assert edge.get("/scoped/x", token=edge.es.token({**ok, "email_verified": "true"})).status == 200


def test_denials_are_counted_under_edge_stat_names(edge: Edge) -> None:
    edge.get("/orders/1")  # 401
    edge.get("/admin/x", token=edge.es.token({"role": "viewer"}))  # 403
    for _ in range(4):
        edge.get("/limited")  # 3/m: at least one 429 whatever ran before
    assert edge.gateway.stat("http.edge_https.jwt_authn.denied") >= 1
    assert edge.gateway.stat("http.edge_https.rbac.edge_route.denied") >= 1
    assert edge.gateway.stat("edge_rate.limited.http_local_rate_limit.rate_limited") >= 1


@pytest.mark.parametrize("path,status", [
    ("/public/../orders/1", 401), ("/%6Frders/1", 401), ("//orders/1", 401),
    ("/public/..%2Forders/1", 400), ("/Orders/1", 404),
])
def test_path_tricks_cannot_skip_authentication(edge: Edge, path: str, status: int) -> None:
    """/public needs no token, /orders does: normalization runs before routing."""
    assert edge.get(path).status == status
