"""Mesh identity end to end: `meshgate serve` (subprocess) and three real Envoys.

    client -> sidecar A (svc/a) -> mTLS -> sidecar B (svc/b, http) -> app b
    client -> sidecar A tcp listener -> mTLS -> sidecar C (svc/c, tcp) -> app c

HTTP from A to B reuses pooled connections; every TCP connection through C is
a new TLS handshake, so rotation is proven on fresh handshakes too. Every
request is counted; rotation tests assert that none failed.
"""

from __future__ import annotations

import json
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from envoy.config.core.v3 import base_pb2
from envoy.extensions.transport_sockets.tls.v3 import secret_pb2
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2
from sqlalchemy import update

from meshgate.ca import authority
from meshgate.ca.identity import IdentityIssuer
from meshgate.ca.keys import load_keybox
from meshgate.fleet.envoy import free_port
from meshgate.store import schema
from meshgate.store.db import open_store
from meshgate.store.txn import write
from meshgate.xds import types
from tests.mesh_kit import Fleet, Traffic, get, leaf_serials, raw_http, tls_get, wait_for

pytestmark = pytest.mark.envoy
TD = "example.org"
A_ID, B_ID, C_ID = (f"spiffe://{TD}/svc/{s}" for s in "abc")


class Mesh(Fleet):
    tokens: dict[str, str]
    a_outbound: int
    b_inbound: int
    c_port: int  # c's service port = A's local TCP listener for c

    def issuer(self) -> IdentityIssuer:
        """The mesh CA as a test may use it (it holds the store key, like the server)."""
        engine = open_store(str(self.db))
        return IdentityIssuer(engine, load_keybox(str(engine.url)))

    def bundle(self) -> str:
        return self.issuer().trust_bundle_pem()

    @contextmanager
    def traffic(self) -> Iterator[tuple[Traffic, Traffic]]:
        """HTTP through A's outbound listener to b, and TCP through A's listener for c,
        each in its own thread, one request after another, every request counted."""
        def tcp() -> str | None:
            got = raw_http(self.c_port)
            return None if got.startswith("HTTP/1.1 200") else f"tcp {got[:200]}"

        with Traffic.http(self.a_outbound, "b", '"service": "b"') as http, Traffic(tcp, "traffic-c") as raw:
            yield http, raw


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    work = tmp_path_factory.mktemp("mtls")
    with Mesh(work / "mesh.db", work) as m:
        m.c_port = free_port()
        m.cli("init", "--trust-domain", TD)  # strict mTLS, default deny
        m.cli("service", "add", "a", "--port", "80")
        m.cli("service", "add", "b", "--port", "8080")
        m.cli("service", "add", "c", "--protocol", "tcp", "--port", str(m.c_port))
        # only A calls c, so only A listens on c's port (all Envoys share 127.0.0.1 here)
        m.cli("policy", "allow", "--from", "a", "--to", "b")
        m.cli("policy", "allow", "--from", "a", "--to", "c")
        ports = {n: free_port() for n in ("a_out", "b_in", "b_out", "c_in", "c_out")}
        m.a_outbound, m.b_inbound = ports["a_out"], ports["b_in"]
        m.tokens = {name: m.sidecar(name, svc, ports[out])
                    for name, svc, out in (("a-1", "a", "a_out"), ("b-1", "b", "b_out"), ("c-1", "c", "c_out"))}
        m.instance("b", ports["b_in"], m.app("b").port, proxy="b-1")
        m.instance("c", ports["c_in"], m.app("c").port, proxy="c-1")
        m.serve("--log-level", "debug")
        m.start_envoys({name: m.bootstrap(name, token) for name, token in m.tokens.items()})
        wait_for("a -> b", lambda: get(m.a_outbound, "b")[0] == 200, 20)
        wait_for("a -> c", lambda: raw_http(m.c_port).startswith("HTTP/1.1 200"), 20)
        yield m


def test_a_calls_b_and_c_over_mutual_tls(mesh: Mesh) -> None:
    status, text = get(mesh.a_outbound, "b")
    assert status == 200, text
    body = json.loads(text)
    assert body["service"] == "b"
    assert f"URI={A_ID}" in body["headers"]["x-forwarded-client-cert"]  # B verified A
    assert raw_http(mesh.c_port).startswith("HTTP/1.1 200")
    a = mesh.envoys["a-1"]
    assert a.stat("cluster.svc/b.ssl.handshake") >= 1 and a.stat("cluster.svc/c.ssl.handshake") >= 1
    # A presents its own identity and trusts exactly the mesh root
    certs = json.loads(a.admin("/certs"))["certificates"]
    sans = {s.get("uri") for c in certs for x in c.get("cert_chain", []) for s in x["subject_alt_names"]}
    assert sans == {A_ID}


