"""IdentityIssuer: per-proxy SVIDs in memory, half-life renewal, and a real mutual-TLS handshake."""

from __future__ import annotations

import math
import socket
import ssl
import threading
from pathlib import Path

import pytest
from cryptography import x509
from sqlalchemy import update

from meshgate.ca import authority
from meshgate.ca.errors import CaKeyError
from meshgate.ca.identity import IdentityIssuer
from meshgate.ca.keys import KeyBox, generate_key
from meshgate.store import schema
from tests.ca_store import TD, dump, new_store

NOW = 1_800_000_000.0
A = f"spiffe://{TD}/svc/a"
B = f"spiffe://{TD}/svc/b"


@pytest.fixture
def store(tmp_path: Path):  # type: ignore[no-untyped-def]
    engine, box = new_store(tmp_path / "m.db", NOW)
    yield engine, box, tmp_path / "m.db"
    engine.dispose()


def test_identity_is_cached_until_half_life_then_renewed_with_a_new_key(store) -> None:  # type: ignore[no-untyped-def]
    engine, box, _ = store
    issuer = IdentityIssuer(engine, box)
    assert issuer.next_refresh(NOW) == math.inf
    first = issuer.identity_for("a-1", A, 10, NOW)
    assert issuer.identity_for("a-1", A, 10, NOW + 4.9) is first
    assert issuer.next_refresh(NOW) == NOW + 5 and issuer.due(NOW + 4.9) == []
    assert issuer.due(NOW + 5) == ["a-1"]
    second = issuer.identity_for("a-1", A, 10, NOW + 5)
    assert second.serial != first.serial and second.key_pem != first.key_pem
    assert second.not_after == NOW + 15
    # another proxy of the same service gets its own key
    other = issuer.identity_for("a-2", A, 10, NOW + 5)
    assert other.key_pem != second.key_pem
    # a changed SPIFFE id or TTL means a new identity at once
    assert issuer.identity_for("a-2", B, 10, NOW + 5).spiffe_id == B
    assert issuer.identity_for("a-2", B, 20, NOW + 5).not_after == NOW + 25
    issuer.forget("a-2")
    assert issuer.cached("a-2") is None


def test_identity_key_matches_the_certificate_and_is_never_stored(store) -> None:  # type: ignore[no-untyped-def]
    engine, box, path = store
    issuer = IdentityIssuer(engine, box)
    ident = issuer.identity_for("a-1", A, 3600, NOW)
    leaf = authority.load_certs(ident.cert_chain_pem)[0]
    key = authority.load_key(ident.key_pem)
    assert authority.public_keys_match(leaf, key)
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == [A]
    assert ident.issuer_fingerprint == issuer.signer_fingerprint()
    body = "".join(ident.key_pem.splitlines()[1:-1])
    files = [p for p in (path, Path(f"{path}-wal")) if p.exists()]
    assert all(body[:40].encode() not in p.read_bytes() for p in files)
    assert body[:40] not in dump(path)


def test_a_wrong_store_key_cannot_sign(store) -> None:  # type: ignore[no-untyped-def]
    engine, _, _ = store
    issuer = IdentityIssuer(engine, KeyBox(generate_key(), "MESHGATE_CA_KEY"))
    assert issuer.bundle_fingerprints()  # the bundle is public: still served
    with pytest.raises(CaKeyError, match="^cannot sign: wrong encryption key"):
        issuer.identity_for("a-1", A, 3600, NOW)


def test_server_credentials_cover_names_loopback_and_the_control_plane_id(store) -> None:  # type: ignore[no-untyped-def]
    engine, box, _ = store
    chain, key_pem = IdentityIssuer(engine, box).server_credentials(["cp.example", "10.0.0.7"], NOW)
    cert = authority.load_certs(chain)[0]
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["cp.example"]
    assert {str(i) for i in san.get_values_for_type(x509.IPAddress)} == {"127.0.0.1", "::1", "10.0.0.7"}
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == [f"spiffe://{TD}/control-plane"]
    assert authority.public_keys_match(cert, authority.load_key(key_pem))


