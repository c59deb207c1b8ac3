"""The CA's certificates in two real Envoys (secrets from watched files, not the xDS server).

caller -> sidecar A (svc/a) -> mTLS -> sidecar B (svc/b) -> app b, every request
counted: mutual TLS works, foreign CAs and wrong SPIFFE ids are refused, and
leaf and root rotation under continuous traffic lose no request. Rotation uses
the real state machine; the "ACK" records it waits on are derived from what
Envoy reports it loaded (admin /certs).
"""

from __future__ import annotations

import socket
import ssl
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from meshgate.ca import authority, rotation
from meshgate.ca.identity import IdentityIssuer
from meshgate.fleet.app import App
from meshgate.xds.translate import tls
from tests.ca_envoy_kit import Sidecar, Traffic, start_sidecar, wait_until, write_secret
from tests.ca_store import TD, new_store, set_sds

pytestmark = pytest.mark.envoy

A_ID = f"spiffe://{TD}/svc/a"
B_ID = f"spiffe://{TD}/svc/b"


class Mesh:
    def __init__(self, workdir: Path) -> None:
        self.engine, self.box = new_store(workdir / "m.db", time.time())
        self.issuer = IdentityIssuer(self.engine, self.box)
        self.app = App("b").start()
        self.b = start_sidecar(workdir, "b", inbound_to=self.app.port)
        self.a = start_sidecar(workdir, "a", upstream=(B_ID, self.b.port))
        self.ids = {"a": A_ID, "b": B_ID}

    def push_identity(self, side: Sidecar, ttl: int = 3600, spiffe: str | None = None) -> int:
        ident = self.issuer.identity_for(side.name, spiffe or self.ids[side.name], ttl, time.time())
        write_secret(side.secret_dir, tls.identity_secret(ident.cert_chain_pem, ident.key_pem))
        return ident.serial

    def push_bundle(self, side: Sidecar) -> set[int]:
        write_secret(side.secret_dir, tls.trust_bundle_secret(self.issuer.trust_bundle_pem()))
        return {c.serial_number for c in authority.load_certs(self.issuer.trust_bundle_pem())}

    def record_acks(self) -> None:
        """What the xDS server records on SDS ACKs, taken from what each Envoy loaded."""
        roots = {c.serial_number: authority.fingerprint(c)
                 for c in authority.load_certs(self.issuer.trust_bundle_pem())}
        with self.engine.connect() as conn:
            from meshgate.store.ca import list_cas
            every_root = {authority.load_certs(r.root_pem)[0].serial_number: r.root_fingerprint
                          for r in list_cas(conn)}
        roots.update(every_root)
        for side in (self.a, self.b):
            cas, leaves = _serials(side)
            cached = self.issuer.cached(side.name)
            issuer_fp = cached.issuer_fingerprint if cached and cached.serial in leaves else None
            set_sds(self.engine, side.name, roots=sorted(fp for s, fp in roots.items() if s in cas),
                    issuer=issuer_fp)

    def stop(self) -> None:
        for side in (self.a, self.b):
            side.envoy.stop()
        self.app.stop()
        self.engine.dispose()


def _serials(side: Sidecar) -> tuple[set[int], set[int]]:
    cas, leaves = side.applied()
    return {int(s, 16) for s in cas}, {int(s, 16) for s in leaves}


def _loaded(side: Sidecar, leaf: int | None = None, cas: set[int] | None = None) -> bool:
    got_cas, got_leaves = _serials(side)
    return (leaf is None or leaf in got_leaves) and (cas is None or got_cas == cas)


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    m = Mesh(tmp_path_factory.mktemp("ca-envoy"))
    try:
        for side in (m.a, m.b):
            m.push_bundle(side)
            m.push_identity(side)
            side.envoy.start()
        for side in (m.a, m.b):
            side.envoy.wait_live()
            cached = m.issuer.cached(side.name)
            assert cached is not None
            wait_until(lambda s=side, c=cached: _loaded(s, c.serial), 15, f"{side.name} certificates")
        yield m
    finally:
        m.stop()


