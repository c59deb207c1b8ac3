"""`meshgate jwt ...` and `meshgate edge ...`: validation, revisions, output, refusals."""

from __future__ import annotations

import base64
import datetime as dt
import json
import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import Invoke, dump_database
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from tests.edge_kit import AUDIENCE, ISSUER, MeshCa, Signer, jwks


def _changes(db_path: Path, rev: int) -> list[dict[str, Any]]:
    conn = sqlite3.connect(db_path)
    try:
        (raw,) = conn.execute("SELECT changes FROM revisions WHERE id = ?", (rev,)).fetchone()
    finally:
        conn.close()
    return json.loads(raw)


def _last_revision(db_path: Path) -> int:
    conn = sqlite3.connect(db_path)
    try:
        return int(conn.execute("SELECT max(id) FROM revisions").fetchone()[0])
    finally:
        conn.close()


@pytest.fixture
def mesh(initialized: Invoke, tmp_path: Path) -> Invoke:
    """A mesh with service orders, JWT provider idp, gateway public (with a client CA)."""
    ca = MeshCa(trust_domain="clients.example")
    (tmp_path / "clients-ca.pem").write_text(ca.pem)
    (tmp_path / "jwks.json").write_text(jwks(Signer.es256(), Signer.rs256()))
    for args in (
        ("service", "add", "orders", "--port", "8080"),
        ("jwt", "add", "idp", "--issuer", ISSUER, "--audience", AUDIENCE, "--jwks-file", "jwks.json"),
        ("edge", "add", "public", "--listen", "127.0.0.1:8443", "--client-ca", "clients-ca.pem"),
    ):
        r = initialized(*args)
        assert r.exit_code == 0, r.output
    return initialized


# -- JWT providers -----------------------------------------------------------------


def test_jwt_add_list_show_remove(mesh: Invoke, db_path: Path) -> None:
    listed = json.loads(mesh("jwt", "list", "-o", "json").output)
    assert listed == [{"name": "idp", "issuer": ISSUER, "audiences": [AUDIENCE],
                       "keys": ["ec-1", "rsa-1"], "routes": []}]
    shown = json.loads(mesh("jwt", "show", "idp", "-o", "json").output)
    assert [k["kty"] for k in shown["jwks"]["keys"]] == ["EC", "RSA"]
    r = mesh("jwt", "add", "remote", "--issuer", "https://login.example.com", "--audience", "a",
             "--audience", "b", "--jwks-uri", "https://login.example.com/keys")
    assert r.exit_code == 0, r.output
    (change,) = _changes(db_path, _last_revision(db_path))
    assert (change["kind"], change["key"], change["op"]) == ("jwt_providers", "remote", "add")
    assert json.loads(change["after"]["audiences"]) == ["a", "b"]
    r = mesh("jwt", "remove", "remote")
    assert r.exit_code == 0, r.output
    assert [p["name"] for p in json.loads(mesh("jwt", "list", "-o", "json").output)] == ["idp"]


def test_jwt_update_rotates_keys(mesh: Invoke, tmp_path: Path, db_path: Path) -> None:
    (tmp_path / "new.json").write_text(jwks(Signer.es256("ec-2")))
    r = mesh("jwt", "update", "idp", "--jwks-file", "new.json")
    assert r.exit_code == 0, r.output
    assert json.loads(mesh("jwt", "list", "-o", "json").output)[0]["keys"] == ["ec-2"]
    (change,) = _changes(db_path, _last_revision(db_path))
    assert change["op"] == "update" and "ec-1" in change["before"]["jwks"]
    again = mesh("jwt", "update", "idp", "--jwks-file", "new.json")
    assert again.exit_code == 0 and "unchanged" in again.output


