"""Loading one immutable `World` from the store, in one read transaction."""

from __future__ import annotations

import json
from dataclasses import fields
from typing import Any, TypeVar

from sqlalchemy import Connection, Engine, select

from meshgate.ca.authority import root_of
from meshgate.model import (
    EdgeCert,
    EdgeRoute,
    Instance,
    JwtProvider,
    Mesh,
    PathMatch,
    Policy,
    Proxy,
    RateLimit,
    Service,
    World,
)
from meshgate.store import schema
from meshgate.store.db import reading
from meshgate.store.errors import StoreError
from meshgate.store.txn import current_revision

T = TypeVar("T")


def _pairs(raw: str) -> tuple[tuple[str, str], ...]:
    return tuple((str(k), str(v)) for k, v in json.loads(raw or "[]"))


def _json_tuple(raw: str | None) -> tuple[Any, ...]:
    return tuple(json.loads(raw or "[]"))


def _from_row(cls: type[T], row: Any, **converted: Any) -> T:
    """A model object from a row (or anything with the columns as attributes): each field
    from the column of the same name, except those given in `converted` (JSON text,
    0/1 flags, columns with another name)."""
    copied = {f.name: getattr(row, f.name) for f in fields(cls) if f.name not in converted}  # type: ignore[arg-type]
    return cls(**copied, **converted)


def mesh_from_row(row: Any) -> Mesh:
    return _from_row(Mesh, row)


def service_from_row(row: Any) -> Service:
    labels = json.loads(row.labels or "{}")
    return _from_row(Service, row, labels=tuple(sorted((str(k), str(v)) for k, v in labels.items())))


def instance_from_row(row: Any) -> Instance:
    return _from_row(Instance, row, healthy=bool(row.healthy))


def proxy_from_row(row: Any) -> Proxy:
    return _from_row(Proxy, row, revoked=bool(row.revoked))


def policy_from_row(row: Any) -> Policy:
    return _from_row(
        Policy, row,
        sources=_json_tuple(row.sources),
        methods=_json_tuple(row.methods),
        paths=tuple(PathMatch(kind=p["kind"], value=p["value"]) for p in json.loads(row.paths or "[]")),
        headers=_pairs(row.headers),
        grpc_methods=_json_tuple(row.grpc_methods),
        claims=_pairs(row.claims),
    )


def route_from_row(row: Any) -> EdgeRoute:
    rate = None
    if row.rate_requests:
        rate = RateLimit(requests=row.rate_requests, per_seconds=row.rate_per_seconds or 1)
    return _from_row(EdgeRoute, row, rate=rate, claims=_pairs(row.claims))


def jwt_provider_from_row(row: Any) -> JwtProvider:
    return _from_row(JwtProvider, row, audiences=_json_tuple(row.audiences))


def edge_cert_from_row(row: Any) -> EdgeCert:
    return _from_row(EdgeCert, row, key_pem_encrypted=row.key_encrypted)


def load_mesh(conn: Connection) -> Mesh:
    row = conn.execute(select(schema.mesh).where(schema.mesh.c.id == 1)).first()
    if row is None:
        raise StoreError("the database has no mesh yet: run `meshgate init --trust-domain <domain>`")
    return mesh_from_row(row)


def trust_roots(conn: Connection) -> tuple[str, ...]:
    """PEMs of every root in the trust bundle (active, next and trust-only), oldest first.

    For an intermediate, the root is the last certificate of its chain.
    """
    rows = conn.execute(
        select(schema.ca_certs)
        .where(schema.ca_certs.c.status.in_(("active", "next", "trusted")))
        .order_by(schema.ca_certs.c.id)
    ).all()
    roots: list[str] = []
    for row in rows:
        pem = root_of(row.cert_pem, row.chain_pem or "")
        if pem not in roots:
            roots.append(pem)
    return tuple(roots)


def load_world(engine: Engine) -> World:
    with reading(engine) as conn:
        return load_world_conn(conn)


def load_world_conn(conn: Connection) -> World:
    s = schema

    def rows(table: Any, *order: str) -> Any:
        return conn.execute(select(table).order_by(*(table.c[c] for c in order)))

    return World(
        revision=current_revision(conn),
        mesh=load_mesh(conn),
        services={r.name: service_from_row(r) for r in rows(s.services, "name")},
        instances=tuple(instance_from_row(r) for r in rows(s.instances, "id")),
        proxies={r.name: proxy_from_row(r) for r in rows(s.proxies, "name")},
        policies=tuple(policy_from_row(r) for r in rows(s.policies, "seq")),
        routes=tuple(route_from_row(r) for r in rows(s.edge_routes, "gateway", "host", "prefix")),
        jwt_providers={r.name: jwt_provider_from_row(r) for r in rows(s.jwt_providers, "name")},
        edge_certs=tuple(edge_cert_from_row(r) for r in rows(s.edge_certs, "gateway", "host")),
        trust_roots_pem=trust_roots(conn),
    )