def test_plaintext_refused_in_strict_and_accepted_in_permissive(mesh: Mesh) -> None:
    assert raw_http(mesh.b_inbound).startswith("refused"), "strict mode served plaintext"
    # permissive, and a default that lets callers without identity through
    mesh.cli("mesh", "set", "--mtls-mode", "permissive", "--default-action", "allow")
    try:
        wait_for("plaintext accepted", lambda: raw_http(mesh.b_inbound).startswith("HTTP/1.1 200"), 15)
        assert get(mesh.a_outbound, "b")[0] == 200  # mTLS still works beside it
    finally:
        mesh.cli("mesh", "set", "--mtls-mode", "strict", "--default-action", "deny")
    wait_for("plaintext refused again", lambda: raw_http(mesh.b_inbound).startswith("refused"), 15)
    assert get(mesh.a_outbound, "b")[0] == 200


def test_client_certificate_from_another_ca_is_refused(mesh: Mesh, tmp_path: Path) -> None:
    issuer = mesh.issuer()
    now = time.time()
    own = issuer.identity_for("tester", A_ID, 600, now)
    bundle = issuer.trust_bundle_pem()
    got = tls_get(mesh.b_inbound, tmp_path, bundle, own.cert_chain_pem, own.key_pem)
    assert got.startswith("HTTP/1.1 200"), got  # the control: a mesh certificate passes
    root, key = authority.create_root(TD, now)
    k = authority.new_key()
    forged = authority.issue_leaf(root, key, k.public_key(), spiffe_id=A_ID, now=now, ttl_seconds=600)
    got = tls_get(mesh.b_inbound, tmp_path, bundle, authority.cert_pem(forged), authority.key_pem(k))
    assert got.startswith("refused"), got
    assert tls_get(mesh.b_inbound, tmp_path, bundle, None, None).startswith("refused")


def test_caller_refuses_an_upstream_with_the_wrong_spiffe_id(mesh: Mesh, tmp_path: Path) -> None:
    """An instance of `d` that answers with a genuine mesh certificate for svc/c."""
    issuer = mesh.issuer()
    impostor = issuer.identity_for("impostor", C_ID, 600, time.time())
    (tmp_path / "i.crt").write_text(impostor.cert_chain_pem)
    (tmp_path / "i.key").write_text(impostor.key_pem)
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(tmp_path / "i.crt", tmp_path / "i.key")
    lsock = socket.create_server(("127.0.0.1", 0))
    lsock.settimeout(0.2)
    port = lsock.getsockname()[1]
    stop = threading.Event()

    def serve() -> None:  # TLS handshakes with the impostor's certificate, nothing more
        while not stop.is_set():
            try:
                conn, _ = lsock.accept()
            except (TimeoutError, OSError):
                continue
            try:
                with ctx.wrap_socket(conn, server_side=True) as tls:
                    tls.recv(1)
            except (ssl.SSLError, OSError):
                pass

    server = threading.Thread(target=serve, daemon=True)
    server.start()
    mesh.cli("service", "add", "d", "--port", "8081")
    mesh.cli("policy", "allow", "--from", "a", "--to", "d", "--id", "a-to-d")
    out = mesh.cli("instance", "add", "d", "--address", "127.0.0.1", "--inbound-port", str(port),
                   "--app-port", "9")
    try:
        a = mesh.envoys["a-1"]
        wait_for("route to d", lambda: get(mesh.a_outbound, "d")[0] != 404, 15)
        wait_for("d's endpoint", lambda: a.stat("cluster.svc/d.membership_total") >= 1, 15)
        before = a.stat("cluster.svc/d.ssl.fail_verify_san")
        status, body = get(mesh.a_outbound, "d")
        assert status == 503, body
        assert a.stat("cluster.svc/d.ssl.fail_verify_san") > before, body
    finally:
        stop.set()
        server.join(5)
        lsock.close()
        mesh.cli("instance", "remove", out.split()[1])
        mesh.cli("policy", "remove", "a-to-d")
        mesh.cli("service", "remove", "d")


