"""Schema migrations: small named steps, applied in order, recorded in a table.

A database made by an older meshgate upgrades itself when opened. A step is
never edited once released; a change to the schema is a new step at the end.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from sqlalchemy import Connection, Engine, insert, inspect, select, text

from meshgate.store import schema
from meshgate.store.db import reading
from meshgate.store.telemetry_key import ensure_key_secret

Step = Callable[[Connection], None]

_V1_TABLES = [
    schema.mesh,
    schema.services,
    schema.proxies,
    schema.instances,
    schema.policies,
    schema.jwt_providers,
    schema.edge_routes,
    schema.edge_certs,
    schema.ca_certs,
    schema.settings,
    schema.proxy_status,
    schema.revisions,
    schema.denial_events,
]


def _0001_initial(conn: Connection) -> None:
    schema.metadata.create_all(conn, tables=_V1_TABLES)
    conn.execute(text("CREATE INDEX ix_instances_service ON instances (service)"))
    conn.execute(text("CREATE INDEX ix_denial_events_at ON denial_events (at)"))
    conn.execute(text("CREATE INDEX ix_edge_routes_gateway ON edge_routes (gateway)"))


# Views are part of the public interface (docs/schema.md); users query them.
_VIEWS = {
    "v_services": """
        SELECT s.name, s.protocol, s.port, s.labels,
               COUNT(i.id) AS instances,
               COALESCE(SUM(CASE WHEN i.healthy THEN 1 ELSE 0 END), 0) AS healthy_instances
        FROM services s LEFT JOIN instances i ON i.service = s.name
        GROUP BY s.name, s.protocol, s.port, s.labels
    """,
    "v_instances": """
        SELECT i.id, i.service, i.address, i.inbound_port, i.app_port, i.weight,
               i.healthy, i.source, i.proxy
        FROM instances i
    """,
    "v_proxies": """
        SELECT p.name, p.kind, p.service, p.listen, p.revoked,
               MAX(CASE WHEN st.connected THEN 1 ELSE 0 END) AS connected,
               MAX(st.last_seen) AS last_seen,
               SUM(CASE WHEN st.nack_version IS NOT NULL
                         AND (st.acked_version IS NULL OR st.acked_at < st.nack_at)
                        THEN 1 ELSE 0 END) AS types_nacked
        FROM proxies p LEFT JOIN proxy_status st ON st.proxy = p.name
        GROUP BY p.name, p.kind, p.service, p.listen, p.revoked
    """,
    "v_policies": """
        SELECT id, action, sources, target, methods, paths, headers, grpc_methods,
               claims, mode
        FROM policies
    """,
    "v_edge_routes": """
        SELECT id, gateway, host, prefix, service, auth, rate_requests, rate_per_seconds
        FROM edge_routes
    """,
    "v_nacks": """
        SELECT proxy, type, nack_version, nack_detail, nack_resources, nack_sources, nack_at
        FROM proxy_status WHERE nack_version IS NOT NULL
    """,
    "v_denials": """
        SELECT id, at, proxy, caller, callee, route, method, path, status, rule_id, reason
        FROM denial_events
    """,
}


def _0002_views(conn: Connection) -> None:
    for name, body in _VIEWS.items():
        conn.execute(text(f"CREATE VIEW {name} AS {body}"))


def _0003_proxy_status_acked_issuer(conn: Connection) -> None:
    # sds only: fingerprint of the CA that signed the identity the proxy last
    # ACKed; root rotation waits until every connected proxy ACKed the new signer.
    # 0001 creates tables from the current schema, so a new database has it already.
    columns = {c["name"] for c in inspect(conn).get_columns("proxy_status")}
    if "acked_issuer" not in columns:
        conn.execute(text("ALTER TABLE proxy_status ADD COLUMN acked_issuer VARCHAR(64)"))


def _0004_edge_routes_claims(conn: Connection) -> None:
    # Edge routes may require JWT claims (or a client certificate SAN): JSON [[k, v]].
    # 0001 creates tables from the current schema, so a new database has the column.
    columns = {c["name"] for c in inspect(conn).get_columns("edge_routes")}
    if "claims" not in columns:
        conn.execute(text("ALTER TABLE edge_routes ADD COLUMN claims TEXT NOT NULL DEFAULT '[]'"))
    conn.execute(text("DROP VIEW IF EXISTS v_edge_routes"))
    conn.execute(
        text(
            "CREATE VIEW v_edge_routes AS SELECT id, gateway, host, prefix, service, auth, "
            "rate_requests, rate_per_seconds, claims FROM edge_routes"
        )
    )


def _0005_views_identity_current_nacks(conn: Connection) -> None:
    # v_services: each service's SPIFFE identity; v_instances: when a self-registered
    # instance's sidecar went away; v_nacks: whether a NACK is still unresolved (no ACK
    # since), so `WHERE current = 1` answers "who rejects config right now".
    views = {
        "v_services": """
            SELECT s.name, s.protocol, s.port, s.labels,
                   'spiffe://' || m.trust_domain || '/svc/' || s.name AS identity,
                   COUNT(i.id) AS instances,
                   COALESCE(SUM(CASE WHEN i.healthy THEN 1 ELSE 0 END), 0) AS healthy_instances
            FROM services s
            LEFT JOIN mesh m ON m.id = 1
            LEFT JOIN instances i ON i.service = s.name
            GROUP BY s.name, s.protocol, s.port, s.labels, m.trust_domain
        """,
        "v_instances": """
            SELECT i.id, i.service, i.address, i.inbound_port, i.app_port, i.weight,
                   i.healthy, i.source, i.proxy, i.created_at, i.disconnected_at
            FROM instances i
        """,
        "v_nacks": """
            SELECT proxy, type, nack_version, nack_detail, nack_resources, nack_sources, nack_at,
                   CASE WHEN acked_at IS NULL OR acked_at < nack_at THEN 1 ELSE 0 END AS current
            FROM proxy_status WHERE nack_version IS NOT NULL
        """,
    }
    for name, body in views.items():
        conn.execute(text(f"DROP VIEW IF EXISTS {name}"))
        conn.execute(text(f"CREATE VIEW {name} AS {body}"))


def _0006_replicas(conn: Connection) -> None:
    # Liveness of `meshgate serve` replicas sharing the store (store/replicas.py).
    schema.replicas.create(conn, checkfirst=True)


def _0007_telemetry_key_secret(conn: Connection) -> None:
    # The server secret behind each proxy's access-log key (store/telemetry_key.py):
    # a settings row written without a revision, so history and rollback never see it.
    ensure_key_secret(conn)


STEPS: list[tuple[str, Step]] = [
    ("0001_initial", _0001_initial),
    ("0002_views", _0002_views),
    ("0003_proxy_status_acked_issuer", _0003_proxy_status_acked_issuer),
    ("0004_edge_routes_claims", _0004_edge_routes_claims),
    ("0005_views_identity_current_nacks", _0005_views_identity_current_nacks),
    ("0006_replicas", _0006_replicas),
    ("0007_telemetry_key_secret", _0007_telemetry_key_secret),
]


def applied(conn: Connection) -> set[str]:
    if not inspect(conn).has_table("schema_migrations"):
        return set()
    return set(conn.execute(select(schema.schema_migrations.c.name)).scalars())


# PostgreSQL: every migration transaction first takes this advisory lock, so
# replicas starting together upgrade one at a time (two CREATE TABLEs racing
# would fail on the catalog's unique index). SQLite needs no lock: its
# transactions begin IMMEDIATE, which already serializes writers.
MIGRATION_LOCK = 0x6D67_6D69  # "mgmi"


def _serialize(conn: Connection) -> None:
    if conn.dialect.name == "postgresql":
        conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": MIGRATION_LOCK})


def pending(conn: Connection) -> list[str]:
    """The steps not yet recorded, in order. Steps recorded by a newer meshgate are
    not ours to know: an older replica keeps working on the newer schema."""
    done = applied(conn)
    return [name for name, _ in STEPS if name not in done]


def upgrade(engine: Engine) -> list[str]:
    """Apply every step not yet recorded, each in its own transaction.

    First a read that takes no lock (db.reading: deferred on SQLite, never waiting
    for a writer): when every step is recorded, which is every open but the first
    after an upgrade, that is all, so opening the store never stalls behind an open
    write. Only when a step is pending do the writes begin (BEGIN IMMEDIATE on
    SQLite, MIGRATION_LOCK on PostgreSQL), each step checked again under the lock:
    another process may have applied it since the read.
    """
    with reading(engine) as conn:
        if not pending(conn):
            return []
    with engine.begin() as conn:
        _serialize(conn)
        schema.metadata.create_all(conn, tables=[schema.schema_migrations])
        done = applied(conn)
    ran: list[str] = []
    for name, step in STEPS:
        if name in done:
            continue
        with engine.begin() as conn:
            _serialize(conn)
            if name in applied(conn):  # another process got there first
                continue
            step(conn)
            conn.execute(
                insert(schema.schema_migrations).values(name=name, applied_at=time.time())
            )
        ran.append(name)
    return ran
