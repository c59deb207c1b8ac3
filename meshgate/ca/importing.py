"""Checks on a CA a user imports (`meshgate ca import`): every violation, with its option."""

from __future__ import annotations

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from meshgate.ca.authority import (
    PrivateKey,
    Signer,
    can_sign_certs,
    is_ca,
    is_self_signed,
    is_valid_at,
    load_certs,
    load_key,
    public_keys_match,
    split_pems,
)
from meshgate.ca.errors import InvalidCaMaterial
from meshgate.errors import Violation


def _describe(cert: x509.Certificate) -> str:
    return cert.subject.rfc4514_string() or "(empty subject)"


def validate_import(cert_text: str, key_text: str, chain_text: str, now: float) -> Signer:
    """Check a CA to import (every violation, with its option) and return it as a Signer.

    --cert: one CA certificate (basicConstraints CA:true, may sign certificates),
    valid at `now`; extra certificates after it are treated as the chain.
    --key: its unencrypted PEM ECDSA private key. --chain: the certificates above
    --cert up to a self-signed root (required unless --cert is itself a root).
    """
    problems: list[Violation] = []

    def bad(field: str, msg: str) -> None:
        problems.append(Violation(field, msg))

    certs: list[x509.Certificate] = []
    try:
        certs = load_certs(cert_text)
        if not certs:
            bad("--cert", "no PEM certificate found (expected -----BEGIN CERTIFICATE-----)")
    except ValueError as exc:
        bad("--cert", f"not a readable PEM certificate ({exc})")
    chain: list[x509.Certificate] = certs[1:]
    try:
        chain += load_certs(chain_text) if chain_text.strip() else []
        if chain_text.strip() and not split_pems(chain_text):
            bad("--chain", "no PEM certificate found")
    except ValueError as exc:
        bad("--chain", f"not readable PEM certificates ({exc})")
    key: PrivateKey | None = None
    try:
        key = load_key(key_text)
    except TypeError:
        bad("--key", "the key is encrypted with a password; export it unencrypted (PEM, PKCS#8)")
    except ValueError as exc:
        bad("--key", f"not an unencrypted PEM ECDSA private key ({exc})")
    if key is not None and not isinstance(key.curve, (ec.SECP256R1, ec.SECP384R1)):
        bad("--key", f"curve {key.curve.name} is not supported (use P-256 or P-384)")
        key = None

    if certs:
        cert = certs[0]
        who = _describe(cert)
        if not is_ca(cert):
            bad("--cert", f"{who} is not a CA certificate (basicConstraints CA:true missing)")
        elif not can_sign_certs(cert):
            bad("--cert", f"{who} may not sign certificates (keyUsage lacks keyCertSign)")
        if now > cert.not_valid_after_utc.timestamp():
            bad("--cert", f"{who} expired on {cert.not_valid_after_utc:%Y-%m-%d %H:%M:%S} UTC")
        elif now < cert.not_valid_before_utc.timestamp():
            bad("--cert", f"{who} is not valid before {cert.not_valid_before_utc:%Y-%m-%d %H:%M:%S} UTC")
        if key is not None and not public_keys_match(cert, key):
            bad("--key", f"does not match the certificate {who} (different public key)")
        if not chain and not is_self_signed(cert):
            bad("--chain", f"required: {who} is issued by {cert.issuer.rfc4514_string()}; "
                "pass the certificates above it up to the self-signed root")
        child = cert
        for i, parent in enumerate(chain):
            field = f"--chain[{i}]"
            pwho = _describe(parent)
            try:
                child.verify_directly_issued_by(parent)
            except Exception:  # noqa: BLE001 - signature, name or algorithm mismatch
                bad(field, f"{pwho} did not issue {_describe(child)} (the chain must go from "
                    "--cert up to the root, in order)")
            if not is_ca(parent):
                bad(field, f"{pwho} is not a CA certificate")
            if not is_valid_at(parent, now):
                bad(field, f"{pwho} is not valid now (valid "
                    f"{parent.not_valid_before_utc:%Y-%m-%d} to {parent.not_valid_after_utc:%Y-%m-%d})")
            child = parent
        if chain and not is_self_signed(chain[-1]):
            bad(f"--chain[{len(chain) - 1}]", f"{_describe(chain[-1])} is not a self-signed root; "
                "the chain must end with the root")
    if problems or key is None or not certs:
        raise InvalidCaMaterial(problems or [Violation("--key", "missing")])
    return Signer(cert=certs[0], key=key, chain=tuple(chain))
