"""Pure X.509: roots, SPIFFE SVIDs, server certificates, checks on imported CAs.

No I/O and no clock: every function takes `now` (Unix seconds) and keys as
objects. All keys are ECDSA P-256, all signatures ECDSA with SHA-256.

SVID profile (SPIFFE X.509-SVID):
- exactly one URI SAN, the SPIFFE id; subject O=meshgate;
- basicConstraints CA:false (critical), keyUsage digitalSignature (critical),
  extendedKeyUsage serverAuth + clientAuth, SKI, AKI = the signer's SKI;
- valid from `now - backdate` to `now + ttl` (backdate tolerates small clock
  skew between hosts: min(30 s, ttl)).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

ROOT_YEARS = 10
_PEM_MARK = "-----BEGIN CERTIFICATE-----"

PrivateKey = ec.EllipticCurvePrivateKey


def _time(ts: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(int(ts), tz=dt.UTC)


def new_key() -> PrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def key_pem(key: PrivateKey) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode("ascii")


def cert_pem(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode("ascii")


def load_key(pem: str | bytes) -> PrivateKey:
    data = pem.encode() if isinstance(pem, str) else pem
    key = serialization.load_pem_private_key(data, password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ValueError("not an ECDSA private key")
    return key


def split_pems(text: str) -> list[str]:
    """Every PEM certificate block in `text`, in order, each ending in a newline."""
    parts = text.split(_PEM_MARK)[1:]
    return [(_PEM_MARK + p).strip() + "\n" for p in parts]


def load_certs(text: str) -> list[x509.Certificate]:
    return [x509.load_pem_x509_certificate(p.encode()) for p in split_pems(text)]


def fingerprint(cert: x509.Certificate | str) -> str:
    """SHA-256 hex of the DER encoding (of the first certificate of a PEM text)."""
    if isinstance(cert, str):
        cert = load_certs(cert)[0]
    return hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()


def _ski(public_key: ec.EllipticCurvePublicKey) -> x509.SubjectKeyIdentifier:
    return x509.SubjectKeyIdentifier.from_public_key(public_key)


def _aki(issuer: x509.Certificate) -> x509.AuthorityKeyIdentifier:
    try:
        ski = issuer.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
        return x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski)
    except x509.ExtensionNotFound:
        return x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer.public_key())  # type: ignore[arg-type]


def create_root(
    trust_domain: str, now: float, *, years: int = ROOT_YEARS, key: PrivateKey | None = None
) -> tuple[x509.Certificate, PrivateKey]:
    """A self-signed root CA for the trust domain, valid `years` from `now` (minus 1 h)."""
    key = key or new_key()
    # Unique per root (the key id): during a rotation two roots share the bundle,
    # and chain building looks issuers up by subject name first.
    stamp = _time(now).strftime("%Y-%m-%d")
    kid = _ski(key.public_key()).digest.hex()[:12]
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "meshgate"),
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, trust_domain[:64]),
            x509.NameAttribute(NameOID.COMMON_NAME, f"meshgate root CA {stamp} {kid}"),
        ]
    )
    not_before = _time(now - 3600)
    not_after = _time(now + years * 365.25 * 86400)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        # no path length limit: after rotations, a client holding an old root
        # verifies through a chain of cross-certificates (see `cross_sign`)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(_ski(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(key.public_key()), critical=False
        )
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.UniformResourceIdentifier(f"spiffe://{trust_domain}")]
            ),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    return cert, key


def cross_sign(subject: x509.Certificate, issuer: x509.Certificate, issuer_key: PrivateKey) -> x509.Certificate:
    """`subject` (a new root) re-issued by `issuer` (an old root): same name, key and SKI.

    A client that still trusts only the old root (an Envoy bootstrap written
    before a rotation) verifies `leaf -> cross -> old root`; a client trusting
    the new root stops at the new root itself. Valid while both are.
    """
    not_after = min(subject.not_valid_after_utc, issuer.not_valid_after_utc)
    b = (
        x509.CertificateBuilder()
        .subject_name(subject.subject)
        .issuer_name(issuer.subject)
        .public_key(subject.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(subject.not_valid_before_utc)
        .not_valid_after(not_after)
    )
    for ext in subject.extensions:
        if isinstance(ext.value, (x509.BasicConstraints, x509.KeyUsage, x509.SubjectKeyIdentifier,
                                  x509.SubjectAlternativeName)):
            b = b.add_extension(ext.value, critical=ext.critical)
    return b.add_extension(_aki(issuer), critical=False).sign(issuer_key, hashes.SHA256())


def cross_chain(root: x509.Certificate, crosses: Sequence[x509.Certificate]) -> list[x509.Certificate]:
    """Cross-certificates leading from `root` back through every older root, newest first.

    The first carries `root`'s name and key; each next one carries the name and
    key of the root that signed the previous one.
    """
    def issued_by(child: x509.Certificate, parent: x509.Certificate) -> bool:
        try:
            child.verify_directly_issued_by(parent)
        except Exception:  # noqa: BLE001 - name, signature or algorithm mismatch
            return False
        return True

    current = next((c for c in crosses if c.subject == root.subject and c.issuer != c.subject
                    and public_keys_equal(c, root)), None)
    out: list[x509.Certificate] = []
    while current is not None and current not in out:
        out.append(current)
        parent = current
        current = next((c for c in crosses if c not in out and c.issuer != c.subject
                        and issued_by(parent, c)), None)
    return out


def public_keys_equal(a: x509.Certificate, b: x509.Certificate) -> bool:
    fmt = serialization.PublicFormat.SubjectPublicKeyInfo
    enc = serialization.Encoding.DER
    return bool(a.public_key().public_bytes(enc, fmt) == b.public_key().public_bytes(enc, fmt))


def _leaf_key_usage() -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=False,
        crl_sign=False,
        encipher_only=False,
        decipher_only=False,
    )


def issue_leaf(
    signer_cert: x509.Certificate,
    signer_key: PrivateKey,
    public_key: ec.EllipticCurvePublicKey,
    *,
    spiffe_id: str,
    now: float,
    ttl_seconds: int,
    dns_names: Sequence[str] = (),
    ips: Sequence[str] = (),
) -> x509.Certificate:
    """An end-entity certificate: SPIFFE URI SAN (+ optional DNS/IP SANs), serverAuth+clientAuth."""
    if ttl_seconds < 1:
        raise ValueError("ttl_seconds must be >= 1")
    backdate = min(30, ttl_seconds)
    not_after = min(now + ttl_seconds, signer_cert.not_valid_after_utc.timestamp())
    sans: list[x509.GeneralName] = [x509.UniformResourceIdentifier(spiffe_id)]
    sans += [x509.DNSName(n) for n in dns_names]
    sans += [x509.IPAddress(ipaddress.ip_address(a)) for a in ips]
    return (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "meshgate")]))
        .issuer_name(signer_cert.subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(_time(now - backdate))
        .not_valid_after(_time(not_after))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_leaf_key_usage(), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(_ski(public_key), critical=False)
        .add_extension(_aki(signer_cert), critical=False)
        .sign(signer_key, hashes.SHA256())
    )


@dataclass(frozen=True)
class Signer:
    """What signs leaves: a root or an intermediate, its key, and the chain above it."""

    cert: x509.Certificate
    key: PrivateKey
    chain: tuple[x509.Certificate, ...] = ()  # above `cert`, ending at the root; () for a root

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.cert)

    @property
    def root(self) -> x509.Certificate:
        return self.chain[-1] if self.chain else self.cert

    def chain_pem_for_leaf(self) -> str:
        """Certificates a leaf presents after itself: the signer and intermediates, no root."""
        if not self.chain:
            return ""
        return "".join(cert_pem(c) for c in (self.cert, *self.chain[:-1]))


def is_ca(cert: x509.Certificate) -> bool:
    try:
        bc = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        return False
    return bool(bc.ca)


def can_sign_certs(cert: x509.Certificate) -> bool:
    try:
        ku = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        return True  # no keyUsage: not restricted
    return bool(ku.key_cert_sign)


def is_self_signed(cert: x509.Certificate) -> bool:
    if cert.issuer != cert.subject:
        return False
    try:
        cert.verify_directly_issued_by(cert)
    except Exception:  # noqa: BLE001 - any failure means "not self-signed"
        return False
    return True


def is_valid_at(cert: x509.Certificate, now: float) -> bool:
    return cert.not_valid_before_utc.timestamp() <= now <= cert.not_valid_after_utc.timestamp()


def public_keys_match(cert: x509.Certificate, key: PrivateKey) -> bool:
    fmt = serialization.PublicFormat.SubjectPublicKeyInfo
    enc = serialization.Encoding.DER
    return bool(cert.public_key().public_bytes(enc, fmt) == key.public_key().public_bytes(enc, fmt))


def root_of(cert_pem_text: str, chain_pem_text: str) -> str:
    """The root PEM: the last certificate of the chain, or the certificate itself."""
    chain = split_pems(chain_pem_text)
    return chain[-1] if chain else split_pems(cert_pem_text)[0]
