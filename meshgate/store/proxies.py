"""Proxies: Envoy sidecars (of a service) and edge gateways, each with a join token.

    proxy, token = add_proxy(w, "orders-1", kind="sidecar", service="orders")
    proxy, token = rotate_token(w, "orders-1")
    revoke_proxy(w, "orders-1"); remove_proxy(w, "orders-1")
    credentials(conn)  # token hash -> Credential, for the xDS server

A token is shown once, when it is made; the store keeps only its SHA-256.
Revoking keeps the proxy (and its history) but refuses its token; the xDS
server closes its stream within a second.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from dataclasses import asdict, dataclass
from typing import Any

from sqlalchemy import Connection, insert, select

from meshgate.errors import AlreadyExists, Conflict, NotFound
from meshgate.model import DEFAULT_OUTBOUND_PORT, PROXY_KINDS, Proxy
from meshgate.store import schema
from meshgate.store import status as store_status
from meshgate.store.ports import check_outbound_port
from meshgate.store.rows import delete_row, record_row, update_row
from meshgate.store.txn import Write
from meshgate.store.world import proxy_from_row
from meshgate.validation import Checker

TOKEN_PREFIX = "mgt_"


def new_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True)
class Credential:
    proxy: str
    kind: str
    revoked: bool
    token_hash: str


def proxy_to_dict(proxy: Proxy, token_hash: str | None = None) -> dict[str, Any]:
    """The proxy as users see it (output). The token itself is never stored, only its SHA-256."""
    d = asdict(proxy)
    if token_hash is not None:
        d["token_sha256"] = token_hash
    return d


def validate_proxy(name: Any, kind: Any, service: Any, listen: Any, outbound_port: Any) -> None:
    v = Checker(f'proxy "{name}"')
    v.dns_label("name", name)
    if v.one_of("kind", kind, PROXY_KINDS):
        if kind == "sidecar":
            if service is None:
                v.add("service", "a sidecar needs --service (the service whose instance it fronts)")
            else:
                v.dns_label("service", service)
            if listen is not None:
                v.add("listen", "only edge gateways have a public listener (--listen)")
        else:
            if service is not None:
                v.add("service", "an edge gateway belongs to no service (drop --service)")
            if listen is not None:
                v.host_port("listen", listen)
    v.port("outbound_port", outbound_port)
    v.done()


def _row(conn: Connection, name: str) -> Any:
    row = conn.execute(select(schema.proxies).where(schema.proxies.c.name == name)).first()
    if row is None:
        raise NotFound(f'proxy "{name}" not found')
    return row


def get_proxy(conn: Connection, name: str) -> Proxy:
    return proxy_from_row(_row(conn, name))


def token_hash_of(conn: Connection, name: str) -> str:
    return str(_row(conn, name).token_hash)


def list_proxies(conn: Connection, kind: str | None = None) -> list[Proxy]:
    q = select(schema.proxies).order_by(schema.proxies.c.name)
    if kind is not None:
        q = q.where(schema.proxies.c.kind == kind)
    return [proxy_from_row(r) for r in conn.execute(q)]


def add_proxy(
    w: Write,
    name: Any,
    *,
    kind: Any,
    service: Any = None,
    listen: Any = None,
    outbound_port: Any = DEFAULT_OUTBOUND_PORT,
) -> tuple[Proxy, str]:
    """Create a proxy and its join token; returns both (the token is not kept)."""
    validate_proxy(name, kind, service, listen, outbound_port)
    conn = w.conn
    if conn.execute(select(schema.proxies.c.name).where(schema.proxies.c.name == name)).first():
        raise AlreadyExists(f'proxy "{name}" already exists')
    if service is not None and conn.execute(
        select(schema.services.c.name).where(schema.services.c.name == service)
    ).first() is None:
        raise NotFound(f'service "{service}" not found (add it first: meshgate service add {service})')
    if kind == "sidecar":
        check_outbound_port(conn, name, outbound_port)  # no duplicate local listener (ports.py)
    token = new_token()
    conn.execute(
        insert(schema.proxies).values(
            name=name, kind=kind, service=service, listen=listen, outbound_port=outbound_port,
            token_hash=hash_token(token), revoked=False, created_at=time.time(),
        )
    )
    record_row(w, schema.proxies, name, None)
    return get_proxy(conn, name), token


def rotate_token(w: Write, name: str) -> tuple[Proxy, str]:
    """A new join token; the old one stops working (its stream is closed)."""
    proxy = get_proxy(w.conn, name)
    if proxy.revoked:
        raise Conflict(f'proxy "{name}" is revoked; remove it and add it again for a new token')
    token = new_token()
    update_row(w, schema.proxies, name, token_hash=hash_token(token))
    return proxy, token


def revoke_proxy(w: Write, name: str) -> tuple[Proxy, bool]:
    """Refuse the proxy's token from now on; returns (proxy, whether it changed)."""
    proxy = get_proxy(w.conn, name)
    if proxy.revoked:
        return proxy, False
    update_row(w, schema.proxies, name, revoked=True)
    return get_proxy(w.conn, name), True


def remove_proxy(w: Write, name: str) -> Proxy:
    """Remove a proxy and its status rows. Refused while edge routes use the gateway;
    instances it registered stay (unlinked), recorded as updates."""
    proxy = get_proxy(w.conn, name)
    routes = [r.id for r in w.conn.execute(
        select(schema.edge_routes.c.id).where(schema.edge_routes.c.gateway == name).order_by(schema.edge_routes.c.id)
    )]
    if routes:
        raise Conflict(
            f'proxy "{name}" is the gateway of edge routes {", ".join(routes)}: remove them first '
            "(meshgate edge route remove <id>)"
        )
    i = schema.instances
    for inst_id in w.conn.execute(select(i.c.id).where(i.c.proxy == name).order_by(i.c.id)).scalars().all():
        update_row(w, i, inst_id, proxy=None)
    store_status.delete_for_proxy(w.conn, name)
    delete_row(w, schema.proxies, name)
    return proxy


def verify_token(conn: Connection, name: str, token: str) -> bool:
    """True when `token` is the proxy's current token (constant-time compare)."""
    return hmac.compare_digest(token_hash_of(conn, name), hash_token(token))


def credentials(conn: Connection) -> dict[str, Credential]:
    """Token hash -> credential, for the server to authenticate streams."""
    p = schema.proxies
    rows = conn.execute(select(p.c.name, p.c.kind, p.c.revoked, p.c.token_hash))
    return {r.token_hash: Credential(r.name, r.kind, bool(r.revoked), r.token_hash) for r in rows}