def _bad_jwks_cases() -> list[tuple[str, Any, str]]:
    good = Signer.es256().jwk()
    with_private = dict(good, d="AAAA")
    return [
        ("not-json", "{nope", "jwks: not JSON"),
        ("no-keys", {"keys": []}, "jwks.keys: empty"),
        ("private", {"keys": [with_private]}, "jwks.keys[0]: holds private key material (d)"),
        ("oct", {"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}, "jwks.keys[0].kty: symmetric keys (oct) are refused"),
        ("alg-none", {"keys": [dict(good, alg="none")]}, "jwks.keys[0].alg: 'none' is refused"),
        ("wrong-alg", {"keys": [dict(good, alg="RS256")]}, "jwks.keys[0].alg: 'RS256' does not fit kty EC"),
        ("no-n", {"keys": [{"kty": "RSA", "e": "AQAB"}]}, "jwks.keys[0].n: required for kty RSA"),
        ("bad-point", {"keys": [dict(good, x="AAAA")]}, "jwks.keys[0]: not a usable public key"),
        ("dup-kid", {"keys": [good, good]}, "jwks.keys[1].kid: 'ec-1' is used by another key"),
    ]


@pytest.mark.parametrize("name,doc,expected", _bad_jwks_cases(), ids=[c[0] for c in _bad_jwks_cases()])
def test_jwt_add_refuses_bad_jwks(mesh: Invoke, tmp_path: Path, db_path: Path,
                                  name: str, doc: Any, expected: str) -> None:
    (tmp_path / "bad.json").write_text(doc if isinstance(doc, str) else json.dumps(doc))
    before = dump_database(db_path)
    r = mesh("jwt", "add", "bad", "--issuer", ISSUER, "--audience", AUDIENCE, "--jwks-file", "bad.json")
    assert r.exit_code == 2, r.output
    assert expected in r.output
    assert "Traceback" not in r.output
    assert dump_database(db_path) == before


def test_jwt_add_names_every_bad_field(mesh: Invoke, db_path: Path) -> None:
    before = dump_database(db_path)
    r = mesh("jwt", "add", "Bad_Name", "--issuer", "has space", "--jwks-uri", "http://idp.example.com/k")
    assert r.exit_code == 2
    for field in ("name:", "issuer:", "audiences: at least one audience", "jwks_uri: 'http://idp.example.com/k': plain http"):
        assert field in r.output, r.output
    both = mesh("jwt", "add", "x", "--issuer", ISSUER, "--audience", "a", "--jwks-file", "jwks.json",
                "--jwks-uri", "https://idp.example.com/k")
    assert both.exit_code == 2 and "give exactly one of" in both.output
    assert dump_database(db_path) == before


def test_jwt_remove_refused_while_a_route_uses_it(mesh: Invoke) -> None:
    assert mesh("edge", "route", "add", "public", "--host", "api.example.com", "--prefix", "/o",
                "--to", "orders", "--auth", "jwt:idp").exit_code == 0
    r = mesh("jwt", "remove", "idp")
    assert r.exit_code == 1 and 'used by edge route(s) "public-orders"' in r.output


# -- gateways ----------------------------------------------------------------------


def test_edge_add_prints_identity_and_token_once(initialized: Invoke, db_path: Path) -> None:
    r = initialized("edge", "add", "public", "--listen", "127.0.0.1:8443", "--http-redirect-port", "8080")
    assert r.exit_code == 0, r.output
    assert "spiffe://example.org/edge/public" in r.output and "join token" in r.output
    token = r.output.split("join token")[1].split(": ", 1)[1].strip()
    assert token not in dump_database(db_path)  # only its hash is kept
    kinds = [(c["kind"], c["op"]) for c in _changes(db_path, _last_revision(db_path))]
    assert kinds == [("proxies", "add"), ("proxies", "update")]
    listed = json.loads(initialized("edge", "list", "-o", "json").output)
    assert listed == [{"name": "public", "listen": "127.0.0.1:8443", "http_redirect_port": 8080,
                       "mtls": False, "hosts": [], "routes": 0,
                       "identity": "spiffe://example.org/edge/public"}]


def test_edge_add_validates_every_field(initialized: Invoke, tmp_path: Path, db_path: Path) -> None:
    (tmp_path / "leaf.pem").write_text(MeshCa().leaf("spiffe://example.org/x")[0])
    before = dump_database(db_path)
    r = initialized("edge", "add", "Pub", "--listen", "127.0.0.1:99999", "--client-ca", "leaf.pem",
                    "--http-redirect-port", "0")
    assert r.exit_code == 2
    for text in ("name:", "listen:", "http_redirect_port:", "client_ca[0]: O=meshgate is not a CA"):
        assert text in r.output, r.output
    same = initialized("edge", "add", "pub", "--listen", "127.0.0.1:8443", "--http-redirect-port", "8443")
    assert same.exit_code == 2 and "is the HTTPS listen port" in same.output
    missing = initialized("edge", "add", "pub")
    assert missing.exit_code == 2 and "listen: required" in missing.output
    assert dump_database(db_path) == before


def test_edge_update_and_remove(mesh: Invoke, db_path: Path) -> None:
    assert mesh("edge", "route", "add", "public", "--host", "m.example.com", "--prefix", "/",
                "--to", "orders", "--auth", "mtls").exit_code == 0
    refused = mesh("edge", "update", "public", "--no-client-ca")
    assert refused.exit_code == 1 and "public-orders" in refused.output
    assert mesh("edge", "update", "public", "--http-redirect-port", "8080").exit_code == 0
    assert json.loads(mesh("edge", "list", "-o", "json").output)[0]["http_redirect_port"] == 8080
    busy = mesh("edge", "remove", "public")
    assert busy.exit_code == 1 and "still has routes public-orders" in busy.output
    assert mesh("edge", "cert", "issue", "--gateway", "public", "--host", "m.example.com").exit_code == 0
    assert mesh("edge", "route", "remove", "public-orders").exit_code == 0
    r = mesh("edge", "remove", "public")
    assert r.exit_code == 0, r.output
    ops = [(c["kind"], c["op"]) for c in _changes(db_path, _last_revision(db_path))]
    assert ops == [("edge_certs", "remove"), ("proxies", "remove")]
    assert json.loads(mesh("edge", "list", "-o", "json").output) == []


# -- routes ------------------------------------------------------------------------


def test_route_without_auth_is_refused(mesh: Invoke, db_path: Path) -> None:
    before = dump_database(db_path)
    r = mesh("edge", "route", "add", "public", "--host", "api.example.com", "--prefix", "/", "--to", "orders")
    assert r.exit_code == 2
    assert "auth: required" in r.output and "authentication is always explicit" in r.output
    assert dump_database(db_path) == before


def test_route_add_list_and_revision(mesh: Invoke, db_path: Path) -> None:
    r = mesh("edge", "route", "add", "public", "--host", "API.example.com", "--prefix", "/orders",
             "--to", "orders", "--auth", "jwt:idp", "--rate", "100/s", "--claim", "role=admin",
             "--claim", "https://example.com/tier=gold")
    assert r.exit_code == 0, r.output
    assert "no certificate for api.example.com" in r.output  # warned (stderr is mixed in)
    (route,) = json.loads(mesh("edge", "route", "list", "-o", "json").output)
    assert route == {"id": "public-orders", "gateway": "public", "host": "api.example.com",
                     "prefix": "/orders", "service": "orders", "auth": "jwt:idp", "rate": "100/s",
                     "claims": ["role=admin", "https://example.com/tier=gold"]}
    (change,) = _changes(db_path, _last_revision(db_path))
    assert (change["kind"], change["key"], change["op"]) == ("edge_routes", "public-orders", "add")
    assert json.loads(change["after"]["claims"]) == [["role", "admin"], ["https://example.com/tier", "gold"]]
    second = mesh("edge", "route", "add", "public", "--host", "api.example.com", "--prefix", "/other",
                  "--to", "orders", "--auth", "none", "--rate", "10/30s")
    assert second.exit_code == 0 and 'edge route "public-orders-2"' in second.output
    dup = mesh("edge", "route", "add", "public", "--host", "api.example.com", "--prefix", "/orders",
               "--to", "orders", "--auth", "none")
    assert dup.exit_code == 1 and 'edge route "public-orders" already routes' in dup.output


@pytest.mark.parametrize(
    "args,exit_code,expected",
    [
        (("--host", "bad host", "--prefix", "orders", "--to", "Orders", "--auth", "basic",
          "--rate", "fast"), 2,
         ("host:", 'prefix: "orders" must start with', "service:", "auth: 'basic' is not one of",
          "rate: 'fast' is not a rate")),
        (("--host", "a.example.com", "--prefix", "/", "--to", "orders", "--auth", "none",
          "--claim", "role=admin"), 2, ("claims[0]: a route with --auth none",)),
        (("--host", "a.example.com", "--prefix", "/", "--to", "orders", "--auth", "mtls",
          "--claim", "role=admin"), 2, ("claims[0]: 'role': an mtls route checks only",)),
        (("--host", "a.example.com", "--prefix", "/", "--to", "orders", "--auth", "jwt:idp",
          "--rate", "0/s"), 2, ("rate: 0 requests",)),
        (("--host", "a.example.com", "--prefix", "/", "--to", "nope", "--auth", "none"), 1,
         ('service "nope" not found',)),
        (("--host", "a.example.com", "--prefix", "/", "--to", "orders", "--auth", "jwt:other"), 1,
         ('JWT provider "other" not found',)),
    ],
    ids=["all-fields", "claims-on-none", "mtls-claim", "zero-rate", "unknown-service", "unknown-provider"],
)
def test_route_add_refusals(mesh: Invoke, db_path: Path, args: tuple[str, ...], exit_code: int,
                            expected: tuple[str, ...]) -> None:
    before = dump_database(db_path)
    r = mesh("edge", "route", "add", "public", *args)
    assert r.exit_code == exit_code, r.output
    for text in expected:
        assert text in r.output, r.output
    assert "Traceback" not in r.output
    assert dump_database(db_path) == before


def test_route_to_a_tcp_service_is_refused(mesh: Invoke) -> None:
    assert mesh("service", "add", "db", "--protocol", "tcp", "--port", "5432").exit_code == 0
    r = mesh("edge", "route", "add", "public", "--host", "a.example.com", "--prefix", "/",
             "--to", "db", "--auth", "none")
    assert r.exit_code == 1 and 'service "db" speaks tcp' in r.output


def test_mtls_route_needs_client_ca(initialized: Invoke) -> None:
    assert initialized("service", "add", "orders").exit_code == 0
    assert initialized("edge", "add", "plain", "--listen", "127.0.0.1:8443").exit_code == 0
    r = initialized("edge", "route", "add", "plain", "--host", "a.example.com", "--prefix", "/",
                    "--to", "orders", "--auth", "mtls")
    assert r.exit_code == 1 and "has no client CA" in r.output


# -- certificates --------------------------------------------------------------------


def _server_cert(tmp_path: Path, *, host: str = "api.example.com", days: float = 30,
                 start_days: float = -1, rsa_key: bool = False) -> tuple[Path, Path]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048) if rsa_key else ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now + dt.timedelta(days=start_days))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(host)]), critical=False)
        .sign(key, hashes.SHA256())
    )
    c, k = tmp_path / f"{host}-{days}.crt", tmp_path / f"{host}-{days}.key"
    c.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    k.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption()))
    return c, k


