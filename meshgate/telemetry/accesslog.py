"""Reading access-log entries: who called what, and why it was denied or failed. Pure.

Envoy only sends denied or failed requests (the filter in envoy_config). One
entry becomes a `Denial` (RBAC, JWT, rate limit, or an audit-mode rule that
would have denied), a `Failure` (5xx, response flags), or both (a request an
audit rule flags that also failed).

RBAC: `response_code_details` is `rbac_access_denied_matched_policy[<id>]`,
`[none]` when no allow rule matched (default deny). Audit-mode rules are
shadow rules: each RBAC filter writes `<shadow prefix>shadow_engine_result`
and `<shadow prefix>shadow_effective_policy_id` into the dynamic metadata
`envoy.filters.http.rbac` (meshgate's prefixes: `deny_audit.`,
`allow_audit.`; see meshgate.policy.compile). A request that passed but whose
shadow engine says `denied` is an audit-mode denial. JWT:
`jwt_authn_access_denied{<reason>}`.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from typing import Any

from envoy.config.core.v3 import base_pb2

from meshgate.telemetry.stats import SERVICE_CLUSTER_PREFIX

RBAC_METADATA = "envoy.filters.http.rbac"
_RBAC_DETAILS = re.compile(r"^rbac_access_denied_matched_policy\[(.*)\]$")
_JWT_DETAILS = re.compile(r"^jwt_authn_access_denied\{(.*)\}$")
_SHADOW_RESULT = "shadow_engine_result"
_SPIFFE = re.compile(r"^spiffe://[^/]+/(svc|edge)/([^/]+)$")

# AccessLogCommon.response_flags field -> Envoy's short flag
_FLAG_NAMES = {
    "failed_local_healthcheck": "LH", "no_healthy_upstream": "UH",
    "upstream_request_timeout": "UT", "local_reset": "LR", "upstream_remote_reset": "UR",
    "upstream_connection_failure": "UF", "upstream_connection_termination": "UC",
    "upstream_overflow": "UO", "no_route_found": "NR", "delay_injected": "DI",
    "fault_injected": "FI", "rate_limited": "RL",
    "rate_limit_service_error": "RLSE", "downstream_connection_termination": "DC",
    "upstream_retry_limit_exceeded": "URX", "stream_idle_timeout": "SI",
    "invalid_envoy_request_headers": "IH", "downstream_protocol_error": "DPE",
    "upstream_max_stream_duration_reached": "UMSDR",
    "response_from_cache_filter": "RFCF", "no_filter_config_found": "NFCF",
    "duration_timeout": "DT", "upstream_protocol_error": "UPE", "no_cluster_found": "NC",
    "overload_manager": "OM", "dns_resolution_failure": "DF", "downstream_remote_reset": "DRR",
}


@dataclass(frozen=True)
class _Request:
    """What both a denial and a failure say about the request (or TCP connection)."""

    at: float
    proxy: str
    caller: str | None
    callee: str | None
    route: str | None
    method: str | None
    path: str | None
    status: int | None


@dataclass(frozen=True)
class Denial(_Request):
    rule_id: str | None
    reason: str
    kind: str  # rbac | jwt | ratelimit | audit | tcp
    mesh_caller: bool = False  # caller is a mesh identity (SPIFFE id), not an address

    def row(self) -> dict[str, Any]:
        """The denial_events columns."""
        d = asdict(self)
        d.pop("kind")
        d.pop("mesh_caller")
        return d


@dataclass(frozen=True)
class Failure(_Request):
    flags: str
    details: str
    mesh_caller: bool = False


def identity_name(uri: str) -> str:
    """`spiffe://td/svc/orders` -> `orders`, `spiffe://td/edge/gw` -> `gw`, else the URI."""
    m = _SPIFFE.match(uri)
    return m.group(2) if m else uri


def is_mesh_identity(uri: str) -> bool:
    return bool(_SPIFFE.match(uri))


def _caller(common) -> str | None:  # type: ignore[no-untyped-def]
    peer = common.tls_properties.peer_certificate_properties
    for san in peer.subject_alt_name:
        if san.uri:
            return identity_name(san.uri)
    for san in peer.subject_alt_name:
        if san.dns:
            return san.dns
    if peer.subject:
        return peer.subject
    addr = common.downstream_remote_address.socket_address.address
    return addr or None


def _mesh_caller(common) -> bool:  # type: ignore[no-untyped-def]
    sans = common.tls_properties.peer_certificate_properties.subject_alt_name
    return any(san.uri and is_mesh_identity(san.uri) for san in sans)


def _callee(common, node_service: str | None) -> str | None:  # type: ignore[no-untyped-def]
    cluster = common.upstream_cluster
    if cluster.startswith(SERVICE_CLUSTER_PREFIX) and len(cluster) > len(SERVICE_CLUSTER_PREFIX):
        return cluster[len(SERVICE_CLUSTER_PREFIX):]
    return node_service


def response_flags(common) -> str:  # type: ignore[no-untyped-def]
    flags = common.response_flags
    out = [short for name, short in _FLAG_NAMES.items() if getattr(flags, name, False)]
    if flags.HasField("unauthorized_details"):
        out.append("UAEX")
    return ",".join(out)


def _rbac_metadata(common) -> dict[str, str]:  # type: ignore[no-untyped-def]
    fm = common.metadata.filter_metadata
    if RBAC_METADATA not in fm:
        return {}
    return {k: v.string_value for k, v in fm[RBAC_METADATA].fields.items()}


def _time(common, fallback: float) -> float:  # type: ignore[no-untyped-def]
    st = common.start_time
    if st.seconds:
        return st.seconds + st.nanos / 1e9
    return fallback


def _request(common, proxy: str, node_service: str | None, now: float,  # type: ignore[no-untyped-def]
             method: str | None = None, path: str | None = None, status: int | None = None) -> dict[str, Any]:
    """The `_Request` fields of an entry (keyword arguments for Denial and Failure)."""
    return {
        "at": _time(common, now), "proxy": proxy, "caller": _caller(common),
        "mesh_caller": _mesh_caller(common),
        "callee": _callee(common, node_service), "route": common.route_name or None,
        "method": method, "path": path, "status": status,
    }


def _rbac_denial(base: dict[str, Any], rule: str, kind: str, default_deny: str = "") -> Denial:
    """An RBAC denial by `rule` (from the response details), or by no rule: default deny."""
    if rule and rule != "none":
        return Denial(**base, rule_id=rule, reason=f"denied by rule {rule}", kind=kind)
    return Denial(**base, rule_id=None, reason="no rule allows it (default deny)" + default_deny, kind=kind)


def _shadow(meta: dict[str, str], result: str) -> tuple[bool, str | None]:
    """Did any RBAC filter's shadow engine decide `result`? And by which rule
    (a filter whose decision named a rule wins over one that did not)."""
    found, rule = False, None
    for key, value in sorted(meta.items()):
        if key.endswith(_SHADOW_RESULT) and value == result:
            found = True
            rule = rule or meta.get(key[: -len(_SHADOW_RESULT)] + "shadow_effective_policy_id")
    return found, rule or None


def read_http_entry(entry, proxy: str, node_service: str | None,  # type: ignore[no-untyped-def]
                    now: float) -> tuple[Denial | None, Failure | None]:
    """One HTTPAccessLogEntry -> (denial, failure); either may be None."""
    common = entry.common_properties
    req, resp = entry.request, entry.response
    status = resp.response_code.value if resp.HasField("response_code") else None
    details = resp.response_code_details
    flags = response_flags(common)
    base = _request(common, proxy, node_service, now,
                    base_pb2.RequestMethod.Name(req.request_method) if req.request_method else None,
                    req.path or None, status)
    denial: Denial | None = None
    meta = _rbac_metadata(common)
    m = _RBAC_DETAILS.match(details)
    if m:
        _, audit_rule = _shadow(meta, "allowed")
        denial = _rbac_denial(base, m.group(1), "rbac",
                              f"; audit rule {audit_rule} would allow it" if audit_rule else "")
    elif (j := _JWT_DETAILS.match(details)) is not None:
        denial = Denial(**base, rule_id=None, reason="jwt: " + j.group(1).replace("_", " "),
                        kind="jwt")
    elif details == "local_rate_limited" or "RL" in flags.split(","):
        denial = Denial(**base, rule_id=None, reason="rate limited", kind="ratelimit")
    else:
        audit_denied, rule = _shadow(meta, "denied")
        if audit_denied:
            denial = Denial(**base, rule_id=rule,
                            reason=f"audit: rule {rule or '(none)'} would deny (not enforced)",
                            kind="audit")
    failure: Failure | None = None
    failed = (status or 0) >= 400 or bool(flags)
    if failed and (denial is None or denial.kind == "audit"):
        failure = Failure(**base, flags=flags, details=details)
    return denial, failure


def read_tcp_entry(entry, proxy: str, node_service: str | None, now: float  # type: ignore[no-untyped-def]
                   ) -> tuple[Denial | None, Failure | None]:
    """One TCPAccessLogEntry: network RBAC denial (termination details) or failure."""
    common = entry.common_properties
    details = common.connection_termination_details
    flags = response_flags(common)
    base = _request(common, proxy, node_service, now)
    m = _RBAC_DETAILS.match(details)
    if m:
        return _rbac_denial(base, m.group(1), "tcp"), None
    if flags:
        return None, Failure(**base, flags=flags, details=details)
    return None, None
