"""Loading one immutable `World` from the store, in one read transaction."""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy import Connection, Engine, select

from meshgate.model import (
    CaRecord,
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


def _pairs(raw: str) -> tuple[tuple[str, str], ...]:
    return tuple((str(k), str(v)) for k, v in json.loads(raw or "[]"))


def mesh_from_row(row: Any) -> Mesh:
    return Mesh(
        trust_domain=row.trust_domain,
        mtls_mode=row.mtls_mode,
        default_action=row.default_action,
        cert_ttl_seconds=row.cert_ttl_seconds,
        instance_grace_seconds=row.instance_grace_seconds,
    )


def service_from_row(row: Any) -> Service:
    labels = json.loads(row.labels or "{}")
    return Service(
        name=row.name,
        protocol=row.protocol,
        port=row.port,
        labels=tuple(sorted((str(k), str(v)) for k, v in labels.items())),
    )


def instance_from_row(row: Any) -> Instance:
    return Instance(
        id=row.id,
        service=row.service,
        address=row.address,
        inbound_port=row.inbound_port,
        app_port=row.app_port,
        weight=row.weight,
        healthy=bool(row.healthy),
        proxy=row.proxy,
        source=row.source,
    )


def proxy_from_row(row: Any) -> Proxy:
    return Proxy(
        name=row.name,
        kind=row.kind,
        service=row.service,
        listen=row.listen,
        outbound_port=row.outbound_port,
        revoked=bool(row.revoked),
        client_ca_pem=row.client_ca_pem,
        http_redirect_port=row.http_redirect_port,
    )


def policy_from_row(row: Any) -> Policy:
    return Policy(
        id=row.id,
        action=row.action,
        sources=tuple(json.loads(row.sources)),
        target=row.target,
        methods=tuple(json.loads(row.methods or "[]")),
        paths=tuple(PathMatch(kind=p["kind"], value=p["value"]) for p in json.loads(row.paths or "[]")),
        headers=_pairs(row.headers),
        grpc_methods=tuple(json.loads(row.grpc_methods or "[]")),
        claims=_pairs(row.claims),
        mode=row.mode,
        seq=row.seq,
    )


def route_from_row(row: Any) -> EdgeRoute:
    rate = None
    if row.rate_requests:
        rate = RateLimit(requests=row.rate_requests, per_seconds=row.rate_per_seconds or 1)
    return EdgeRoute(
        id=row.id,
        gateway=row.gateway,
        host=row.host,
        prefix=row.prefix,
        service=row.service,
        auth=row.auth,
        rate=rate,
        claims=_pairs(row.claims),
    )


def jwt_provider_from_row(row: Any) -> JwtProvider:
    return JwtProvider(
        name=row.name,
        issuer=row.issuer,
        audiences=tuple(json.loads(row.audiences or "[]")),
        jwks=row.jwks,
        jwks_uri=row.jwks_uri,
    )


def ca_from_row(row: Any) -> CaRecord:
    return CaRecord(
        id=row.id,
        cert_pem=row.cert_pem,
        chain_pem=row.chain_pem or "",
        key_encrypted=row.key_encrypted or b"",
        status=row.status,
        created_at=row.created_at,
    )


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
        pem = _root_of(row.cert_pem, row.chain_pem or "")
        if pem not in roots:
            roots.append(pem)
    return tuple(roots)


def _root_of(cert_pem: str, chain_pem: str) -> str:
    marker = "-----BEGIN CERTIFICATE-----"
    chain = [marker + part for part in chain_pem.split(marker)[1:]]
    return (chain[-1] if chain else cert_pem).strip() + "\n"


def load_world(engine: Engine) -> World:
    with reading(engine) as conn:
        return load_world_conn(conn)


def load_world_conn(conn: Connection) -> World:
    s = schema
    return World(
        revision=current_revision(conn),
        mesh=load_mesh(conn),
        services={
            r.name: service_from_row(r)
            for r in conn.execute(select(s.services).order_by(s.services.c.name))
        },
        instances=tuple(
            instance_from_row(r)
            for r in conn.execute(select(s.instances).order_by(s.instances.c.id))
        ),
        proxies={
            r.name: proxy_from_row(r)
            for r in conn.execute(select(s.proxies).order_by(s.proxies.c.name))
        },
        policies=tuple(
            policy_from_row(r) for r in conn.execute(select(s.policies).order_by(s.policies.c.seq))
        ),
        routes=tuple(
            route_from_row(r)
            for r in conn.execute(
                select(s.edge_routes).order_by(
                    s.edge_routes.c.gateway, s.edge_routes.c.host, s.edge_routes.c.prefix
                )
            )
        ),
        jwt_providers={
            r.name: jwt_provider_from_row(r)
            for r in conn.execute(select(s.jwt_providers).order_by(s.jwt_providers.c.name))
        },
        edge_certs=tuple(
            EdgeCert(
                gateway=r.gateway, host=r.host, cert_pem=r.cert_pem, key_pem_encrypted=r.key_encrypted
            )
            for r in conn.execute(
                select(s.edge_certs).order_by(s.edge_certs.c.gateway, s.edge_certs.c.host)
            )
        ),
        trust_roots_pem=trust_roots(conn),
    )
