"""The SQL schema: one SQLAlchemy Core table per noun of the model.

Tables are created by the migrations in `migrations.py`, never by
`metadata.create_all` on open, so an older database upgrades step by step.
JSON-valued columns hold lists or objects as text (portable across SQLite and
PostgreSQL, and readable with plain `sqlite3`).
"""

from __future__ import annotations

from sqlalchemy import (
    Boolean,
    Column,
    Float,
    ForeignKey,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
)

metadata = MetaData()

schema_migrations = Table(
    "schema_migrations",
    metadata,
    Column("name", String(200), primary_key=True),
    Column("applied_at", Float, nullable=False),
)

# Exactly one row (id = 1).
mesh = Table(
    "mesh",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("trust_domain", String(253), nullable=False),
    Column("mtls_mode", String(16), nullable=False, default="strict"),
    Column("default_action", String(8), nullable=False, default="deny"),
    Column("cert_ttl_seconds", Integer, nullable=False, default=3600),
    Column("instance_grace_seconds", Integer, nullable=False, default=30),
    Column("created_at", Float, nullable=False),
)

services = Table(
    "services",
    metadata,
    Column("name", String(63), primary_key=True),
    Column("protocol", String(8), nullable=False),
    Column("port", Integer, nullable=False),
    Column("labels", Text, nullable=False, default="{}"),  # JSON object
    Column("created_at", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
)

proxies = Table(
    "proxies",
    metadata,
    Column("name", String(63), primary_key=True),
    Column("kind", String(8), nullable=False),  # sidecar | edge
    Column("service", String(63), ForeignKey("services.name", ondelete="RESTRICT")),
    Column("listen", String(300)),  # edge: host:port
    Column("outbound_port", Integer, nullable=False, default=15001),
    Column("token_hash", String(128), nullable=False),  # sha256 hex of the join token
    Column("revoked", Boolean, nullable=False, default=False),
    Column("client_ca_pem", Text),
    Column("http_redirect_port", Integer),
    Column("created_at", Float, nullable=False),
)

instances = Table(
    "instances",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column(
        "service", String(63), ForeignKey("services.name", ondelete="CASCADE"), nullable=False
    ),
    Column("address", String(253), nullable=False),
    Column("inbound_port", Integer, nullable=False),
    Column("app_port", Integer, nullable=False),
    Column("weight", Integer, nullable=False, default=1),
    Column("healthy", Boolean, nullable=False, default=True),
    Column("proxy", String(63), ForeignKey("proxies.name", ondelete="SET NULL")),
    Column("source", String(8), nullable=False, default="cli"),  # cli | proxy
    Column("created_at", Float, nullable=False),
    Column("disconnected_at", Float),  # self-registered: stream ended, removed after grace
    UniqueConstraint("address", "inbound_port", name="uq_instances_address_port"),
)

policies = Table(
    "policies",
    metadata,
    Column("id", String(63), primary_key=True),
    Column("seq", Integer, nullable=False),
    Column("action", String(8), nullable=False),  # allow | deny
    Column("sources", Text, nullable=False),  # JSON list
    Column("target", String(63), nullable=False),
    Column("methods", Text, nullable=False, default="[]"),
    Column("paths", Text, nullable=False, default="[]"),  # JSON [{kind, value}]
    Column("headers", Text, nullable=False, default="[]"),  # JSON [[k, v]]
    Column("grpc_methods", Text, nullable=False, default="[]"),
    Column("claims", Text, nullable=False, default="[]"),  # JSON [[k, v]]
    Column("mode", String(8), nullable=False, default="enforce"),
    Column("created_at", Float, nullable=False),
)

jwt_providers = Table(
    "jwt_providers",
    metadata,
    Column("name", String(63), primary_key=True),
    Column("issuer", String(500), nullable=False),
    Column("audiences", Text, nullable=False, default="[]"),
    Column("jwks", Text),
    Column("jwks_uri", String(1000)),
    Column("created_at", Float, nullable=False),
)

edge_routes = Table(
    "edge_routes",
    metadata,
    Column("id", String(63), primary_key=True),
    Column(
        "gateway", String(63), ForeignKey("proxies.name", ondelete="CASCADE"), nullable=False
    ),
    Column("host", String(253), nullable=False),
    Column("prefix", String(500), nullable=False),
    Column("service", String(63), nullable=False),
    Column("auth", String(80), nullable=False),
    Column("rate_requests", Integer),
    Column("rate_per_seconds", Integer),
    Column("created_at", Float, nullable=False),
    # JSON [[k, v]]: JWT claims (or ["san", v] on mtls routes) that must all hold (migration 0004+)
    Column("claims", Text, nullable=False, default="[]"),
    UniqueConstraint("gateway", "host", "prefix", name="uq_edge_routes_gateway_host_prefix"),
)

edge_certs = Table(
    "edge_certs",
    metadata,
    Column(
        "gateway", String(63), ForeignKey("proxies.name", ondelete="CASCADE"), primary_key=True
    ),
    Column("host", String(253), primary_key=True),
    Column("cert_pem", Text, nullable=False),
    Column("key_encrypted", LargeBinary, nullable=False),
    Column("not_after", Float, nullable=False),
    Column("created_at", Float, nullable=False),
)

ca_certs = Table(
    "ca_certs",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("cert_pem", Text, nullable=False),
    Column("chain_pem", Text, nullable=False, default=""),
    Column("key_encrypted", LargeBinary),  # NULL for a trust-only root
    Column("status", String(10), nullable=False),  # active | next | retired | trusted
    Column("fingerprint", String(64), nullable=False),
    Column("not_after", Float, nullable=False),
    Column("created_at", Float, nullable=False),
)

# Small key/value state owned by the control plane (for example the phase of a
# root rotation), so that replicas share it through the store.
settings = Table(
    "settings",
    metadata,
    Column("key", String(100), primary_key=True),
    Column("value", Text, nullable=False),  # JSON
    Column("updated_at", Float, nullable=False),
)

proxy_status = Table(
    "proxy_status",
    metadata,
    Column("proxy", String(63), primary_key=True),
    Column("type", String(8), primary_key=True),  # cds | eds | lds | rds | sds
    Column("replica", String(200)),
    Column("connected", Boolean, nullable=False, default=False),
    Column("connected_since", Float),
    Column("last_seen", Float),
    Column("sent_version", String(64)),
    Column("sent_nonce", String(64)),
    Column("sent_at", Float),
    Column("acked_version", String(64)),
    Column("acked_at", Float),
    Column("nack_version", String(64)),
    Column("nack_detail", Text),
    Column("nack_resources", Text),  # JSON list of resource names
    Column("nack_sources", Text),  # JSON list of "service:x", "policy:y", "route:z"
    Column("nack_at", Float),
    # sds only: SHA-256 fingerprints of the roots in the trust bundle the proxy
    # last ACKed (JSON list); root rotation waits on these.
    Column("acked_roots", Text),
    # sds only: SHA-256 fingerprint of the CA certificate that signed the
    # identity the proxy last ACKed (migration 0003).
    Column("acked_issuer", String(64)),
)

revisions = Table(
    "revisions",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("actor", String(300), nullable=False),
    Column("at", Float, nullable=False),
    Column("summary", Text, nullable=False),
    # JSON list of {"kind", "key", "op": add|update|remove, "before", "after"}
    Column("changes", Text, nullable=False),
)

denial_events = Table(
    "denial_events",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("at", Float, nullable=False),
    Column("proxy", String(63)),
    Column("caller", String(300)),
    Column("callee", String(300)),
    Column("route", String(63)),
    Column("method", String(16)),
    Column("path", Text),
    Column("status", Integer),
    Column("rule_id", String(63)),
    Column("reason", Text),
)

# One row per running `meshgate serve` (migration 0006). `beats` moves every few
# seconds; a replica whose counter stops is declared gone by the others, which
# then mark the proxy_status rows it held disconnected (meshgate/store/replicas.py).
replicas = Table(
    "replicas",
    metadata,
    Column("name", String(200), primary_key=True),
    Column("listen", String(300)),
    Column("host", String(253)),
    Column("pid", Integer),
    Column("started_at", Float, nullable=False),
    Column("heartbeat_at", Float, nullable=False),  # the replica's own clock, informative
    Column("beats", Integer, nullable=False, default=0),
)
