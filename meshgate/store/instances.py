"""Instances: the replicas of a service (address, inbound mTLS port, app port, weight).

    i = add_instance(w, "orders", "127.0.0.1", 15006, 8080, weight=2)
    i = add_instance(w, "orders", "10.0.0.7", 15006, 8080, proxy="orders-7", source="proxy")
    remove_instance(w, i.id)
    list_instances(conn, service="orders")

An instance is identified by its address and inbound port (unique); its
numeric `id` is what the CLI shows and takes, and its key in revisions (the
primary key, per the convention in store/rows.py).
"""

from __future__ import annotations

import time
from dataclasses import asdict
from typing import Any

from sqlalchemy import Connection, delete, insert, select

from meshgate.errors import AlreadyExists, Conflict, NotFound
from meshgate.model import Instance
from meshgate.store import schema
from meshgate.store.ports import check_inbound_port
from meshgate.store.rows import read_row, record_row
from meshgate.store.txn import Write
from meshgate.store.world import instance_from_row
from meshgate.validation import Checker, is_ip

MAX_WEIGHT = 10000
MAX_ID = 2**63 - 1  # SQLite INTEGER
SOURCES = ("cli", "proxy")


def instance_key(instance: Instance) -> str:
    """`address:inbound_port` (IPv6 in brackets): the instance's stable name."""
    return endpoint(instance.address, instance.inbound_port)


def endpoint(address: str, port: int) -> str:
    host = f"[{address}]" if ":" in address and is_ip(address) else address
    return f"{host}:{port}"


def instance_to_dict(instance: Instance) -> dict[str, Any]:
    """The instance as users see it (revisions, JSON/YAML output)."""
    return asdict(instance)


def validate_instance(
    service: Any,
    address: Any,
    inbound_port: Any,
    app_port: Any,
    weight: Any = 1,
    proxy: Any = None,
    source: Any = "cli",
) -> None:
    """ValidationError listing every bad field (existence is checked by add_instance)."""
    v = Checker(f'instance "{address}:{inbound_port}" of service "{service}"')
    v.dns_label("service", service)
    v.address("address", address)
    v.port("inbound_port", inbound_port)
    v.port("app_port", app_port)
    v.positive_int("weight", weight, MAX_WEIGHT)
    if proxy is not None:
        v.dns_label("proxy", proxy)
    v.one_of("source", source, SOURCES)
    v.done()


def _check_proxy(conn: Connection, proxy: str, service: str) -> None:
    """NotFound for an unknown proxy; Conflict unless it is a sidecar of `service`."""
    row = conn.execute(
        select(schema.proxies.c.kind, schema.proxies.c.service).where(
            schema.proxies.c.name == proxy
        )
    ).first()
    if row is None:
        raise NotFound(f'proxy "{proxy}" not found')
    if row.kind != "sidecar" or row.service != service:
        what = f'the sidecar of service "{row.service}"' if row.kind == "sidecar" else "an edge gateway"
        raise Conflict(
            f'proxy "{proxy}" is {what}; an instance of service "{service}" needs a '
            f'sidecar of service "{service}"'
        )


def add_instance(
    w: Write,
    service: Any,
    address: Any,
    inbound_port: Any,
    app_port: Any,
    weight: Any = 1,
    proxy: Any = None,
    source: Any = "cli",
) -> Instance:
    """Register one replica. NotFound for an unknown service or proxy; AlreadyExists
    when an instance at the same address and inbound port exists; Conflict when
    `proxy` already fronts another instance, or (a PortConflict naming
    `inbound_port`) when its inbound listener would take a port on 127.0.0.1 that
    `proxy` listens on locally (store/ports.py)."""
    validate_instance(service, address, inbound_port, app_port, weight, proxy, source)
    conn = w.conn
    if conn.execute(
        select(schema.services.c.name).where(schema.services.c.name == service)
    ).first() is None:
        raise NotFound(f'service "{service}" not found')
    if proxy is not None:
        _check_proxy(conn, proxy, service)
    taken = find_instance(conn, address, inbound_port)
    if taken is not None:
        raise AlreadyExists(
            f'instance {endpoint(address, inbound_port)} already exists '
            f'(id {taken.id}, service "{taken.service}")'
        )
    other = fronted_by(conn, proxy) if proxy is not None else None
    if other is not None:  # one inbound side per sidecar (translation, self-registration)
        raise Conflict(
            f'proxy "{proxy}" already fronts instance {other.id} '
            f'({endpoint(other.address, other.inbound_port)} of service "{other.service}"); '
            "a sidecar fronts one instance: remove that one first"
        )
    check_inbound_port(conn, proxy, address, inbound_port,
                       subject=f'instance {endpoint(address, inbound_port)} of service "{service}"')
    result = conn.execute(
        insert(schema.instances).values(
            service=service,
            address=address,
            inbound_port=inbound_port,
            app_port=app_port,
            weight=weight,
            healthy=True,
            proxy=proxy,
            source=source,
            created_at=time.time(),
        )
    )
    new_id = int(result.inserted_primary_key[0])  # type: ignore[index]
    inst = get_instance(conn, new_id)
    record_row(w, schema.instances, inst.id, None)
    return inst


def fronted_by(conn: Connection, proxy: str) -> Instance | None:
    """The instance sidecar `proxy` fronts (the one naming it), or None. A sidecar has one
    inbound side: translation and self-registration expect one instance per proxy."""
    i = schema.instances
    row = conn.execute(select(i).where(i.c.proxy == proxy).order_by(i.c.id)).first()
    return instance_from_row(row) if row is not None else None


def get_instance(conn: Connection, instance_id: int) -> Instance:
    row = conn.execute(
        select(schema.instances).where(schema.instances.c.id == instance_id)
    ).first()
    if row is None:
        raise NotFound(f"instance {instance_id} not found")
    return instance_from_row(row)


def find_instance(conn: Connection, address: str, inbound_port: int) -> Instance | None:
    """The instance at `address:inbound_port`, or None."""
    i = schema.instances
    row = conn.execute(
        select(i).where(i.c.address == address, i.c.inbound_port == inbound_port)
    ).first()
    return instance_from_row(row) if row is not None else None


def list_instances(conn: Connection, service: str | None = None) -> list[Instance]:
    """Every instance (of `service`, when given: NotFound if it does not exist)."""
    i = schema.instances
    query = select(i).order_by(i.c.service, i.c.id)
    if service is not None:
        if conn.execute(
            select(schema.services.c.name).where(schema.services.c.name == service)
        ).first() is None:
            raise NotFound(f'service "{service}" not found')
        query = query.where(i.c.service == service)
    return [instance_from_row(r) for r in conn.execute(query)]


def remove_instance(w: Write, instance_id: Any) -> Instance:
    """Remove one instance by id; returns what was removed."""
    v = Checker("instance")
    v.positive_int("id", instance_id, MAX_ID)  # beyond it SQLite cannot even look it up
    v.done()
    inst = get_instance(w.conn, instance_id)
    before = read_row(w.conn, schema.instances, inst.id)
    w.conn.execute(delete(schema.instances).where(schema.instances.c.id == instance_id))
    record_row(w, schema.instances, inst.id, before)
    return inst


def instance_counts(conn: Connection) -> dict[str, int]:
    """Number of instances per service name."""
    from sqlalchemy import func

    i = schema.instances
    rows = conn.execute(select(i.c.service, func.count()).group_by(i.c.service))
    return {service: int(n) for service, n in rows}
