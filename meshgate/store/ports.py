"""Ports sidecars listen on locally, which must not collide inside one Envoy.

A sidecar that may call a tcp service listens on 127.0.0.1:<the service's port>
(`outbound-tcp/<svc>`), and every sidecar has its outbound HTTP listener on
127.0.0.1:<outbound_port>. Two of these on one port in one Envoy is a
duplicate listener address, which Envoy refuses (the LDS update is NACKed).
Which tcp services a sidecar may call depends on policies, so the rule is
global and simple: a tcp service's port is unique among tcp services and is no
sidecar's outbound port.
"""

from __future__ import annotations

from sqlalchemy import Connection, select

from meshgate.errors import Conflict
from meshgate.store import schema

WHY = "a tcp service's port is a local listener (127.0.0.1) on every sidecar that calls it"


def check_tcp_service_port(conn: Connection, service: str, port: int) -> None:
    """Conflict when tcp service `service` on `port` would collide on some sidecar."""
    s, p = schema.services, schema.proxies
    other = conn.execute(
        select(s.c.name).where(s.c.protocol == "tcp", s.c.port == port, s.c.name != service).order_by(s.c.name)
    ).first()
    if other is not None:
        raise Conflict(f'service "{service}": port {port} is the port of tcp service "{other.name}" too; '
                       f"{WHY} (pick another port)")
    sidecar = conn.execute(
        select(p.c.name).where(p.c.kind == "sidecar", p.c.outbound_port == port).order_by(p.c.name)
    ).first()
    if sidecar is not None:
        raise Conflict(f'service "{service}": port {port} is the outbound port of sidecar "{sidecar.name}"; '
                       f"{WHY} (pick another port)")


def check_outbound_port(conn: Connection, proxy: str, port: int) -> None:
    """Conflict when sidecar `proxy`'s outbound port is a tcp service's port."""
    s = schema.services
    tcp = conn.execute(select(s.c.name).where(s.c.protocol == "tcp", s.c.port == port).order_by(s.c.name)).first()
    if tcp is not None:
        raise Conflict(f'proxy "{proxy}": outbound port {port} is the port of tcp service "{tcp.name}"; '
                       f"{WHY} (pick another --outbound-port)")
