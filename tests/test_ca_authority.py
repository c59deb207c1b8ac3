"""Pure X.509: root and SVID fields, chains verified by an RFC 5280 verifier, import checks."""

from __future__ import annotations

import datetime as dt
import hashlib

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID
from cryptography.x509.verification import PolicyBuilder, Store, VerificationError

from meshgate.ca import authority as a
from meshgate.ca import importing
from meshgate.ca.errors import CaError, InvalidCaMaterial
from meshgate.errors import ValidationError
from tests import ca_factory as f

NOW = 1_800_000_000.0
TD = "example.org"


def _at(ts: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(ts, dt.UTC)


def _ext(cert: x509.Certificate, cls: type) -> x509.Extension:  # type: ignore[type-arg]
    return cert.extensions.get_extension_for_class(cls)


@pytest.fixture(scope="module")
def root() -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    return a.create_root(TD, NOW)


def test_root_is_a_ten_year_p256_ca_signed_by_itself(root) -> None:
    cert, key = root
    assert isinstance(cert.public_key(), ec.EllipticCurvePublicKey)
    assert cert.public_key().curve.name == "secp256r1"
    assert isinstance(cert.signature_hash_algorithm, hashes.SHA256)
    bc = _ext(cert, x509.BasicConstraints)
    assert bc.critical and bc.value.ca
    ku = _ext(cert, x509.KeyUsage)
    assert ku.critical and ku.value.key_cert_sign and ku.value.crl_sign
    years = (cert.not_valid_after_utc - _at(NOW)).days / 365.25
    assert 9.99 < years < 10.01
    assert cert.not_valid_before_utc <= _at(NOW)
    cert.verify_directly_issued_by(cert)
    ski = _ext(cert, x509.SubjectKeyIdentifier).value.digest
    assert _ext(cert, x509.AuthorityKeyIdentifier).value.key_identifier == ski
    assert a.public_keys_match(cert, key)
    other, _ = a.create_root(TD, NOW)  # two roots of one mesh never share a subject
    assert other.subject != cert.subject


def test_svid_fields_follow_the_spiffe_profile(root) -> None:
    rcert, rkey = root
    k = a.new_key()
    leaf = a.issue_leaf(rcert, rkey, k.public_key(), spiffe_id=f"spiffe://{TD}/svc/orders",
                        now=NOW, ttl_seconds=3600)
    san = _ext(leaf, x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == [f"spiffe://{TD}/svc/orders"]
    assert san.get_values_for_type(x509.DNSName) == []
    bc = _ext(leaf, x509.BasicConstraints)
    assert bc.critical and not bc.value.ca
    ku = _ext(leaf, x509.KeyUsage)
    assert ku.critical and ku.value.digital_signature
    assert not (ku.value.key_cert_sign or ku.value.crl_sign or ku.value.key_encipherment)
    assert set(_ext(leaf, x509.ExtendedKeyUsage).value) == {
        ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    assert (_ext(leaf, x509.AuthorityKeyIdentifier).value.key_identifier
            == _ext(rcert, x509.SubjectKeyIdentifier).value.digest)
    assert leaf.public_key().curve.name == "secp256r1"
    assert leaf.not_valid_after_utc == _at(NOW + 3600)
    assert leaf.not_valid_before_utc <= _at(NOW)
    assert leaf.issuer == rcert.subject
    leaf.verify_directly_issued_by(rcert)


def test_svid_verifies_as_client_and_server_certificate(root) -> None:
    rcert, rkey = root
    k = a.new_key()
    leaf = a.issue_leaf(rcert, rkey, k.public_key(), spiffe_id=f"spiffe://{TD}/svc/a",
                        now=NOW, ttl_seconds=600, dns_names=["cp.local"], ips=["127.0.0.1"])
    policy = PolicyBuilder().store(Store([rcert])).time(_at(NOW))
    client = policy.build_client_verifier().verify(leaf, [])
    assert x509.UniformResourceIdentifier(f"spiffe://{TD}/svc/a") in client.subjects
    assert policy.build_server_verifier(x509.DNSName("cp.local")).verify(leaf, [])
    # outside its validity, or under another root, it does not verify
    with pytest.raises(VerificationError):
        PolicyBuilder().store(Store([rcert])).time(_at(NOW + 601)).build_client_verifier().verify(leaf, [])
    other, _ = a.create_root(TD, NOW)
    with pytest.raises(VerificationError):
        PolicyBuilder().store(Store([other])).time(_at(NOW)).build_client_verifier().verify(leaf, [])


def test_leaf_never_outlives_its_signer(root) -> None:
    rcert, rkey = root
    late = rcert.not_valid_after_utc.timestamp() - 100
    leaf = a.issue_leaf(rcert, rkey, a.new_key().public_key(), spiffe_id=f"spiffe://{TD}/svc/a",
                        now=late, ttl_seconds=3600)
    assert leaf.not_valid_after_utc == rcert.not_valid_after_utc


def test_leaf_under_an_intermediate_verifies_with_the_chain() -> None:
    rk, ik = f.key(), f.key()
    rcert = f.cert("root", rk, now=_at(NOW))
    icert = f.cert("inter", ik, issuer=(rcert, rk), now=_at(NOW))
    signer = a.Signer(icert, ik, (rcert,))
    leaf = a.issue_leaf(icert, ik, a.new_key().public_key(), spiffe_id=f"spiffe://{TD}/svc/a",
                        now=NOW, ttl_seconds=60)
    chain = a.load_certs(signer.chain_pem_for_leaf())
    assert chain == [icert]  # the leaf presents the intermediate, never the root
    verified = PolicyBuilder().store(Store([rcert])).time(_at(NOW)).build_client_verifier()
    assert verified.verify(leaf, chain).chain[-1] == rcert
    assert signer.root == rcert


def test_fingerprint_is_sha256_of_der(root) -> None:
    cert, _ = root
    assert a.fingerprint(cert) == cert.fingerprint(hashes.SHA256()).hex()
    assert a.fingerprint(a.cert_pem(cert)) == hashlib.sha256(
        cert.public_bytes(serialization.Encoding.DER)).hexdigest()


# --- import checks -----------------------------------------------------

def _violations(exc: ValidationError) -> dict[str, str]:
    return {v.field: v.message for v in exc.violations}


def test_import_accepts_a_root_and_an_intermediate_with_chain() -> None:
    rk, ik = f.key(), f.key()
    rcert = f.cert("root", rk, now=_at(NOW))
    icert = f.cert("inter", ik, issuer=(rcert, rk), now=_at(NOW))
    s = importing.validate_import(f.pem(rcert), f.key_pem(rk), "", NOW)
    assert s.cert == rcert and s.chain == ()
    s = importing.validate_import(f.pem(icert), f.key_pem(ik), f.pem(rcert), NOW)
    assert s.cert == icert and s.chain == (rcert,)
    # the chain may also follow the certificate in the --cert file
    s = importing.validate_import(f.pem(icert) + f.pem(rcert), f.key_pem(ik), "", NOW)
    assert s.chain == (rcert,)


def test_import_refuses_a_certificate_that_is_not_a_ca() -> None:
    k = f.key()
    leaf = f.cert("leaf", k, ca=False, now=_at(NOW))
    with pytest.raises(InvalidCaMaterial) as e:
        importing.validate_import(f.pem(leaf), f.key_pem(k), "", NOW)
    assert "not a CA certificate" in _violations(e.value)["--cert"]
    assert isinstance(e.value, CaError) and e.value.exit_code == 2


def test_import_refuses_a_key_that_does_not_match() -> None:
    k = f.key()
    c = f.cert("root", k, now=_at(NOW))
    with pytest.raises(InvalidCaMaterial) as e:
        importing.validate_import(f.pem(c), f.key_pem(f.key()), "", NOW)
    assert "does not match" in _violations(e.value)["--key"]


def test_import_refuses_an_expired_ca_and_lists_every_problem() -> None:
    k = f.key()
    c = f.cert("old", k, days_from=-30, days_to=-1, now=_at(NOW))
    with pytest.raises(InvalidCaMaterial) as e:
        importing.validate_import(f.pem(c), f.key_pem(f.key()), "", NOW)
    v = _violations(e.value)
    assert "expired on" in v["--cert"]
    assert "does not match" in v["--key"]
    assert "--cert" in str(e.value) and "--key" in str(e.value)


def test_import_refuses_garbage_and_password_protected_keys() -> None:
    k = f.key()
    c = f.cert("root", k, now=_at(NOW))
    with pytest.raises(InvalidCaMaterial) as e:
        importing.validate_import("hello", "world", "", NOW)
    v = _violations(e.value)
    assert "no PEM certificate" in v["--cert"] and "--key" in v
    with pytest.raises(InvalidCaMaterial) as e:
        importing.validate_import(f.pem(c), f.key_pem(k, password=b"pw"), "", NOW)
    assert "encrypted with a password" in _violations(e.value)["--key"]


def test_import_of_intermediate_needs_a_chain_to_a_self_signed_root() -> None:
    rk, ik, ok = f.key(), f.key(), f.key()
    rcert = f.cert("root", rk, now=_at(NOW))
    icert = f.cert("inter", ik, issuer=(rcert, rk), now=_at(NOW))
    other = f.cert("other", ok, now=_at(NOW))
    with pytest.raises(InvalidCaMaterial) as e:
        importing.validate_import(f.pem(icert), f.key_pem(ik), "", NOW)
    assert "required" in _violations(e.value)["--chain"]
    with pytest.raises(InvalidCaMaterial) as e:
        importing.validate_import(f.pem(icert), f.key_pem(ik), f.pem(other), NOW)
    assert "did not issue" in _violations(e.value)["--chain[0]"]
    leafish = f.cert("not-ca", ok, issuer=(rcert, rk), ca=False, now=_at(NOW))
    with pytest.raises(InvalidCaMaterial) as e:
        importing.validate_import(f.pem(icert), f.key_pem(ik), f.pem(leafish), NOW)
    v = _violations(e.value)
    assert "--chain[0]" in v  # not the issuer, not a CA, and not a self-signed root


def test_cross_certificates_let_an_old_root_verify_leaves_of_newer_roots() -> None:
    """Two rotations: a client still trusting only root 1 verifies a root-3 server certificate."""
    (r1, k1), (r2, k2), (r3, k3) = (a.create_root(TD, NOW) for _ in range(3))
    cross2, cross3 = a.cross_sign(r2, r1, k1), a.cross_sign(r3, r2, k2)
    assert cross3.subject == r3.subject and a.public_keys_equal(cross3, r3)
    cross3.verify_directly_issued_by(r2)
    chain = a.cross_chain(r3, [cross2, cross3])
    assert chain == [cross3, cross2]
    assert a.cross_chain(r2, [cross2, cross3]) == [cross2]
    assert a.cross_chain(r1, [cross2, cross3]) == []
    leaf = a.issue_leaf(r3, k3, a.new_key().public_key(), spiffe_id=f"spiffe://{TD}/control-plane",
                        now=NOW, ttl_seconds=600, dns_names=["cp.local"])
    for trusted in (r1, r2, r3):
        verifier = PolicyBuilder().store(Store([trusted])).time(_at(NOW)).build_server_verifier(
            x509.DNSName("cp.local"))
        assert verifier.verify(leaf, chain)[-1] == trusted
    # without the cross-certificates, root 1 does not verify it
    with pytest.raises(VerificationError):
        PolicyBuilder().store(Store([r1])).time(_at(NOW)).build_server_verifier(
            x509.DNSName("cp.local")).verify(leaf, [])