def test_cert_import_replace_and_list(mesh: Invoke, tmp_path: Path, db_path: Path) -> None:
    c, k = _server_cert(tmp_path, rsa_key=True)
    r = mesh("edge", "cert", "import", "--gateway", "public", "--host", "api.example.com",
             "--cert", str(c), "--key", str(k))
    assert r.exit_code == 0, r.output
    (change,) = _changes(db_path, _last_revision(db_path))
    assert (change["kind"], change["key"], change["op"]) == ("edge_certs", "public/api.example.com", "add")
    raw = sqlite3.connect(db_path).execute("SELECT key_encrypted FROM edge_certs").fetchone()[0]
    assert raw.startswith(b"MGK1") and b"PRIVATE KEY" not in raw  # sealed, never in the clear
    # the revision holds the sealed blob as stored (so rollback can restore it), never the key
    assert base64.b64decode(change["after"]["key_encrypted"]) == raw
    assert "PRIVATE KEY" not in json.dumps(change)
    c2, k2 = _server_cert(tmp_path, days=60)
    assert mesh("edge", "cert", "import", "--gateway", "public", "--host", "api.example.com",
                "--cert", str(c2), "--key", str(k2)).exit_code == 0
    assert _changes(db_path, _last_revision(db_path))[0]["op"] == "update"
    (listed,) = json.loads(mesh("edge", "cert", "list", "-o", "json").output)
    assert listed["host"] == "api.example.com" and listed["expires_in_days"] in (59, 60)


