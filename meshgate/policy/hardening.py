"""HTTP connection manager settings that keep path rules from being bypassed.

Every HCM meshgate generates (sidecar inbound and outbound, edge) takes these,
so RBAC path rules see one canonical path:
- normalize_path: RFC 3986 normalization (`/a/../b` -> `/b`, `%61` -> `a`);
- merge_slashes: `//admin` -> `/admin`;
- path_with_escaped_slashes_action REJECT_REQUEST: a path holding `%2F`,
  `%2f`, `%5C` or `%5c` gets HTTP 400. Rejecting (rather than unescaping and
  redirecting) is chosen because mesh callers are programs: a redirect would
  surface as a confusing 3xx (gRPC does not follow it), and applications that
  need an encoded slash inside one path segment are rare.

`meshgate.policy.paths.normalize_request_path` reproduces the result for
`policy check`; tests compare both against the real Envoy.
"""

from __future__ import annotations

from typing import Any

from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm,
)
from google.protobuf import wrappers_pb2

ESCAPED_SLASHES_ACTION = hcm.HttpConnectionManager.REJECT_REQUEST


def hcm_path_hardening() -> dict[str, Any]:
    """HttpConnectionManager field values, ready for `HttpConnectionManager(**...)`."""
    return {
        "normalize_path": wrappers_pb2.BoolValue(value=True),
        "merge_slashes": True,
        "path_with_escaped_slashes_action": ESCAPED_SLASHES_ACTION,
    }


def apply_path_hardening(manager: hcm.HttpConnectionManager) -> hcm.HttpConnectionManager:
    """Set the hardening fields on an existing HCM (in place) and return it."""
    manager.normalize_path.value = True
    manager.merge_slashes = True
    manager.path_with_escaped_slashes_action = ESCAPED_SLASHES_ACTION
    return manager
