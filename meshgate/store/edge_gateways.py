"""Edge gateways: proxies of kind `edge`, with their public listener and client CA.

    gw, token = add_gateway(w, "public", listen="0.0.0.0:8443", http_redirect_port=8080,
                            client_ca_pem=open("clients-ca.pem").read(), now=time.time())
    gw = update_gateway(w, "public", client_ca_pem=..., http_redirect_port=None)
    remove_gateway(w, "public")      # refused while routes use it; its certificates go with it

The proxy row itself is made by `meshgate.store.proxies.add_proxy` (one
creation path for every proxy, with its join token); this module adds what is
particular to a gateway. Its mesh identity is `spiffe://<trust-domain>/edge/<name>`.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from sqlalchemy import select

from meshgate.ca import authority
from meshgate.errors import Conflict
from meshgate.model import Proxy
from meshgate.store import schema
from meshgate.store.edge import get_gateway
from meshgate.store.rows import update_row
from meshgate.store.txn import Write
from meshgate.validation import Checker, split_host_port

MAX_CLIENT_CA_BYTES = 1024 * 1024
_UNSET: Any = object()


def gateway_to_dict(gw: Proxy) -> dict[str, Any]:
    """Gateway settings as users see them (CA bundle summarized, never huge PEM text)."""
    d = {k: v for k, v in asdict(gw).items() if k in ("name", "listen", "http_redirect_port", "revoked")}
    d["client_ca"] = client_ca_summary(gw.client_ca_pem)
    return d


def client_ca_summary(pem: str | None) -> list[str]:
    if not pem:
        return []
    return [
        f"{c.subject.rfc4514_string()} (sha256 {authority.fingerprint(c)[:16]})"
        for c in authority.load_certs(pem)
    ]


def check_client_ca(v: Checker, pem: Any, now: float) -> str | None:
    """The bundle normalized (one PEM per certificate), or None after adding violations."""
    field = "client_ca"
    if not isinstance(pem, str) or not pem.strip():
        v.add(field, "empty: expected PEM CA certificates")
        return None
    if len(pem.encode()) > MAX_CLIENT_CA_BYTES:
        v.add(field, "larger than 1 MiB")
        return None
    try:
        certs = authority.load_certs(pem)
    except ValueError as exc:
        v.add(field, f"not readable PEM certificates ({exc})")
        return None
    if not certs:
        v.add(field, "no PEM certificate found (expected -----BEGIN CERTIFICATE-----)")
        return None
    ok = True
    for i, cert in enumerate(certs):
        who = cert.subject.rfc4514_string() or "(empty subject)"
        if not authority.is_ca(cert):
            v.add(f"{field}[{i}]", f"{who} is not a CA certificate (basicConstraints CA:true)")
            ok = False
        if now > cert.not_valid_after_utc.timestamp():
            v.add(f"{field}[{i}]", f"{who} expired on {cert.not_valid_after_utc:%Y-%m-%d}")
            ok = False
    return "".join(authority.cert_pem(c) for c in certs) if ok else None


def _check_redirect(v: Checker, port: Any, listen: Any) -> None:
    if port is None:
        return
    if v.port("http_redirect_port", port):
        parsed = split_host_port(listen) if isinstance(listen, str) else None
        if parsed is not None and parsed[1] == port:
            v.add("http_redirect_port", f"{port} is the HTTPS listen port; pick another")


def add_gateway(
    w: Write,
    name: Any,
    listen: Any,
    *,
    http_redirect_port: Any = None,
    client_ca_pem: Any = None,
    now: float,
) -> tuple[Proxy, str]:
    """Create the gateway (proxy of kind edge, join token) with its settings."""
    from meshgate.store.proxies import add_proxy

    v = Checker(f'edge gateway "{name}"')
    v.dns_label("name", name)
    if listen is None:
        v.add("listen", "required: HOST:PORT of the public HTTPS listener (e.g. 0.0.0.0:8443)")
    else:
        v.host_port("listen", listen)
    _check_redirect(v, http_redirect_port, listen)
    bundle = check_client_ca(v, client_ca_pem, now) if client_ca_pem is not None else None
    v.done()
    proxy, token = add_proxy(w, name, kind="edge", listen=listen)
    if http_redirect_port is not None or bundle is not None:
        proxy = _set(w, proxy, http_redirect_port=http_redirect_port, client_ca_pem=bundle)
    return proxy, token


def _set(w: Write, before: Proxy, **values: Any) -> Proxy:
    update_row(w, schema.proxies, before.name, **values)
    return get_gateway(w.conn, before.name)


def update_gateway(
    w: Write,
    name: str,
    *,
    listen: Any = _UNSET,
    http_redirect_port: Any = _UNSET,
    client_ca_pem: Any = _UNSET,
    now: float,
) -> Proxy:
    """Change the given settings; None clears the redirect port or the client CA.

    Clearing the client CA is refused while mtls routes need it.
    """
    cur = get_gateway(w.conn, name)
    v = Checker(f'edge gateway "{name}"')
    new_listen = cur.listen if listen is _UNSET else listen
    if listen is not _UNSET:
        v.host_port("listen", listen)
    new_redirect = cur.http_redirect_port if http_redirect_port is _UNSET else http_redirect_port
    _check_redirect(v, new_redirect, new_listen)
    bundle = cur.client_ca_pem
    if client_ca_pem is not _UNSET:
        bundle = None if client_ca_pem is None else check_client_ca(v, client_ca_pem, now)
    v.done()
    if bundle is None and cur.client_ca_pem:
        t = schema.edge_routes
        users = [r.id for r in w.conn.execute(
            select(t.c.id).where(t.c.gateway == name, t.c.auth == "mtls").order_by(t.c.id))]
        if users:
            raise Conflict(f'edge routes {", ".join(users)} authenticate with the client CA of '
                           f'"{name}": remove them first or give a new CA instead of clearing it')
    return _set(w, cur, listen=new_listen, http_redirect_port=new_redirect, client_ca_pem=bundle)


def remove_gateway(w: Write, name: str) -> Proxy:
    """Remove the gateway and its certificates; Conflict while routes use it."""
    from meshgate.store.edge_certs import list_certs, remove_cert
    from meshgate.store.proxies import remove_proxy

    gw = get_gateway(w.conn, name)
    t = schema.edge_routes
    routes = [r.id for r in w.conn.execute(select(t.c.id).where(t.c.gateway == name).order_by(t.c.id))]
    if routes:
        raise Conflict(f'edge gateway "{name}" still has routes {", ".join(routes)}: '
                       "remove them first (meshgate edge route remove <id>)")
    for cert in list_certs(w.conn, name):
        remove_cert(w, name, cert.host)
    remove_proxy(w, name)
    return gw
