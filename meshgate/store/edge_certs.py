"""Server certificates edge gateways present, one per host (TLS SNI).

    import_cert(w, keybox, "public", "api.example.com", cert_text, key_text, now)
    issue_dev_cert(w, keybox, "public", "api.example.com", now)   # signed by the mesh CA
    remove_cert(w, "public", "api.example.com")
    list_certs(conn, gateway="public")

Keys are sealed with the store key (`meshgate.ca.keys.KeyBox`) like the CA
key; the xDS server opens them only to send them to the gateway that owns
them. Importing again for the same host replaces the certificate (renewal).

An import is refused, listing every problem, when the certificate does not
parse, is a CA, has expired or is not valid yet, does not allow server
authentication, its chain is out of order, the key does not match, or the
host matches none of its DNS names: clients would fail the handshake anyway,
and the error is clearer here than in a browser.

Development certificates (`issue_dev_cert`) come from the mesh CA with only a
DNS name, no SPIFFE id: they cannot pass as a mesh identity (sidecars accept
only certificates carrying a `spiffe://<trust-domain>/` URI).
"""

from __future__ import annotations

import datetime as dt
import time
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from sqlalchemy import Connection, insert, select, update

from meshgate.ca import authority
from meshgate.ca.keys import KeyBox
from meshgate.errors import NotFound
from meshgate.store import schema
from meshgate.store.edge import get_gateway, host_matches, is_host_pattern
from meshgate.store.rows import delete_row, read_row, record_row
from meshgate.store.txn import Write
from meshgate.validation import Checker

DEV_CERT_DAYS = 30
_ISO = "%Y-%m-%dT%H:%M:%SZ"


@dataclass(frozen=True)
class CertInfo:
    gateway: str
    host: str
    subject: str
    issuer: str
    dns_names: tuple[str, ...]
    not_before: float
    not_after: float
    fingerprint: str

    def view(self, now: float | None = None) -> dict[str, Any]:
        """As users see it (`edge cert list`): never key material."""
        out: dict[str, Any] = {
            "gateway": self.gateway,
            "host": self.host,
            "subject": self.subject,
            "issuer": self.issuer,
            "dns_names": list(self.dns_names),
            "not_after": _iso(self.not_after),
            "fingerprint": self.fingerprint,
        }
        if now is not None:
            out["expires_in_days"] = int((self.not_after - now) // 86400)
        return out


def _iso(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, tz=dt.UTC).strftime(_ISO)


def dns_names(cert: x509.Certificate) -> tuple[str, ...]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return ()
    return tuple(n.lower() for n in san.get_values_for_type(x509.DNSName))


def info_of(gateway: str, host: str, cert: x509.Certificate) -> CertInfo:
    return CertInfo(
        gateway=gateway,
        host=host,
        subject=cert.subject.rfc4514_string(),
        issuer=cert.issuer.rfc4514_string(),
        dns_names=dns_names(cert),
        not_before=cert.not_valid_before_utc.timestamp(),
        not_after=cert.not_valid_after_utc.timestamp(),
        fingerprint=authority.fingerprint(cert),
    )


def _load_key(v: Checker, key_text: str) -> Any:
    try:
        key = serialization.load_pem_private_key(key_text.encode(), password=None)
    except TypeError:
        v.add("key", "encrypted with a password: export it unencrypted (PEM)")
        return None
    except ValueError as exc:
        v.add("key", f"not an unencrypted PEM private key ({exc})")
        return None
    if isinstance(key, rsa.RSAPrivateKey):
        if key.key_size < 2048:
            v.add("key", f"RSA {key.key_size} bits is too weak (at least 2048)")
            return None
    elif isinstance(key, ec.EllipticCurvePrivateKey):
        if not isinstance(key.curve, (ec.SECP256R1, ec.SECP384R1)):
            v.add("key", f"curve {key.curve.name} is not supported (P-256 or P-384)")
            return None
    else:
        v.add("key", f"{type(key).__name__}: only RSA and ECDSA keys are supported")
        return None
    return key


def check_server_cert(
    gateway: str, host: Any, cert_text: Any, key_text: Any, now: float
) -> tuple[str, str, CertInfo]:
    """(chain PEM, key PEM as PKCS#8, info), or ValidationError with every problem."""
    v = Checker(f'certificate for host "{host}" on edge gateway "{gateway}"')
    if isinstance(host, str):
        host = host.lower()
    v.require(isinstance(host, str) and is_host_pattern(host), "host",
              f"{host!r} is not a host name (api.example.com) or wildcard (*.example.com)")
    certs: list[x509.Certificate] = []
    try:
        certs = authority.load_certs(cert_text if isinstance(cert_text, str) else "")
        if not certs:
            v.add("cert", "no PEM certificate found (expected -----BEGIN CERTIFICATE-----)")
    except ValueError as exc:
        v.add("cert", f"not a readable PEM certificate ({exc})")
    key = _load_key(v, key_text if isinstance(key_text, str) else "")
    if certs:
        leaf = certs[0]
        if authority.is_ca(leaf):
            v.add("cert", "the first certificate is a CA; put the server certificate first")
        if now > leaf.not_valid_after_utc.timestamp():
            v.add("cert", f"expired on {leaf.not_valid_after_utc:%Y-%m-%d %H:%M:%S} UTC")
        elif now < leaf.not_valid_before_utc.timestamp():
            v.add("cert", f"not valid before {leaf.not_valid_before_utc:%Y-%m-%d %H:%M:%S} UTC")
        try:
            eku = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
            if ExtendedKeyUsageOID.SERVER_AUTH not in eku:
                v.add("cert", "its extended key usage does not allow TLS server authentication")
        except x509.ExtensionNotFound:
            pass
        for i, parent in enumerate(certs[1:]):
            try:
                certs[i].verify_directly_issued_by(parent)
            except Exception:  # noqa: BLE001 - name, signature or algorithm mismatch
                v.add("cert", f"certificate {i + 2} did not issue certificate {i + 1}: "
                      "the chain must go from the server certificate up, in order")
        if key is not None and leaf.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        ) != key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        ):
            v.add("key", "does not match the certificate (different public key)")
        names = dns_names(leaf)
        if isinstance(host, str) and is_host_pattern(host) and not host_matches(host, names):
            shown = ", ".join(names) or "none"
            v.add("host", f"{host!r} matches none of the certificate's DNS names ({shown})")
    v.done()
    chain = "".join(authority.cert_pem(c) for c in certs)
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode("ascii")
    return chain, key_pem, info_of(gateway, host, certs[0])


