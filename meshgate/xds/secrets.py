"""Where SDS secrets come from: a `SecretProvider` (the mesh CA, or a test double).

    provider.secrets_for(proxy, world, now) -> {"identity": Secret, "trust-bundle": Secret}

A proxy is only ever given its own identity; names are proxy-relative, so the
server never has to decide whose `identity` a name means. The provider caches
identities and says when the next one reaches half-life (`next_refresh`).
"""

from __future__ import annotations

import hashlib
import math
from typing import Any, Protocol

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from envoy.extensions.transport_sockets.tls.v3 import secret_pb2

from meshgate.model import Proxy, World
from meshgate.xds.translate.edge import edge_secrets
from meshgate.xds.translate.tls import (
    SECRET_IDENTITY,
    SECRET_TRUST,
    identity_secret,
    trust_bundle_secret,
)

REDACTED = "<redacted: private keys never leave the server>"
_PEM_MARK = "-----BEGIN CERTIFICATE-----"


class SecretProvider(Protocol):
    def secrets_for(self, proxy: Proxy, world: World, now: float) -> dict[str, secret_pb2.Secret]: ...

    def next_refresh(self, now: float) -> float:
        """When `secrets_for` would next return something new for a cached proxy (math.inf: never)."""
        ...

    def forget(self, proxy_name: str) -> None:
        """The proxy disconnected: drop what was held for it (its private key)."""
        ...


def spiffe_id(proxy: Proxy, world: World) -> str:
    if proxy.kind == "edge":
        return world.mesh.edge_identity(proxy.name)
    return world.mesh.service_identity(proxy.service or proxy.name)


class NoSecrets:
    """No CA: no secrets (mTLS listeners and clusters then wait; fine for plaintext-only tests)."""

    def secrets_for(self, proxy: Proxy, world: World, now: float) -> dict[str, secret_pb2.Secret]:
        return {}

    def next_refresh(self, now: float) -> float:
        return math.inf

    def forget(self, proxy_name: str) -> None:
        return None


class IssuerSecretProvider:
    """The mesh CA (`meshgate.ca.identity.IdentityIssuer`) as a SecretProvider."""

    def __init__(self, issuer: Any, keybox: Any = None) -> None:
        self.issuer = issuer
        self._roots: tuple[str, ...] | None = None
        # opens edge host keys (sealed in the store like the CA key); the issuer holds
        # the same store key, so it is the default
        self.keybox = keybox if keybox is not None else getattr(issuer, "_keybox", None)

    def secrets_for(self, proxy: Proxy, world: World, now: float) -> dict[str, secret_pb2.Secret]:
        if world.trust_roots_pem != self._roots:
            self.issuer.reload()  # the CA rows moved (rotation): pick up the new signer
            self._roots = world.trust_roots_pem
        ident = self.issuer.identity_for(proxy.name, spiffe_id(proxy, world), world.mesh.cert_ttl_seconds, now)
        out = {
            SECRET_IDENTITY: identity_secret(ident.cert_chain_pem, ident.key_pem),
            SECRET_TRUST: trust_bundle_secret("".join(world.trust_roots_pem) or self.issuer.trust_bundle_pem()),
        }
        if proxy.kind == "edge" and self.keybox is not None:
            # the gateway's own host certificates and client CA, never another gateway's
            opened = lambda sealed: self.keybox.decrypt(sealed).decode()  # noqa: E731
            out.update({s.name: s for s in edge_secrets(world, proxy.name, opened)})
        return out

    def next_refresh(self, now: float) -> float:
        return float(self.issuer.next_refresh(now))

    def forget(self, proxy_name: str) -> None:
        self.issuer.forget(proxy_name)


class RedactedSecrets:
    """What `meshgate proxy config` shows for SDS: the real trust bundle, an identity
    placeholder naming the SPIFFE id (the server issues the real one on connect)."""

    def secrets_for(self, proxy: Proxy, world: World, now: float) -> dict[str, secret_pb2.Secret]:
        out = {
            SECRET_IDENTITY: identity_secret(f"<certificate for {spiffe_id(proxy, world)}>", REDACTED),
            SECRET_TRUST: trust_bundle_secret("".join(world.trust_roots_pem)),
        }
        if proxy.kind == "edge":
            out.update({s.name: s for s in edge_secrets(world, proxy.name, lambda _sealed: REDACTED)})
        return out

    def next_refresh(self, now: float) -> float:
        return math.inf

    def forget(self, proxy_name: str) -> None:
        return None


# -- facts the ACK ledger records for root rotation ---------------------------------


def _certs(pem_text: str) -> list[x509.Certificate]:
    out = []
    for part in pem_text.split(_PEM_MARK)[1:]:
        try:
            out.append(x509.load_pem_x509_certificate((_PEM_MARK + part).encode()))
        except ValueError:
            continue
    return out


def _fp(cert: x509.Certificate) -> str:
    return hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()


def bundle_fingerprints(secret_body: bytes) -> list[str]:
    """SHA-256 (DER) of every root in a trust-bundle Secret."""
    s = secret_pb2.Secret.FromString(secret_body)
    return [_fp(c) for c in _certs(s.validation_context.trusted_ca.inline_string)]


def identity_not_after(secret_body: bytes) -> float | None:
    """When the leaf of an identity Secret expires (unix seconds)."""
    s = secret_pb2.Secret.FromString(secret_body)
    chain = _certs(s.tls_certificate.certificate_chain.inline_string)
    return chain[0].not_valid_after_utc.timestamp() if chain else None


def identity_issuer(secret_body: bytes, roots_pem: tuple[str, ...]) -> str | None:
    """SHA-256 (DER) of the CA certificate that signed an identity Secret's leaf:
    the next certificate of the chain, else the root whose subject is the leaf's issuer."""
    s = secret_pb2.Secret.FromString(secret_body)
    chain = _certs(s.tls_certificate.certificate_chain.inline_string)
    if not chain:
        return None
    if len(chain) > 1:
        return _fp(chain[1])
    for root in _certs("".join(roots_pem)):
        if root.subject == chain[0].issuer:
            return _fp(root)
    return None