def test_cert_import_lists_every_problem(mesh: Invoke, tmp_path: Path, db_path: Path) -> None:
    expired, _ = _server_cert(tmp_path, host="old.example.com", days=-1, start_days=-10)
    _, other_key = _server_cert(tmp_path, host="x.example.com")
    before = dump_database(db_path)
    r = mesh("edge", "cert", "import", "--gateway", "public", "--host", "api.example.com",
             "--cert", str(expired), "--key", str(other_key))
    assert r.exit_code == 2, r.output
    for text in ("cert: expired on", "key: does not match the certificate",
                 "host: 'api.example.com' matches none of the certificate's DNS names (old.example.com)"):
        assert text in r.output, r.output
    (tmp_path / "junk.pem").write_text("hello")
    junk = mesh("edge", "cert", "import", "--gateway", "public", "--host", "api.example.com",
                "--cert", "junk.pem", "--key", "junk.pem")
    assert junk.exit_code == 2
    assert "cert: no PEM certificate found" in junk.output and "key: not an unencrypted PEM" in junk.output
    missing = mesh("edge", "cert", "import", "--gateway", "public", "--host", "api.example.com")
    assert missing.exit_code == 2 and "cert: required" in missing.output and "key: required" in missing.output
    assert dump_database(db_path) == before