def _get(port: int) -> tuple[int, str]:
    import json
    import urllib.error
    import urllib.request

    req = urllib.request.Request(f"http://127.0.0.1:{port}/anything", headers={"host": "b"})
    try:
        with urllib.request.urlopen(req, timeout=5) as r:  # noqa: S310 - loopback
            return r.status, json.loads(r.read())["headers"].get("x-forwarded-client-cert", "")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode(errors="replace")


def test_mutual_tls_from_a_to_b(mesh: Mesh) -> None:
    status, xfcc = _get(mesh.a.port)
    assert status == 200, xfcc
    assert f"URI={A_ID}" in xfcc  # B verified A's certificate and saw its SPIFFE id
    assert mesh.a.envoy.stat("cluster.upstream.ssl.handshake") >= 1


def _tls_client(mesh: Mesh, tmp: Path, chain: str | None, key: str | None) -> str:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.load_verify_locations(cadata=mesh.issuer.trust_bundle_pem())
    if chain and key:
        (tmp / "c.pem").write_text(chain)
        (tmp / "k.pem").write_text(key)
        ctx.load_cert_chain(tmp / "c.pem", tmp / "k.pem")
    try:
        with socket.create_connection(("127.0.0.1", mesh.b.port), timeout=5) as raw, \
                ctx.wrap_socket(raw) as s:
            s.sendall(b"GET /anything HTTP/1.1\r\nhost: b\r\nconnection: close\r\n\r\n")
            return s.recv(100).decode(errors="replace")
    except (ssl.SSLError, OSError) as exc:
        return f"refused: {exc}"


def test_inbound_refuses_foreign_ca_and_missing_client_certificate(mesh: Mesh, tmp_path: Path) -> None:
    now = time.time()
    own = mesh.issuer.identity_for("tester", A_ID, 600, now)
    assert _tls_client(mesh, tmp_path, own.cert_chain_pem, own.key_pem).startswith("HTTP/1.1 200")
    foreign_root, foreign_key = authority.create_root(TD, now)
    k = authority.new_key()
    forged = authority.issue_leaf(foreign_root, foreign_key, k.public_key(), spiffe_id=A_ID,
                                  now=now, ttl_seconds=600)
    before = mesh.b.envoy.stat(f"listener.127.0.0.1_{mesh.b.port}.ssl.fail_verify_error")
    got = _tls_client(mesh, tmp_path, authority.cert_pem(forged), authority.key_pem(k))
    assert got.startswith("refused"), got
    assert _tls_client(mesh, tmp_path, None, None).startswith("refused")
    after = mesh.b.envoy.stat(f"listener.127.0.0.1_{mesh.b.port}.ssl.fail_verify_error")
    assert after == before + 1  # the forged certificate failed verification at B


def test_caller_refuses_an_upstream_with_the_wrong_spiffe_id(mesh: Mesh) -> None:
    serial = mesh.push_identity(mesh.b, spiffe=f"spiffe://{TD}/svc/c")
    wait_until(lambda: _loaded(mesh.b, serial), 10, "b presenting svc/c")
    try:
        status, body = _get(mesh.a.port)
        assert status == 503, body
        assert mesh.a.envoy.stat("cluster.upstream.ssl.fail_verify_san") >= 1
    finally:
        serial = mesh.push_identity(mesh.b)
        wait_until(lambda: _loaded(mesh.b, serial), 10, "b presenting svc/b again")
    assert _get(mesh.a.port)[0] == 200