def test_reload_is_a_no_op_when_nothing_changed(store) -> None:  # type: ignore[no-untyped-def]
    engine, box, _ = store
    issuer = IdentityIssuer(engine, box)
    assert issuer.reload() is False
    with engine.begin() as conn:  # a trust-only root changes the bundle, not the signer
        root, _ = authority.create_root(TD, NOW)
        conn.execute(schema.ca_certs.insert().values(
            cert_pem=authority.cert_pem(root), chain_pem="", key_encrypted=None, status="trusted",
            fingerprint=authority.fingerprint(root), not_after=NOW + 1e8, created_at=NOW))
    first = issuer.identity_for("a-1", A, 3600, NOW)
    assert issuer.reload() is True
    assert len(issuer.bundle_fingerprints()) == 2
    assert issuer.identity_for("a-1", A, 3600, NOW) is first
    with engine.begin() as conn:
        conn.execute(update(schema.ca_certs).where(schema.ca_certs.c.status == "trusted")
                     .values(status="retired"))
    assert issuer.reload() is True and len(issuer.bundle_fingerprints()) == 1


# --- real TLS (the handshake checks validity against the real clock) -------

@pytest.fixture
def live_store(tmp_path: Path):  # type: ignore[no-untyped-def]
    import time

    engine, box = new_store(tmp_path / "live.db", time.time())
    yield engine, box
    engine.dispose()


def _ctx(tmp: Path, name: str, chain: str, key: str, bundle: str, server: bool) -> ssl.SSLContext:
    (tmp / f"{name}.crt").write_text(chain)
    (tmp / f"{name}.key").write_text(key)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER if server else ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.check_hostname = False  # SPIFFE ids are URI SANs; checked below instead
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.load_verify_locations(cadata=bundle)
    ctx.load_cert_chain(tmp / f"{name}.crt", tmp / f"{name}.key")
    return ctx


def _handshake(server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext) -> tuple[object, object]:
    """One TCP connection on 127.0.0.1; returns (server result, client result): peer SAN or error."""
    lsock = socket.create_server(("127.0.0.1", 0))
    port = lsock.getsockname()[1]
    result: dict[str, object] = {}

    def serve() -> None:
        conn, _ = lsock.accept()
        try:
            with server_ctx.wrap_socket(conn, server_side=True) as tls:
                result["server"] = tls.getpeercert()["subjectAltName"]  # type: ignore[index]
                tls.sendall(b"hello " + tls.recv(16))
        except (ssl.SSLError, OSError) as exc:
            result["server"] = exc

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as raw, \
                client_ctx.wrap_socket(raw) as tls:
            peer = tls.getpeercert()["subjectAltName"]  # type: ignore[index]
            tls.sendall(b"ping")
            reply = tls.recv(64)
            client: object = (peer, reply)
    except (ssl.SSLError, OSError) as exc:
        client = exc
    finally:
        t.join(timeout=5)
        lsock.close()
    return result.get("server"), client


def test_two_svids_complete_a_real_mutual_tls_handshake(live_store, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    import time

    engine, box = live_store
    issuer = IdentityIssuer(engine, box)
    now = time.time()
    a = issuer.identity_for("a-1", A, 600, now)
    b = issuer.identity_for("b-1", B, 600, now)
    bundle = issuer.trust_bundle_pem()
    server = _ctx(tmp_path, "b", b.cert_chain_pem, b.key_pem, bundle, server=True)
    client = _ctx(tmp_path, "a", a.cert_chain_pem, a.key_pem, bundle, server=False)
    srv, cli = _handshake(server, client)
    assert srv == (("URI", A),)
    assert cli == ((("URI", B),), b"hello ping")


def test_a_client_certificate_from_another_ca_is_refused(live_store, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    import time

    engine, box = live_store
    issuer = IdentityIssuer(engine, box)
    now = time.time()
    b = issuer.identity_for("b-1", B, 600, now)
    foreign_root, foreign_key = authority.create_root(TD, now)  # same trust domain, other CA
    k = authority.new_key()
    forged = authority.issue_leaf(foreign_root, foreign_key, k.public_key(), spiffe_id=A,
                                  now=now, ttl_seconds=600)
    bundle = issuer.trust_bundle_pem()
    server = _ctx(tmp_path, "b", b.cert_chain_pem, b.key_pem, bundle, server=True)
    client = _ctx(tmp_path, "x", authority.cert_pem(forged), authority.key_pem(k), bundle,
                  server=False)
    srv, cli = _handshake(server, client)
    assert isinstance(srv, ssl.SSLError) and "certificate verify failed" in str(srv)
    assert isinstance(cli, (ssl.SSLError, OSError))  # the client never got "hello"