def test_cert_issue_is_from_the_mesh_ca_and_carries_no_spiffe_id(mesh: Invoke, db_path: Path) -> None:
    r = mesh("edge", "cert", "issue", "--gateway", "public", "--host", "*.example.com")
    assert r.exit_code == 0, r.output
    conn = sqlite3.connect(db_path)
    cert_pem, root_pem = conn.execute(
        "SELECT e.cert_pem, c.cert_pem FROM edge_certs e, ca_certs c WHERE c.status = 'active'"
    ).fetchone()
    leaf = x509.load_pem_x509_certificate(cert_pem.encode())
    leaf.verify_directly_issued_by(x509.load_pem_x509_certificate(root_pem.encode()))
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["*.example.com"]
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == []
    # a route on a host the wildcard covers needs no certificate of its own
    ok = mesh("edge", "route", "add", "public", "--host", "shop.example.com", "--prefix", "/",
              "--to", "orders", "--auth", "none")
    assert ok.exit_code == 0 and "warning" not in ok.output


def test_migration_adds_claims_to_an_older_database(initialized: Invoke, db_path: Path) -> None:
    from meshgate.store.db import open_store

    conn = sqlite3.connect(db_path)
    conn.executescript(
        "DROP VIEW v_edge_routes; ALTER TABLE edge_routes DROP COLUMN claims;"
        "DELETE FROM schema_migrations WHERE name = '0004_edge_routes_claims';"
    )
    conn.close()
    open_store(str(db_path)).dispose()
    conn = sqlite3.connect(db_path)
    cols = [r[1] for r in conn.execute("PRAGMA table_info(v_edge_routes)")]
    assert cols[-1] == "claims"
    assert "claims" in [r[1] for r in conn.execute("PRAGMA table_info(edge_routes)")]


def test_sds_gives_a_gateway_its_own_certificates_only(mesh: Invoke, db_path: Path) -> None:
    """The server's secret provider: host keys opened for the owning gateway, never
    for another gateway or a sidecar."""
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    from meshgate.ca.identity import IdentityIssuer
    from meshgate.ca.keys import load_keybox
    from meshgate.store.db import open_store
    from meshgate.store.world import load_world
    from meshgate.xds.secrets import IssuerSecretProvider

    for args in (("edge", "cert", "issue", "--gateway", "public", "--host", "api.example.com"),
                 ("edge", "add", "other", "--listen", "127.0.0.1:9443"),
                 ("edge", "cert", "issue", "--gateway", "other", "--host", "other.example.com"),
                 ("proxy", "add", "orders-1", "--service", "orders")):
        assert mesh(*args).exit_code == 0
    engine = open_store(str(db_path))
    try:
        world = load_world(engine)
        provider = IssuerSecretProvider(IdentityIssuer(engine, load_keybox(str(engine.url))))
        mine = provider.secrets_for(world.proxies["public"], world, time.time())
        assert sorted(mine) == ["edge-cert/api.example.com", "edge-client-ca", "identity", "trust-bundle"]
        tls_cert = mine["edge-cert/api.example.com"].tls_certificate
        key = load_pem_private_key(tls_cert.private_key.inline_string.encode(), None)
        leaf = x509.load_pem_x509_certificate(tls_cert.certificate_chain.inline_string.encode())
        assert key.public_key().public_numbers() == leaf.public_key().public_numbers()  # type: ignore[union-attr]
        other = provider.secrets_for(world.proxies["other"], world, time.time())
        assert sorted(other) == ["edge-cert/other.example.com", "identity", "trust-bundle"]
        sidecar = provider.secrets_for(world.proxies["orders-1"], world, time.time())
        assert sorted(sidecar) == ["identity", "trust-bundle"]
    finally:
        engine.dispose()


def test_rollback_brings_a_removed_certificate_back_whole(mesh: Invoke, tmp_path: Path, db_path: Path) -> None:
    from meshgate.ca.keys import load_keybox
    from meshgate.store.db import open_store
    from meshgate.store.revisions import rollback
    from meshgate.store.world import load_world
    from meshgate.xds.translate.edge import edge_secrets

    c, k = _server_cert(tmp_path)
    assert mesh("edge", "cert", "import", "--gateway", "public", "--host", "api.example.com",
                "--cert", str(c), "--key", str(k)).exit_code == 0
    imported = _last_revision(db_path)
    assert mesh("edge", "cert", "remove", "--gateway", "public", "--host", "api.example.com").exit_code == 0
    engine = open_store(str(db_path))
    try:
        rollback(engine, imported, "test@meshgate")
        world = load_world(engine)
        box = load_keybox(str(engine.url))
        (secret,) = [s for s in edge_secrets(world, "public", lambda b: box.decrypt(b).decode())
                     if s.name == "edge-cert/api.example.com"]
    finally:
        engine.dispose()
    assert secret.tls_certificate.private_key.inline_string.strip() == k.read_text().strip()