def test_a_proxy_asking_for_another_identity_gets_nothing(mesh: Mesh) -> None:
    creds = grpc.ssl_channel_credentials(root_certificates=mesh.bundle().encode())
    names = ["identity", "trust-bundle", B_ID, "b-1", "identity/b-1", "svc/b"]
    with grpc.secure_channel(f"127.0.0.1:{mesh.server.port}", creds) as channel:
        stub = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel)
        req = discovery_pb2.DeltaDiscoveryRequest(node=base_pb2.Node(id="a-1"), type_url=types.SECRET,
                                                  resource_names_subscribe=names)
        call = stub.DeltaAggregatedResources(iter([req]), metadata=[("authorization", f"Bearer {mesh.tokens['a-1']}")],
                                             timeout=5)
        resp = next(iter(call))
        call.cancel()
    got = {r.name: r for r in resp.resources}
    assert set(got) == {"identity", "trust-bundle"}
    secret = secret_pb2.Secret()
    got["identity"].resource.Unpack(secret)
    leaf = authority.load_certs(secret.tls_certificate.certificate_chain.inline_string)[0]
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == [A_ID]
    wait_for("the refusal logged", lambda: "secret-refused" in mesh.server.log_path.read_text(), 5)
    line = next(x for x in mesh.server.log_path.read_text().splitlines() if "secret-refused" in x)
    assert "a-1" in line and "b-1" in line


def _set_ttl(db: Path, seconds: int) -> None:
    """Below the CLI's 1 minute floor: a test-only write, recorded as a revision."""
    engine = open_store(str(db))
    try:
        with write(engine, f"test: cert ttl {seconds}s") as w:
            w.conn.execute(update(schema.mesh).values(cert_ttl_seconds=seconds))
            w.record("mesh", "1", "update", before=None, after={"cert_ttl_seconds": seconds})
    finally:
        engine.dispose()


def test_leaf_rotation_with_a_short_ttl_loses_no_request(mesh: Mesh) -> None:
    a, c = mesh.envoys["a-1"], mesh.envoys["c-1"]
    seen: dict[str, set[int]] = {"a-1": set(), "c-1": set()}
    handshakes = a.stat("cluster.svc/c.ssl.handshake")
    _set_ttl(mesh.db, 6)  # renewed every 3 s
    try:
        with mesh.traffic() as (http, tcp):
            def renewed() -> bool:
                for name, e in (("a-1", a), ("c-1", c)):
                    seen[name] |= leaf_serials(e)
                return all(len(s) >= 4 for s in seen.values())
            wait_for("three renewals of A's and C's identities", renewed, 40)
            http.more(10)
            tcp.more(10)
    finally:
        mesh.cli("mesh", "set", "--cert-ttl", "1h")
    assert http.failed == [] and tcp.failed == [], (http.failed + tcp.failed)[:5]
    assert http.ok > 20 and tcp.ok > 20
    # every TCP request was a new handshake, spread over the renewals
    assert a.stat("cluster.svc/c.ssl.handshake") - handshakes >= tcp.ok


def test_root_rotation_under_traffic_loses_no_request(mesh: Mesh) -> None:
    a = mesh.envoys["a-1"]
    old_root = mesh.issuer().bundle_fingerprints()
    with mesh.traffic() as (http, tcp):
        http.more(10)
        tcp.more(10)
        mesh.cli("ca", "rotate")
        out = mesh.cli("ca", "rotate", "--status", "--wait", "--timeout", "60")
        assert "phase: idle" in out
        http.more(10)
        tcp.more(10)
    assert http.failed == [] and tcp.failed == [], (http.failed + tcp.failed)[:5]
    new_root = mesh.issuer().bundle_fingerprints()
    assert len(new_root) == 1 and new_root != old_root
    # every proxy's mesh TLS contexts (those with an identity; the bootstrap's
    # context for the xDS server has none) trust only the new root
    new_serial = {format(c.serial_number, "x") for c in authority.load_certs(mesh.bundle())}
    for name, e in mesh.envoys.items():
        certs = json.loads(e.admin("/certs"))["certificates"]
        cas = {x["serial_number"].lstrip("0") for c in certs if c.get("cert_chain")
               for x in c.get("ca_cert", [])}
        assert cas == new_serial, (name, cas)
    show = json.loads(mesh.cli("ca", "show", "-o", "json"))
    assert show["phase"] == "idle" and show["trust_bundle"] == new_root
    assert a.stat("control_plane.connected_state") == 1


def test_a_proxy_restarted_from_a_bootstrap_older_than_the_rotation_reconnects(mesh: Mesh) -> None:
    """A's bootstrap trusts only the retired root; the xDS port's certificate comes from the
    new root and is presented with a cross-certificate signed by the old one."""
    a = mesh.envoys["a-1"]
    bootstrap_roots = json.loads(a.config_path.read_text())
    assert mesh.bundle().strip() not in json.dumps(bootstrap_roots)  # written before the rotation
    a.stop()
    a.start()
    a.wait_live()
    wait_for("A reconnected", lambda: a.stat("control_plane.connected_state") == 1, 20)
    wait_for("a -> b again", lambda: get(mesh.a_outbound, "b")[0] == 200, 20)
    assert raw_http(mesh.c_port).startswith("HTTP/1.1 200")
