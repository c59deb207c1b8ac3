"""Edge routes: which requests an edge gateway accepts, how it checks them, where they go.

    r = add_route(w, "public", host="api.example.com", prefix="/orders", service="orders",
                  auth="jwt:auth0", rate=parse_rate("100/s"), claims=["role=admin"])
    remove_route(w, r.id)
    list_routes(conn, gateway="public"); get_route(conn, r.id)

Authentication is always explicit: `jwt:<provider>`, `mtls` (a client
certificate from the gateway's client CA) or `none`. Claims narrow a route
further: for `jwt:` routes each `KEY=VALUE` is a top-level JWT claim that must
equal VALUE (or, for a list claim, contain it); for `mtls` routes the only key
is `san`, the client certificate's SAN. All conditions must hold.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterable
from typing import Any

from sqlalchemy import Connection, insert, select

from meshgate.durations import parse_duration
from meshgate.errors import AlreadyExists, Conflict, NotFound
from meshgate.model import EdgeRoute, Proxy, RateLimit
from meshgate.policy.paths import rule_path_problems
from meshgate.store import schema
from meshgate.store.rows import delete_row, first_free, record_row
from meshgate.store.txn import Write
from meshgate.store.world import proxy_from_row, route_from_row
from meshgate.validation import Checker, is_hostname

AUTH_MODES = ("jwt:<provider>", "mtls", "none")
MAX_RATE_REQUESTS = 1_000_000
MAX_RATE_SECONDS = 86400
MAX_CLAIMS = 20
MTLS_CLAIM = "san"
_RATE = re.compile(r"^\s*([0-9]+)\s*/\s*(\S+)\s*$")
_UNIT = {"s": 1, "sec": 1, "second": 1, "m": 60, "min": 60, "minute": 60, "h": 3600, "hour": 3600}


# -- gateways ------------------------------------------------------------------


def get_gateway(conn: Connection, name: str) -> Proxy:
    """The edge gateway `name`: NotFound, or Conflict when the proxy is a sidecar."""
    row = conn.execute(select(schema.proxies).where(schema.proxies.c.name == name)).first()
    if row is None:
        raise NotFound(f'edge gateway "{name}" not found (see `meshgate edge list`)')
    if row.kind != "edge":
        raise Conflict(f'proxy "{name}" is a sidecar, not an edge gateway')
    return proxy_from_row(row)


def list_gateways(conn: Connection) -> list[Proxy]:
    p = schema.proxies
    rows = conn.execute(select(p).where(p.c.kind == "edge").order_by(p.c.name))
    return [proxy_from_row(r) for r in rows]


# -- values ----------------------------------------------------------------------


def parse_rate(text: Any) -> RateLimit:
    """`100/s`, `600/m`, `5000/h`, `10/30s`: requests per period. ValueError otherwise."""
    if isinstance(text, RateLimit):
        return text
    m = _RATE.match(text) if isinstance(text, str) else None
    if not m:
        raise ValueError(f"{text!r} is not a rate: REQUESTS/PERIOD, e.g. 100/s, 600/m, 10/30s")
    period = m.group(2).lower()
    seconds = _UNIT.get(period)
    if seconds is None:
        seconds = parse_duration(period)  # ValueError names the text
    return RateLimit(requests=int(m.group(1)), per_seconds=seconds)


def format_rate(rate: RateLimit | None) -> str | None:
    if rate is None:
        return None
    unit = {1: "s", 60: "m", 3600: "h"}.get(rate.per_seconds)
    return f"{rate.requests}/{unit}" if unit else f"{rate.requests}/{rate.per_seconds}s"


def is_host_pattern(value: str) -> bool:
    """A host name, or `*.` followed by one (a wildcard for exactly one label)."""
    name = value[2:] if value.startswith("*.") else value
    return "." in name and is_hostname(name) and not name.endswith(".")


def host_matches(host: str, names: Iterable[str]) -> bool:
    """RFC 6125: exact, or a `*.` name covering exactly one leftmost label.

    A wildcard host (`*.example.com`) needs the same wildcard name.
    """
    host = host.lower()
    for name in names:
        if name == host:
            return True
        if name.startswith("*.") and not host.startswith("*."):
            label, _, rest = host.partition(".")
            if label and rest == name[2:]:
                return True
    return False


def route_to_dict(r: EdgeRoute) -> dict[str, Any]:
    """The route as users see it (JSON/YAML output)."""
    return {
        "id": r.id,
        "gateway": r.gateway,
        "host": r.host,
        "prefix": r.prefix,
        "service": r.service,
        "auth": r.auth,
        "rate": format_rate(r.rate),
        "claims": [f"{k}={v}" for k, v in r.claims],
    }


def _claims(v: Checker, items: Iterable[Any], auth: Any) -> tuple[tuple[str, str], ...]:
    out: list[tuple[str, str]] = []
    items = list(items)
    if len(items) > MAX_CLAIMS:
        v.add("claims", f"{len(items)} conditions; at most {MAX_CLAIMS}")
    for i, item in enumerate(items):
        field = f"claims[{i}]"
        if isinstance(item, (tuple, list)) and len(item) == 2:
            key, value = item
        elif isinstance(item, str) and "=" in item:
            key, _, value = item.partition("=")
        else:
            v.add(field, f"{item!r} is not KEY=VALUE")
            continue
        ok_key = isinstance(key, str) and 0 < len(key) <= 200 and all(
            c.isprintable() and not c.isspace() for c in key
        )
        ok_value = isinstance(value, str) and 0 < len(value) <= 500 and value.isprintable()
        if not ok_key:
            v.add(field, f"claim name {key!r} must be 1-200 printable characters without spaces")
        if not ok_value:
            v.add(field, f"value {value!r} must be 1-500 printable characters")
        if not (ok_key and ok_value):
            continue
        if auth == "none":
            v.add(field, "a route with --auth none has no identity to check claims against")
        elif auth == "mtls" and key != MTLS_CLAIM:
            v.add(field, f"{key!r}: an mtls route checks only the client certificate (san=VALUE)")
        if (key, value) in out:
            v.add(field, f"{key}={value} is given more than once")
            continue
        out.append((key, value))
    return tuple(out)


def validate_route(
    gateway: Any,
    host: Any,
    prefix: Any,
    service: Any,
    auth: Any,
    rate: Any = None,
    claims: Iterable[Any] = (),
    route_id: Any = None,
) -> EdgeRoute:
    """An `EdgeRoute` from raw values, or ValidationError listing every bad field.

    Existence (gateway, service, JWT provider) is checked by `add_route`.
    """
    v = Checker(f"edge route{' ' + repr(route_id) if route_id else ''}")
    v.dns_label("gateway", gateway)
    if route_id is not None:
        v.dns_label("id", route_id)
    if isinstance(host, str):
        host = host.lower()
    v.require(isinstance(host, str) and is_host_pattern(host), "host",
              f"{host!r} is not a host name (api.example.com) or wildcard (*.example.com)")
    if not isinstance(prefix, str) or not prefix:
        v.add("prefix", "required: a path prefix starting with '/' (e.g. /orders, or / for all)")
    else:
        for problem in rule_path_problems(prefix, "prefix"):
            v.add("prefix", problem)
    v.dns_label("service", service)
    if auth is None or auth == "":
        v.add("auth", "required: jwt:<provider>, mtls or none (authentication is always explicit)")
    elif not isinstance(auth, str) or not (
        auth in ("mtls", "none") or (auth.startswith("jwt:") and len(auth) > 4)
    ):
        v.add("auth", f"{auth!r} is not one of: {', '.join(AUTH_MODES)}")
    elif auth.startswith("jwt:"):
        v.dns_label("auth", auth[4:])
    parsed_rate = None
    if rate is not None:
        try:
            parsed_rate = parse_rate(rate)
        except ValueError as exc:
            v.add("rate", str(exc))
        else:
            if not 1 <= parsed_rate.requests <= MAX_RATE_REQUESTS:
                v.add("rate", f"{parsed_rate.requests} requests: must be 1-{MAX_RATE_REQUESTS}")
            if not 1 <= parsed_rate.per_seconds <= MAX_RATE_SECONDS:
                v.add("rate", f"period of {parsed_rate.per_seconds}s: must be 1s-1d")
    parsed_claims = _claims(v, claims, auth)
    v.done()
    return EdgeRoute(
        id=route_id or "",
        gateway=gateway,
        host=host,
        prefix=prefix,
        service=service,
        auth=auth,
        rate=parsed_rate,
        claims=parsed_claims,
    )


# -- routes ----------------------------------------------------------------------


def _route_row(conn: Connection, route_id: str) -> Any:
    t = schema.edge_routes
    return conn.execute(select(t).where(t.c.id == route_id)).first()


def get_route(conn: Connection, route_id: str) -> EdgeRoute:
    row = _route_row(conn, route_id)
    if row is None:
        raise NotFound(f'edge route "{route_id}" not found (see `meshgate edge route list`)')
    return route_from_row(row)


def list_routes(conn: Connection, gateway: str | None = None) -> list[EdgeRoute]:
    t = schema.edge_routes
    q = select(t).order_by(t.c.gateway, t.c.host, t.c.prefix)
    if gateway is not None:
        get_gateway(conn, gateway)
        q = q.where(t.c.gateway == gateway)
    return [route_from_row(r) for r in conn.execute(q)]


def add_route(
    w: Write,
    gateway: Any,
    host: Any,
    prefix: Any,
    service: Any,
    auth: Any,
    rate: Any = None,
    claims: Iterable[Any] = (),
    route_id: Any = None,
) -> EdgeRoute:
    """Add a route. NotFound for an unknown gateway, service or JWT provider;
    Conflict for an mtls route on a gateway without a client CA; AlreadyExists
    for the same gateway, host and prefix (or id) twice."""
    r = validate_route(gateway, host, prefix, service, auth, rate, claims, route_id)
    conn = w.conn
    gw = get_gateway(conn, r.gateway)
    svc = conn.execute(
        select(schema.services.c.protocol).where(schema.services.c.name == r.service)
    ).first()
    if svc is None:
        raise NotFound(f'service "{r.service}" not found (the route\'s --to)')
    if svc.protocol == "tcp":
        raise Conflict(f'service "{r.service}" speaks tcp: edge routes carry HTTP and gRPC only')
    if r.auth.startswith("jwt:"):
        from meshgate.store.jwt import get_jwt_provider

        get_jwt_provider(conn, r.auth[4:])
    if r.auth == "mtls" and not gw.client_ca_pem:
        raise Conflict(
            f'edge gateway "{gw.name}" has no client CA for mtls routes: set one with '
            f"`meshgate edge update {gw.name} --client-ca FILE`"
        )
    t = schema.edge_routes
    same = conn.execute(
        select(t.c.id).where(t.c.gateway == r.gateway, t.c.host == r.host, t.c.prefix == r.prefix)
    ).first()
    if same is not None:
        raise AlreadyExists(
            f'edge route "{same.id}" already routes {r.host}{r.prefix} on gateway "{r.gateway}"'
        )
    if r.id and _route_row(conn, r.id) is not None:
        raise AlreadyExists(f'edge route "{r.id}" already exists')
    route_id = r.id or first_free(conn, t.c.id, f"{r.gateway}-{r.service}"[:59].rstrip("-"))
    r = EdgeRoute(**{**r.__dict__, "id": route_id})
    conn.execute(
        insert(t).values(
            id=r.id,
            gateway=r.gateway,
            host=r.host,
            prefix=r.prefix,
            service=r.service,
            auth=r.auth,
            rate_requests=r.rate.requests if r.rate else None,
            rate_per_seconds=r.rate.per_seconds if r.rate else None,
            claims=json.dumps([list(c) for c in r.claims]),
            created_at=time.time(),
        )
    )
    record_row(w, t, r.id, None)
    return r


def remove_route(w: Write, route_id: str) -> EdgeRoute:
    r = get_route(w.conn, route_id)
    delete_row(w, schema.edge_routes, route_id)
    return r
