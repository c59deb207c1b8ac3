"""Mesh settings: the one `mesh` row (trust domain, mTLS mode, default action, TTLs).

    mesh = create_mesh(w, "example.org", cert_ttl="1h")
    mesh = update_mesh(w, mtls_mode="permissive")
    mesh = get_mesh(conn)

The trust domain is fixed at `meshgate init`: every SPIFFE id and certificate
is made under it, so changing it would be a new mesh.
"""

from __future__ import annotations

import time
from dataclasses import asdict
from typing import Any

from sqlalchemy import Connection, insert, select

from meshgate.durations import format_duration, parse_duration
from meshgate.errors import AlreadyExists
from meshgate.model import (
    DEFAULT_ACTIONS,
    DEFAULT_CERT_TTL_SECONDS,
    DEFAULT_INSTANCE_GRACE_SECONDS,
    MTLS_MODES,
    Mesh,
)
from meshgate.store import schema
from meshgate.store.rows import record_row, update_row
from meshgate.store.txn import Write
from meshgate.store.world import load_mesh, mesh_from_row
from meshgate.validation import Checker

MIN_CERT_TTL_SECONDS = 60
MAX_CERT_TTL_SECONDS = 365 * 86400
MAX_INSTANCE_GRACE_SECONDS = 86400


def mesh_to_dict(mesh: Mesh) -> dict[str, Any]:
    """The mesh as users see it (revisions, `mesh show --output json`)."""
    return asdict(mesh)


def mesh_settings(mesh: Mesh) -> dict[str, Any]:
    """The mesh as users write it, durations as text (`mesh show`, config export)."""
    return {
        "trust_domain": mesh.trust_domain,
        "mtls_mode": mesh.mtls_mode,
        "default_action": mesh.default_action,
        "cert_ttl": format_duration(mesh.cert_ttl_seconds),
        "instance_grace": format_duration(mesh.instance_grace_seconds),
    }


def _seconds(v: Checker, field: str, value: Any, low: int, high: int) -> int | None:
    """A duration (int seconds or text like `1h`) within [low, high], else a violation."""
    try:
        seconds = parse_duration(value)
    except (ValueError, TypeError):
        v.add(field, f"{value!r} is not a duration (e.g. 90s, 30m, 1h, 1h30m)")
        return None
    if not low <= seconds <= high:
        v.add(
            field,
            f"{value!r} is out of range ({format_duration(low)} to {format_duration(high)})",
        )
        return None
    return seconds


def validate_mesh(
    trust_domain: Any,
    mtls_mode: Any = "strict",
    default_action: Any = "deny",
    cert_ttl: Any = DEFAULT_CERT_TTL_SECONDS,
    instance_grace: Any = DEFAULT_INSTANCE_GRACE_SECONDS,
) -> Mesh:
    """A `Mesh` from raw values, or ValidationError listing every bad field.

    Durations may be seconds (int) or text (`90s`, `30m`, `1h`).
    """
    v = Checker("mesh")
    v.trust_domain("trust_domain", trust_domain)
    v.one_of("mtls_mode", mtls_mode, MTLS_MODES)
    v.one_of("default_action", default_action, DEFAULT_ACTIONS)
    ttl = _seconds(v, "cert_ttl", cert_ttl, MIN_CERT_TTL_SECONDS, MAX_CERT_TTL_SECONDS)
    grace = _seconds(v, "instance_grace", instance_grace, 0, MAX_INSTANCE_GRACE_SECONDS)
    v.done()
    assert ttl is not None and grace is not None
    return Mesh(
        trust_domain=trust_domain,
        mtls_mode=mtls_mode,
        default_action=default_action,
        cert_ttl_seconds=ttl,
        instance_grace_seconds=grace,
    )


def get_mesh(conn: Connection) -> Mesh:
    """The mesh settings; StoreError when the database has no mesh yet."""
    return load_mesh(conn)


def create_mesh(
    w: Write,
    trust_domain: Any,
    mtls_mode: Any = "strict",
    default_action: Any = "deny",
    cert_ttl: Any = DEFAULT_CERT_TTL_SECONDS,
    instance_grace: Any = DEFAULT_INSTANCE_GRACE_SECONDS,
) -> Mesh:
    """Write the mesh row; AlreadyExists when the database has one."""
    mesh = validate_mesh(trust_domain, mtls_mode, default_action, cert_ttl, instance_grace)
    existing = w.conn.execute(select(schema.mesh).where(schema.mesh.c.id == 1)).first()
    if existing is not None:
        raise AlreadyExists(
            f"a mesh already exists in this database (trust domain "
            f"{existing.trust_domain!r}); use `meshgate mesh set` to change it"
        )
    w.conn.execute(
        insert(schema.mesh).values(
            id=1,
            trust_domain=mesh.trust_domain,
            mtls_mode=mesh.mtls_mode,
            default_action=mesh.default_action,
            cert_ttl_seconds=mesh.cert_ttl_seconds,
            instance_grace_seconds=mesh.instance_grace_seconds,
            created_at=time.time(),
        )
    )
    record_row(w, schema.mesh, 1, None)
    return mesh


def update_mesh(
    w: Write,
    *,
    mtls_mode: Any = None,
    default_action: Any = None,
    cert_ttl: Any = None,
    instance_grace: Any = None,
) -> Mesh:
    """Change the given settings (None keeps a setting); records a change only if any differ."""
    row = w.conn.execute(select(schema.mesh).where(schema.mesh.c.id == 1)).first()
    current = mesh_from_row(row) if row is not None else load_mesh(w.conn)
    new = validate_mesh(
        current.trust_domain,
        current.mtls_mode if mtls_mode is None else mtls_mode,
        current.default_action if default_action is None else default_action,
        current.cert_ttl_seconds if cert_ttl is None else cert_ttl,
        current.instance_grace_seconds if instance_grace is None else instance_grace,
    )
    if new == current:
        return current
    update_row(w, schema.mesh, 1, mtls_mode=new.mtls_mode, default_action=new.default_action,
               cert_ttl_seconds=new.cert_ttl_seconds, instance_grace_seconds=new.instance_grace_seconds)
    return new
