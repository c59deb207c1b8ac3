"""The document kinds and their fields: one table that drives the shape checks,
the JSON schema (docs/config.md, `meshgate config schema`) and the docs.

Only the SHAPE of a document is checked here (known kind, known fields,
required fields present, value types). What a value means (a DNS label, a
port range, a policy path) is checked by the store's own validation, the same
code `meshgate service add` and friends run: there is one set of rules.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Any

from meshgate.config.errors import Problem
from meshgate.config.source import Document
from meshgate.model import DEFAULT_ACTIONS, MTLS_MODES, PROTOCOLS

SCHEMA_ID = "https://meshgate.dev/schema/config.json"


@dataclass(frozen=True)
class Field:
    name: str
    type: str  # string | integer | duration | strings | string_map | paths | jwks | text
    help: str
    required: bool = False
    enum: tuple[str, ...] = ()


@dataclass(frozen=True)
class KindSpec:
    kind: str
    help: str
    fields: tuple[Field, ...]

    def field(self, name: str) -> Field | None:
        return next((f for f in self.fields if f.name == name), None)


_f = Field


MESH = KindSpec("Mesh", "Mesh-wide settings (at most one document). Absent fields take their defaults.", (
    _f("trust_domain", "string", "The trust domain fixed at `meshgate init`; if given it must match."),
    _f("mtls_mode", "string", "strict (default) or permissive.", enum=MTLS_MODES),
    _f("default_action", "string", "deny (default) or allow: what happens to calls no policy names.",
       enum=DEFAULT_ACTIONS),
    _f("cert_ttl", "duration", "Workload certificate lifetime (default 1h; 90s, 30m, 1h30m or seconds)."),
    _f("instance_grace", "duration", "How long a disconnected self-registered instance is kept (default 30s)."),
))

SERVICE = KindSpec("Service", "A service: identity spiffe://<trust-domain>/svc/<name>.", (
    _f("name", "string", "DNS label.", required=True),
    _f("protocol", "string", "http (default), grpc or tcp.", enum=PROTOCOLS),
    _f("port", "integer", "The port callers use (default 80)."),
    _f("labels", "string_map", "Labels, KEY: VALUE."),
))

INSTANCE = KindSpec(
    "Instance",
    "A static replica of a service, keyed by address and inbound port. Replicas that "
    "register themselves when their sidecar connects are runtime state, never config.",
    (
        _f("service", "string", "The service it is a replica of.", required=True),
        _f("address", "string", "IP address or host name where its sidecar accepts mTLS.", required=True),
        _f("inbound_port", "integer", "The sidecar's inbound (mTLS) port.", required=True),
        _f("app_port", "integer", "The application's local port.", required=True),
        _f("weight", "integer", "Load-balancing weight (default 1)."),
        _f("proxy", "string", "The sidecar (a Sidecar document or `proxy add`) fronting it."),
    ),
)

POLICY = KindSpec(
    "Policy",
    "Allow or deny calls from sources to one service, optionally narrowed.",
    (
        _f("id", "string", "Stable rule id (DNS label); default generated from the rule, "
           "like allow-web-to-orders. It names the Envoy RBAC rule."),
        _f("action", "string", "allow or deny.", required=True, enum=("allow", "deny")),
        _f("mode", "string", "enforce (default) or audit (logged, not enforced).", enum=("enforce", "audit")),
        _f("sources", "strings", "Callers: service names, '*' or edge:<gateway>.", required=True),
        _f("target", "string", "The service called.", required=True),
        _f("methods", "strings", "HTTP methods."),
        _f("paths", "paths", "Path rules: each `exact: /p`, `prefix: /p` or `glob: /api/**`."),
        _f("headers", "string_map", "Request headers that must equal the value (name: value)."),
        _f("grpc_methods", "strings", "gRPC methods, package.Service/Method or package.Service/*."),
        _f("claims", "string_map", "JWT claims for edge sources (claim: value)."),
    ),
)

JWT_PROVIDER = KindSpec("JwtProvider", "Who issues the tokens edge routes accept, and their public keys.", (
    _f("name", "string", "DNS label; routes use auth: jwt:<name>.", required=True),
    _f("issuer", "string", "The `iss` tokens must carry.", required=True),
    _f("audiences", "strings", "Accepted `aud` values (at least one).", required=True),
    _f("jwks", "jwks", "Inline JSON Web Key Set (a mapping with `keys`, or JSON text)."),
    _f("jwks_uri", "string", "Remote JWKS URL (https; http only from loopback). Exactly one of jwks, jwks_uri."),
))

GATEWAY = KindSpec(
    "Gateway",
    "An edge gateway (an Envoy at the edge). Its join token is a secret: never in a file; "
    "`apply` prints the token of a gateway it creates, once.",
    (
        _f("name", "string", "DNS label; identity spiffe://<trust-domain>/edge/<name>.", required=True),
        _f("listen", "string", "HOST:PORT of the public TLS listener.", required=True),
        _f("client_ca", "text", "PEM bundle of the CA(s) for `auth: mtls` routes."),
        _f("http_redirect_port", "integer", "Plain-HTTP port that redirects to HTTPS."),
    ),
)

SIDECAR = KindSpec(
    "Sidecar",
    "A sidecar proxy of a service. Its join token is a secret: never in a file; `apply` "
    "prints the token of a sidecar it creates, once.",
    (
        _f("name", "string", "DNS label.", required=True),
        _f("service", "string", "The service whose instance it fronts.", required=True),
        _f("outbound_port", "integer", "Local outbound HTTP listener port (default 15001)."),
    ),
)

EDGE_ROUTE = KindSpec("EdgeRoute", "Which requests an edge gateway accepts and where they go.", (
    _f("id", "string", "Stable id (DNS label); default <gateway>-<service>."),
    _f("gateway", "string", "The edge gateway.", required=True),
    _f("host", "string", "Host name or *.wildcard.", required=True),
    _f("prefix", "string", "Path prefix (/ for all).", required=True),
    _f("service", "string", "Target service.", required=True),
    _f("auth", "string", "jwt:<provider>, mtls or none (always explicit).", required=True),
    _f("rate", "string", "Rate limit REQUESTS/PERIOD (100/s, 600/m, 10/30s)."),
    _f("claims", "strings", "Conditions KEY=VALUE (JWT claims; san=VALUE on mtls routes)."),
))

KINDS: dict[str, KindSpec] = {
    s.kind: s for s in (MESH, SERVICE, INSTANCE, SIDECAR, GATEWAY, JWT_PROVIDER, POLICY, EDGE_ROUTE)
}
_PATH_KINDS = ("exact", "prefix", "glob")


def _type_problem(ftype: str, value: Any) -> str | None:
    def is_int(x: Any) -> bool:
        return isinstance(x, int) and not isinstance(x, bool)

    if ftype in ("string", "text"):
        if not isinstance(value, str):
            return f"expected text, got {_shown(value)}"
    elif ftype == "integer":
        if not is_int(value):
            return f"expected a whole number, got {_shown(value)}"
    elif ftype == "duration":
        if not (is_int(value) or isinstance(value, str)):
            return f"expected a duration (90s, 30m, 1h) or seconds, got {_shown(value)}"
    elif ftype == "strings":
        if not isinstance(value, list):
            return f"expected a list, got {_shown(value)}"
        bad = [i for i, x in enumerate(value) if not isinstance(x, str)]
        if bad:
            return f"item {bad[0]} is {_shown(value[bad[0]])}: expected text (quote it)"
    elif ftype == "string_map":
        if not isinstance(value, dict):
            return f"expected a mapping (key: value), got {_shown(value)}"
        for k, v in value.items():
            if not isinstance(k, str) or not isinstance(v, str):
                return f"{k!r}: {_shown(v)}: keys and values must be text (quote numbers, e.g. '1')"
    elif ftype == "jwks":
        if not isinstance(value, (dict, str)):
            return f"expected a JSON Web Key Set (mapping with `keys`) or JSON text, got {_shown(value)}"
    elif ftype == "paths":
        if not isinstance(value, list):
            return f"expected a list of path rules, got {_shown(value)}"
        for i, item in enumerate(value):
            if not (isinstance(item, dict) and len(item) == 1 and next(iter(item)) in _PATH_KINDS
                    and isinstance(next(iter(item.values())), str)):
                return f"item {i} is not one of `exact: /p`, `prefix: /p`, `glob: /p/**`"
    return None


def _shown(value: Any) -> str:
    if isinstance(value, bool):
        return f"a boolean ({str(value).lower()})"
    if value is None:
        return "nothing (null)"
    if isinstance(value, (int, float)):
        return f"a number ({value})"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return repr(value)


def describe_doc(doc: Document) -> str:
    """`Service "orders"` for messages (kind plus its name-like field when present)."""
    v = doc.value if isinstance(doc.value, dict) else {}
    kind = v.get("kind") if isinstance(v.get("kind"), str) else "document"
    for key in ("name", "id"):
        if isinstance(v.get(key), str):
            return f'{kind} "{v[key]}"'
    if kind == "Instance" and isinstance(v.get("address"), str):
        return f'Instance "{v.get("address")}:{v.get("inbound_port")}"'
    return f"{kind} (document {doc.index + 1})"


def shape_problems(doc: Document) -> list[Problem]:
    """Every shape problem of one document (unknown kind, unknown or missing fields, types)."""
    value = doc.value
    if not isinstance(value, dict):
        return [Problem(doc.where(), f"document {doc.index + 1} is {_shown(value)}, expected a mapping with `kind`")]
    kind = value.get("kind")
    if kind is None:
        return [Problem(doc.where(), f"document {doc.index + 1} has no `kind` (one of: {', '.join(KINDS)})")]
    spec = KINDS.get(kind) if isinstance(kind, str) else None
    if spec is None:
        hint = difflib.get_close_matches(str(kind), list(KINDS), n=1)
        more = f"; did you mean {hint[0]}?" if hint else ""
        return [Problem(doc.where(("kind",)), f"unknown kind {kind!r} (one of: {', '.join(KINDS)}){more}")]
    out: list[Problem] = []
    label = describe_doc(doc)
    for key in value:
        if key == "kind":
            continue
        f = spec.field(key) if isinstance(key, str) else None
        if f is None:
            names = [x.name for x in spec.fields]
            hint = difflib.get_close_matches(str(key), names, n=1)
            more = f"; did you mean {hint[0]!r}?" if hint else ""
            out.append(Problem(f"{doc.where((key,), key=True)} ({label})",
                               f"unknown field {key!r} for kind {kind} (fields: {', '.join(names)}){more}"))
            continue
        problem = _type_problem(f.type, value[key])
        if problem is None and f.enum and value[key] not in f.enum:
            problem = f"{value[key]!r} is not one of: {', '.join(f.enum)}"
        if problem:
            out.append(Problem(f"{doc.where((key,))} ({label})", f"{key}: {problem}"))
    for f in spec.fields:
        if f.required and f.name not in value:
            out.append(Problem(f"{doc.where()} ({label})", f"{f.name}: required for kind {kind}"))
    return out


# -- JSON schema --------------------------------------------------------------------


def _field_schema(f: Field) -> dict[str, Any]:
    s: dict[str, Any]
    if f.type in ("string", "text"):
        s = {"type": "string"}
    elif f.type == "integer":
        s = {"type": "integer"}
    elif f.type == "duration":
        s = {"type": ["integer", "string"]}
    elif f.type == "strings":
        s = {"type": "array", "items": {"type": "string"}}
    elif f.type == "string_map":
        s = {"type": "object", "additionalProperties": {"type": "string"}}
    elif f.type == "jwks":
        s = {"type": ["object", "string"]}
    elif f.type == "paths":
        s = {"type": "array", "items": {"oneOf": [
            {"type": "object", "properties": {k: {"type": "string"}}, "required": [k],
             "additionalProperties": False} for k in _PATH_KINDS
        ]}}
    else:  # pragma: no cover - every type above
        raise ValueError(f.type)
    if f.enum:
        s["enum"] = list(f.enum)
    s["description"] = f.help
    return s


def kind_schema(spec: KindSpec) -> dict[str, Any]:
    return {
        "title": spec.kind,
        "description": spec.help,
        "type": "object",
        "properties": {"kind": {"const": spec.kind}, **{f.name: _field_schema(f) for f in spec.fields}},
        "required": ["kind", *(f.name for f in spec.fields if f.required)],
        "additionalProperties": False,
    }


def json_schema() -> dict[str, Any]:
    """The JSON schema of ONE document (a file is a stream of them, `---` between)."""
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": SCHEMA_ID,
        "title": "meshgate config document",
        "oneOf": [kind_schema(s) for s in KINDS.values()],
    }