def _row(conn: Connection, gateway: str, host: str) -> Any:
    t = schema.edge_certs
    return conn.execute(select(t).where(t.c.gateway == gateway, t.c.host == host)).first()


def _info_from_row(row: Any) -> CertInfo:
    return info_of(row.gateway, row.host, authority.load_certs(row.cert_pem)[0])


def list_certs(conn: Connection, gateway: str | None = None) -> list[CertInfo]:
    t = schema.edge_certs
    q = select(t).order_by(t.c.gateway, t.c.host)
    if gateway is not None:
        get_gateway(conn, gateway)
        q = q.where(t.c.gateway == gateway)
    return [_info_from_row(r) for r in conn.execute(q)]


def _store(w: Write, keybox: KeyBox, info: CertInfo, chain: str, key_pem: str) -> CertInfo:
    t = schema.edge_certs
    values = {
        "cert_pem": chain,
        "key_encrypted": keybox.encrypt(key_pem.encode()),
        "not_after": info.not_after,
    }
    key = {"gateway": info.gateway, "host": info.host}
    before = read_row(w.conn, t, key)
    if before is None:
        w.conn.execute(insert(t).values(gateway=info.gateway, host=info.host,
                                        created_at=time.time(), **values))
    else:
        w.conn.execute(
            update(t).where(t.c.gateway == info.gateway, t.c.host == info.host).values(**values)
        )
    record_row(w, t, key, before)
    return info


def import_cert(
    w: Write, keybox: KeyBox, gateway: str, host: Any, cert_text: Any, key_text: Any, now: float
) -> CertInfo:
    """Store (or replace) the certificate `gateway` presents for `host`."""
    get_gateway(w.conn, gateway)
    chain, key_pem, info = check_server_cert(gateway, host, cert_text, key_text, now)
    return _store(w, keybox, info, chain, key_pem)


def issue_dev_cert(
    w: Write, keybox: KeyBox, gateway: str, host: Any, now: float, days: int = DEV_CERT_DAYS
) -> CertInfo:
    """A certificate for `host` from the mesh's active CA (development: browsers and
    curl trust it only with the mesh root, `edge cert issue --ca-out`)."""
    from meshgate.ca.errors import CaNotInitialized
    from meshgate.store.ca import list_cas

    get_gateway(w.conn, gateway)
    v = Checker(f'certificate for host "{host}"')
    if isinstance(host, str):
        host = host.lower()
    v.require(isinstance(host, str) and is_host_pattern(host), "host",
              f"{host!r} is not a host name (api.example.com) or wildcard (*.example.com)")
    v.done()
    active = [r for r in list_cas(w.conn, ("active",)) if r.key_encrypted]
    if not active:
        raise CaNotInitialized("cannot sign: the store has no active CA with a key")
    row = active[0]
    signer_cert = authority.load_certs(row.cert_pem)[0]
    signer_key = authority.load_key(keybox.decrypt(row.key_encrypted))  # type: ignore[arg-type]
    key = authority.new_key()
    cert = _server_cert(signer_cert, signer_key, key, host, now, days)
    above = tuple(authority.load_certs(row.chain_pem)) if row.chain_pem.strip() else ()
    signer = authority.Signer(signer_cert, signer_key, above)
    chain = authority.cert_pem(cert) + signer.chain_pem_for_leaf()
    return _store(w, keybox, info_of(gateway, host, cert), chain, authority.key_pem(key))


def _server_cert(
    signer_cert: x509.Certificate, signer_key: ec.EllipticCurvePrivateKey,
    key: ec.EllipticCurvePrivateKey, host: str, now: float, days: int,
) -> x509.Certificate:
    start = dt.datetime.fromtimestamp(int(now) - 60, tz=dt.UTC)
    end = min(
        dt.datetime.fromtimestamp(int(now) + days * 86400, tz=dt.UTC),
        signer_cert.not_valid_after_utc,
    )
    return (
        x509.CertificateBuilder()
        .subject_name(x509.Name([
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "meshgate development"),
            x509.NameAttribute(NameOID.COMMON_NAME, host),
        ]))
        .issuer_name(signer_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                          data_encipherment=False, key_agreement=False, key_cert_sign=False,
                          crl_sign=False, encipher_only=False, decipher_only=False),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(host)]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(signer_key, hashes.SHA256())
    )


def remove_cert(w: Write, gateway: str, host: str) -> CertInfo:
    get_gateway(w.conn, gateway)
    row = _row(w.conn, gateway, host.lower())
    if row is None:
        raise NotFound(f'edge gateway "{gateway}" has no certificate for host "{host}"')
    info = _info_from_row(row)
    delete_row(w, schema.edge_certs, {"gateway": gateway, "host": row.host})
    return info
