"""The mesh model users manage, as small frozen value objects.

These are what every part of meshgate agrees on: the store loads them into a
`World` (one immutable read of everything), translation and policy compilation
read them, the CLI prints them. Nothing here does I/O.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

Protocol = Literal["http", "grpc", "tcp"]
MtlsMode = Literal["strict", "permissive"]
DefaultAction = Literal["deny", "allow"]
ProxyKind = Literal["sidecar", "edge"]
PolicyAction = Literal["allow", "deny"]
PolicyMode = Literal["enforce", "audit"]
PathMatchKind = Literal["exact", "prefix", "glob"]

PROTOCOLS: tuple[str, ...] = ("http", "grpc", "tcp")
MTLS_MODES: tuple[str, ...] = ("strict", "permissive")
DEFAULT_ACTIONS: tuple[str, ...] = ("deny", "allow")
PROXY_KINDS: tuple[str, ...] = ("sidecar", "edge")
HTTP_METHODS: tuple[str, ...] = (
    "GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "CONNECT", "TRACE",
)

DEFAULT_CERT_TTL_SECONDS = 3600
DEFAULT_INSTANCE_GRACE_SECONDS = 30
DEFAULT_OUTBOUND_PORT = 15001


@dataclass(frozen=True)
class Mesh:
    trust_domain: str
    mtls_mode: MtlsMode = "strict"
    default_action: DefaultAction = "deny"
    cert_ttl_seconds: int = DEFAULT_CERT_TTL_SECONDS
    instance_grace_seconds: int = DEFAULT_INSTANCE_GRACE_SECONDS

    def service_identity(self, service: str) -> str:
        return f"spiffe://{self.trust_domain}/svc/{service}"

    def edge_identity(self, gateway: str) -> str:
        return f"spiffe://{self.trust_domain}/edge/{gateway}"


@dataclass(frozen=True)
class Service:
    name: str
    protocol: Protocol = "http"
    port: int = 80
    labels: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class Instance:
    """One replica of a service: where its sidecar accepts mTLS and where its app listens."""

    id: int
    service: str
    address: str
    inbound_port: int
    app_port: int
    weight: int = 1
    healthy: bool = True
    proxy: str | None = None  # the sidecar that registered it, if any
    source: Literal["cli", "proxy"] = "cli"


@dataclass(frozen=True)
class Proxy:
    """One Envoy: the sidecar of a service instance, or an edge gateway."""

    name: str
    kind: ProxyKind
    service: str | None = None  # sidecars only
    listen: str | None = None  # edge gateways: "host:port" of the public listener
    outbound_port: int = DEFAULT_OUTBOUND_PORT  # sidecars: local outbound HTTP listener
    revoked: bool = False
    client_ca_pem: str | None = None  # edge gateways: CA bundle for `--auth mtls` routes
    http_redirect_port: int | None = None  # edge gateways: plain-HTTP port redirecting to HTTPS


@dataclass(frozen=True)
class PathMatch:
    kind: PathMatchKind
    value: str


@dataclass(frozen=True)
class Policy:
    """allow or deny, from sources to one target service, optionally narrowed.

    Sources are service names, "*" (any mesh identity), or "edge:<gateway>".
    Claims apply to edge sources (JWT claims, "san" for client certificates).
    """

    id: str
    action: PolicyAction
    sources: tuple[str, ...]
    target: str
    methods: tuple[str, ...] = ()
    paths: tuple[PathMatch, ...] = ()
    headers: tuple[tuple[str, str], ...] = ()
    grpc_methods: tuple[str, ...] = ()
    claims: tuple[tuple[str, str], ...] = ()
    mode: PolicyMode = "enforce"
    seq: int = 0  # creation order, for stable output


@dataclass(frozen=True)
class RateLimit:
    requests: int
    per_seconds: int


@dataclass(frozen=True)
class EdgeRoute:
    id: str
    gateway: str
    host: str
    prefix: str
    service: str
    auth: str  # "jwt:<provider>", "mtls" or "none"
    rate: RateLimit | None = None
    # all must hold: JWT claims (jwt: routes) or ("san", value) (mtls routes)
    claims: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class JwtProvider:
    name: str
    issuer: str
    audiences: tuple[str, ...] = ()
    jwks: str | None = None  # inline JWKS JSON
    jwks_uri: str | None = None


@dataclass(frozen=True)
class EdgeCert:
    """A server certificate an edge gateway presents for one host (SNI)."""

    gateway: str
    host: str
    cert_pem: str
    key_pem_encrypted: bytes  # encrypted with the store's key, like the CA key


@dataclass(frozen=True)
class World:
    """One immutable read of everything the control plane serves."""

    revision: int
    mesh: Mesh
    services: dict[str, Service] = field(default_factory=dict)
    instances: tuple[Instance, ...] = ()
    proxies: dict[str, Proxy] = field(default_factory=dict)
    policies: tuple[Policy, ...] = ()
    routes: tuple[EdgeRoute, ...] = ()
    jwt_providers: dict[str, JwtProvider] = field(default_factory=dict)
    edge_certs: tuple[EdgeCert, ...] = ()
    trust_roots_pem: tuple[str, ...] = ()  # every root currently in the trust bundle

    def instances_of(self, service: str) -> tuple[Instance, ...]:
        return tuple(i for i in self.instances if i.service == service)
