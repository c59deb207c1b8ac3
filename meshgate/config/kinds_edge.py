"""Handlers of the proxies and the edge: Gateway, Sidecar, EdgeRoute."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from sqlalchemy import Connection

from meshgate.config import schema as S
from meshgate.config.handler import Effects, Handler, drop_empty
from meshgate.errors import Conflict
from meshgate.model import Proxy
from meshgate.store.txn import Write


class GatewayHandler(Handler):
    spec = S.GATEWAY

    def current(self, conn: Connection) -> dict[str, Any]:
        from meshgate.store.proxies import list_proxies

        return {p.name: _config_proxy(p) for p in list_proxies(conn, kind="edge")}

    def desired(self, doc: dict[str, Any], conn: Connection) -> Proxy:
        # The CA bundle is normalized here (one PEM per certificate) so that an
        # unchanged file compares equal; every other field is checked by
        # add_gateway / update_gateway inside the transaction.
        import time

        from meshgate.store.edge_gateways import check_client_ca
        from meshgate.validation import Checker

        bundle = None
        if doc.get("client_ca") is not None:
            v = Checker(f'edge gateway "{doc.get("name")}"')
            bundle = check_client_ca(v, doc["client_ca"], time.time())
            v.done()
        return Proxy(name=doc["name"], kind="edge", listen=doc.get("listen"), client_ca_pem=bundle,
                     http_redirect_port=doc.get("http_redirect_port"))

    def fields(self, p: Proxy) -> dict[str, Any]:
        return drop_empty({"name": p.name, "listen": p.listen, "client_ca": p.client_ca_pem,
                            "http_redirect_port": p.http_redirect_port})

    def add(self, w: Write, p: Proxy, fx: Effects) -> None:
        import time

        from meshgate.store.edge_gateways import add_gateway

        _, token = add_gateway(w, p.name, p.listen, http_redirect_port=p.http_redirect_port,
                               client_ca_pem=p.client_ca_pem, now=time.time())
        fx.tokens[p.name] = token

    def update(self, w: Write, old: Proxy, new: Proxy, fx: Effects) -> None:
        import time

        from meshgate.store.edge_gateways import update_gateway

        update_gateway(w, new.name, listen=new.listen, http_redirect_port=new.http_redirect_port,
                       client_ca_pem=new.client_ca_pem, now=time.time())

    def remove(self, w: Write, p: Proxy, fx: Effects) -> None:
        from meshgate.store.edge_gateways import remove_gateway

        remove_gateway(w, p.name)


class SidecarHandler(Handler):
    spec = S.SIDECAR

    def current(self, conn: Connection) -> dict[str, Any]:
        from meshgate.store.proxies import list_proxies

        return {p.name: _config_proxy(p) for p in list_proxies(conn, kind="sidecar")}

    def desired(self, doc: dict[str, Any], conn: Connection) -> Proxy:
        from meshgate.model import DEFAULT_OUTBOUND_PORT
        from meshgate.store.proxies import validate_proxy

        port = doc.get("outbound_port", DEFAULT_OUTBOUND_PORT)
        validate_proxy(doc.get("name"), "sidecar", doc.get("service"), None, port)
        return Proxy(name=doc["name"], kind="sidecar", service=doc["service"], outbound_port=port)

    def fields(self, p: Proxy) -> dict[str, Any]:
        return {"name": p.name, "service": p.service, "outbound_port": p.outbound_port}

    def add(self, w: Write, p: Proxy, fx: Effects) -> None:
        from meshgate.store.proxies import add_proxy

        _, token = add_proxy(w, p.name, kind="sidecar", service=p.service, outbound_port=p.outbound_port)
        fx.tokens[p.name] = token

    def update(self, w: Write, old: Proxy, new: Proxy, fx: Effects) -> None:
        raise Conflict(
            f'sidecar "{new.name}": its service and outbound port are fixed while it exists '
            f"(its token and certificates are bound to them); remove it and add it again"
        )

    def remove(self, w: Write, p: Proxy, fx: Effects) -> None:
        from meshgate.store.proxies import remove_proxy

        remove_proxy(w, p.name)


def _config_proxy(p: Proxy) -> Proxy:
    """A proxy without its runtime state (revocation)."""
    return replace(p, revoked=False)


class EdgeRouteHandler(Handler):
    replaces = True
    spec = S.EDGE_ROUTE

    def key(self, obj: Any) -> str:
        return str(obj.id)

    def current(self, conn: Connection) -> dict[str, Any]:
        from meshgate.store.edge import list_routes

        return {r.id: r for r in list_routes(conn)}

    def desired(self, doc: dict[str, Any], conn: Connection) -> Any:
        from meshgate.store.edge import validate_route

        route_id = doc.get("id") or f"{doc.get('gateway')}-{doc.get('service')}"
        return validate_route(doc.get("gateway"), doc.get("host"), doc.get("prefix"), doc.get("service"),
                              doc.get("auth"), doc.get("rate"), doc.get("claims") or (), route_id)

    def fields(self, r: Any) -> dict[str, Any]:
        from meshgate.store.edge import format_rate

        return drop_empty({"id": r.id, "gateway": r.gateway, "host": r.host, "prefix": r.prefix,
                            "service": r.service, "auth": r.auth, "rate": format_rate(r.rate),
                            "claims": [f"{k}={v}" for k, v in r.claims]})

    def add(self, w: Write, r: Any, fx: Effects) -> None:
        from meshgate.store.edge import add_route

        add_route(w, r.gateway, r.host, r.prefix, r.service, r.auth, r.rate, r.claims, r.id)

    def remove(self, w: Write, r: Any, fx: Effects) -> None:
        from meshgate.store.edge import remove_route

        remove_route(w, r.id)
