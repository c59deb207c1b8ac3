"""Authenticating ADS streams: a join token in gRPC metadata, and node.id must match it.

Envoy sends `authorization: Bearer <token>` (bootstrap `initial_metadata`).
The store keeps SHA-256 hashes of tokens; a token is looked up by its hash.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from meshgate.store.proxies import Credential

HEADER = "authorization"
SCHEME = "bearer "


class AuthError(Exception):
    """Why a stream is refused (sent to the proxy with UNAUTHENTICATED)."""


@dataclass(frozen=True)
class Authenticated:
    proxy: str
    token_hash: str


def bearer_token(metadata: Iterable[Any]) -> str | None:
    for item in metadata or ():
        key, value = (item.key, item.value) if hasattr(item, "key") else item
        if key.lower() == HEADER:
            text = value.decode() if isinstance(value, bytes) else str(value)
            if text.lower().startswith(SCHEME):
                return text[len(SCHEME):].strip() or None
            return None
    return None


class Authenticator:
    def __init__(self, credentials: Mapping[str, Credential] | None = None) -> None:
        self._by_hash: Mapping[str, Credential] = dict(credentials or {})

    def update(self, credentials: Mapping[str, Credential]) -> None:
        self._by_hash = dict(credentials)

    def authenticate(self, metadata: Iterable[Any], node_id: str) -> Authenticated:
        token = bearer_token(metadata)
        if token is None:
            raise AuthError("missing join token: send gRPC metadata 'authorization: Bearer <token>' "
                            "(see `meshgate proxy bootstrap`)")
        digest = hashlib.sha256(token.encode()).hexdigest()
        cred = self._by_hash.get(digest)
        if cred is None:
            raise AuthError("unknown join token (wrong, rotated, or its proxy was removed)")
        if cred.revoked:
            raise AuthError(f'proxy "{cred.proxy}" is revoked')
        if node_id != cred.proxy:
            raise AuthError(f"node.id {node_id!r} does not match the token, which belongs to proxy "
                            f'"{cred.proxy}"')
        return Authenticated(cred.proxy, digest)

    def still_valid(self, auth: Authenticated) -> str | None:
        """None while the stream's token still works, else why it no longer does."""
        cred = self._by_hash.get(auth.token_hash)
        if cred is None or cred.proxy != auth.proxy:
            return f'the token of proxy "{auth.proxy}" was rotated, or the proxy removed'
        if cred.revoked:
            return f'proxy "{auth.proxy}" was revoked'
        return None
