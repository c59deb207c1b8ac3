"""Ports sidecars listen on locally, which must not collide inside one Envoy.

A sidecar that may call a tcp service listens on 127.0.0.1:<the service's port>
(`outbound-tcp/<svc>`), and every sidecar has its outbound HTTP listener on
127.0.0.1:<outbound_port>. Its inbound listener binds the address of the
instance it fronts (translate/listeners.py). Two of these on one address and
port in one Envoy is a duplicate listener address, which Envoy refuses (the LDS
update is NACKed). Which tcp services a sidecar may call depends on policies,
so the rules are global and simple:
- a tcp service's port is unique among tcp services and is no sidecar's outbound port;
- an instance on 127.0.0.1 that a sidecar fronts has an inbound port that is
  neither that sidecar's outbound port nor any tcp service's port.

Only the same address twice collides: next to 127.0.0.1:P, an inbound listener
on 0.0.0.0:P (a host name instance binds there), ::1:P or 127.0.0.2:P is
accepted (Envoy 1.40 binds listeners with SO_REUSEPORT; measured).

Each refusal is a `PortConflict` (a Conflict, exit 1) naming the input field,
so `meshgate apply` reports it at that field's line.
"""

from __future__ import annotations

import ipaddress
from typing import Any

from sqlalchemy import Connection, select

from meshgate.errors import Conflict
from meshgate.store import schema

LOOPBACK = "127.0.0.1"  # where a sidecar's local (outbound) listeners bind
WHY = "a tcp service's port is a local listener (127.0.0.1) on every sidecar that calls it"
WHY_INBOUND = ("the sidecar's inbound listener would bind 127.0.0.1 on a port it already listens on "
               "locally (two listeners on one address: Envoy refuses the listener update)")


class PortConflict(Conflict):
    """A port that would be two listeners on one address in one Envoy.

    `field` is the input field at fault (`inbound_port`, `port`, `outbound_port`),
    `reason` what is wrong with its value (`15001 is the outbound port of ...`);
    `str(exc)` adds the object and the CLI's advice: `instance ...: inbound_port
    15001 is ... (pick another --inbound-port)`."""

    def __init__(self, subject: str, field: str, reason: str, option: str) -> None:
        self.field = field
        self.reason = reason
        super().__init__(f"{subject}: {field} {reason} (pick another {option})")


def binds_loopback(address: str) -> bool:
    """True when a sidecar's inbound listener for an instance at `address` binds
    127.0.0.1, where its local listeners are (a host name binds 0.0.0.0)."""
    try:
        return ipaddress.ip_address(address) == ipaddress.ip_address(LOOPBACK)
    except ValueError:
        return False


def local_listener(conn: Connection, proxy: str, port: int) -> str | None:
    """What sidecar `proxy` may listen on at 127.0.0.1:`port` besides its inbound
    side (described for a message), or None."""
    p, s = schema.proxies, schema.services
    outbound = conn.execute(select(p.c.outbound_port).where(p.c.name == proxy, p.c.kind == "sidecar")).scalar()
    if outbound == port:
        return f'the outbound port of sidecar "{proxy}"'
    tcp = conn.execute(select(s.c.name).where(s.c.protocol == "tcp", s.c.port == port).order_by(s.c.name)).scalar()
    if tcp is not None:
        return f'the port of tcp service "{tcp}" (its local listener outbound-tcp/{tcp} on sidecar "{proxy}")'
    return None


def check_inbound_port(conn: Connection, proxy: Any, address: Any, port: Any, *,
                       subject: str, field: str = "inbound_port", option: str = "--inbound-port") -> None:
    """PortConflict when sidecar `proxy`, fronting an instance at `address`:`port`,
    would listen twice on one address; nothing to check without a proxy."""
    if proxy is None or not isinstance(address, str) or not binds_loopback(address):
        return
    owner = local_listener(conn, proxy, port)
    if owner is not None:
        raise PortConflict(subject, field, f"{port} on {LOOPBACK} is {owner}; {WHY_INBOUND}", option)


def check_tcp_service_port(conn: Connection, service: str, port: int) -> None:
    """PortConflict when tcp service `service` on `port` would collide on some sidecar."""
    s, p, i = schema.services, schema.proxies, schema.instances
    subject = f'service "{service}"'
    other = conn.execute(
        select(s.c.name).where(s.c.protocol == "tcp", s.c.port == port, s.c.name != service).order_by(s.c.name)
    ).first()
    if other is not None:
        raise PortConflict(subject, "port", f'{port} is the port of tcp service "{other.name}" too; {WHY}',
                           "--port")
    sidecar = conn.execute(
        select(p.c.name).where(p.c.kind == "sidecar", p.c.outbound_port == port).order_by(p.c.name)
    ).first()
    if sidecar is not None:
        raise PortConflict(subject, "port", f'{port} is the outbound port of sidecar "{sidecar.name}"; {WHY}',
                           "--port")
    for row in conn.execute(
        select(i.c.id, i.c.address, i.c.proxy).where(i.c.inbound_port == port, i.c.proxy.is_not(None)).order_by(i.c.id)
    ):
        if binds_loopback(row.address):
            raise PortConflict(subject, "port",
                               f'{port} is the inbound port of instance {row.id} ({LOOPBACK}:{port}), '
                               f'which sidecar "{row.proxy}" fronts; {WHY}', "--port")


def check_outbound_port(conn: Connection, proxy: str, port: int) -> None:
    """PortConflict when sidecar `proxy`'s outbound port is a tcp service's port.
    (A new sidecar fronts no instance yet, and an outbound port never changes
    but by a rollback, which checks `collisions`.)"""
    s = schema.services
    tcp = conn.execute(select(s.c.name).where(s.c.protocol == "tcp", s.c.port == port).order_by(s.c.name)).first()
    if tcp is not None:
        raise PortConflict(f'proxy "{proxy}"', "outbound_port", f'{port} is the port of tcp service '
                           f'"{tcp.name}"; {WHY}', "--outbound-port")


def collisions(conn: Connection) -> list[str]:
    """Every instance on 127.0.0.1 whose inbound port is a local listener of the
    sidecar fronting it, described (a rollback checks the state it makes)."""
    i = schema.instances
    out = []
    for row in conn.execute(select(i.c.id, i.c.address, i.c.inbound_port, i.c.proxy)
                            .where(i.c.proxy.is_not(None)).order_by(i.c.id)):
        if binds_loopback(row.address):
            owner = local_listener(conn, row.proxy, row.inbound_port)
            if owner is not None:
                out.append(f"instance {row.id} ({LOOPBACK}:{row.inbound_port}, fronted by sidecar "
                           f'"{row.proxy}"): inbound_port {row.inbound_port} is {owner}')
    return out