def test_leaf_rotation_with_a_short_ttl_loses_no_request(mesh: Mesh) -> None:
    ttl = 6  # renewed every 3 s; each request is a new handshake (max_requests_per_connection 1)
    stop = threading.Event()
    pushed: dict[str, list[int]] = {"a": [], "b": []}

    def pusher() -> None:  # what the server does at each identity's half-life
        while not stop.is_set():
            for side in (mesh.a, mesh.b):
                ident = mesh.issuer.identity_for(side.name, mesh.ids[side.name], ttl, time.time())
                if not pushed[side.name] or pushed[side.name][-1] != ident.serial:
                    write_secret(side.secret_dir,
                                 tls.identity_secret(ident.cert_chain_pem, ident.key_pem))
                    pushed[side.name].append(ident.serial)
            stop.wait(0.1)

    t = threading.Thread(target=pusher, daemon=True)
    with Traffic(mesh.a.port) as traffic:
        t.start()
        try:
            wait_until(lambda: len(pushed["a"]) >= 4 and len(pushed["b"]) >= 4, 30,
                       "three renewals of each identity")
        finally:
            stop.set()
            t.join(5)
        wait_until(lambda: _loaded(mesh.a, pushed["a"][-1]) and _loaded(mesh.b, pushed["b"][-1]),
                   10, "the last identities loaded")
        ok_before = traffic.ok
        wait_until(lambda: traffic.ok > ok_before + 5, 10, "traffic after the last renewal")
    assert traffic.failures == []
    assert traffic.ok > 20
    hashes = {f for c in traffic.callers for f in c.split(";") if f.startswith("Hash=")}
    assert len(hashes) >= 3, traffic.callers  # B saw A's renewed certificates


def test_root_rotation_under_traffic_loses_no_request(mesh: Mesh, tmp_path: Path) -> None:
    sides = (mesh.a, mesh.b)
    old_root = {c.serial_number for c in authority.load_certs(mesh.issuer.trust_bundle_pem())}
    for side in sides:  # long-lived leaves again, from the current root
        serial = mesh.push_identity(side, ttl=3600)
        wait_until(lambda s=side, n=serial: _loaded(s, n), 10, "fresh leaves")
    mesh.record_acks()

    def step(expect: str) -> None:
        ok = traffic.ok
        wait_until(lambda: traffic.ok > ok + 5, 10, f"traffic in phase {expect}")
        assert rotation.advance(mesh.engine, time.time()) == expect, rotation.status(mesh.engine)

    old_ident = mesh.issuer.identity_for("old-tester", A_ID, 3600, time.time())
    with Traffic(mesh.a.port) as traffic:
        rotation.start(mesh.engine, mesh.box, time.time())
        assert mesh.issuer.reload()
        # trusting: not before every proxy loaded the bundle with both roots
        assert rotation.advance(mesh.engine, time.time()) == "trusting"
        both = {side.name: mesh.push_bundle(side) for side in sides}
        assert len(both["a"]) == 2
        for side in sides:
            wait_until(lambda s=side: _loaded(s, cas=both[s.name]), 10, "bundle with both roots")
        mesh.record_acks()
        step("reissuing")
        # reissuing: the new root signs; every leaf is renewed at once
        mesh.issuer.reload()
        assert {"a", "b"} <= set(mesh.issuer.due(time.time()))
        assert rotation.advance(mesh.engine, time.time()) == "reissuing"
        for side in sides:
            serial = mesh.push_identity(side)
            wait_until(lambda s=side, n=serial: _loaded(s, n), 10, "leaves from the new root")
        mesh.record_acks()
        step("retiring")
        # retiring: the old root leaves every bundle
        mesh.issuer.reload()
        new_only = {side.name: mesh.push_bundle(side) for side in sides}
        assert new_only["a"].isdisjoint(old_root) and len(new_only["a"]) == 1
        assert rotation.advance(mesh.engine, time.time()) == "retiring"
        for side in sides:
            wait_until(lambda s=side: _loaded(s, cas=new_only[s.name]), 10, "bundle without the old root")
        mesh.record_acks()
        step("idle")
        ok = traffic.ok
        wait_until(lambda: traffic.ok > ok + 5, 10, "traffic after the rotation")
    assert traffic.failures == []
    assert rotation.status(mesh.engine)["phase"] == "idle"
    # the old root is gone from B's bundle: a certificate it signed is refused now
    got = _tls_client(mesh, tmp_path, old_ident.cert_chain_pem, old_ident.key_pem)
    assert got.startswith("refused"), got
