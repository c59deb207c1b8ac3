"""Per-proxy telemetry keys: what an access-log stream presents to say which proxy sent it.

    key = telemetry_key(secret, "orders-1")        # HMAC-SHA256(secret, name), hex
    key_matches(secret, "orders-1", presented)     # constant-time

Access logs are configured in listeners (meshgate.telemetry.envoy_config), not
in the bootstrap, so they cannot carry the join token. The server derives this
key for each proxy from the store's secret (meshgate.store.telemetry_key) and
puts it in that proxy's access-log `grpc_service.initial_metadata` under
KEY_HEADER. It names a proxy, not a person: it only lets its holder report
access logs as that proxy.
"""

from __future__ import annotations

import hashlib
import hmac

KEY_HEADER = "x-meshgate-telemetry-key"
# Stands in for every proxy's key where the real ones are not needed (Envoy validation,
# `config plan` diffs): the same shape and length as a real key, never accepted.
PLACEHOLDER_KEY = "0" * 64


def telemetry_key(secret: bytes, proxy: str) -> str:
    return hmac.new(secret, proxy.encode(), hashlib.sha256).hexdigest()


def key_matches(secret: bytes, proxy: str, presented: str) -> bool:
    return hmac.compare_digest(telemetry_key(secret, proxy).encode(), presented.encode())
