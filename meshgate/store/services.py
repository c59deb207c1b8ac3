"""Services: name (DNS label), protocol, port, labels.

    svc = add_service(w, "orders", protocol="http", port=8080, labels={"team": "shop"})
    svc = update_service(w, "orders", port=8081, set_labels=["tier=1"], unset_labels=["team"])
    remove_service(w, "orders")
    get_service(conn, "orders"); list_services(conn)

Removing a service removes its instances with it (they are its replicas), but
is refused while proxies, policies or edge routes refer to it: the Conflict
names each of them, and the user removes or changes them first. There is no
cascade for those on purpose: silently dropping an allow rule or an edge route
changes who may call what.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterable, Mapping
from typing import Any

from sqlalchemy import Connection, delete, insert, select

from meshgate.errors import AlreadyExists, Conflict, NotFound
from meshgate.model import PROTOCOLS, Service
from meshgate.store import schema
from meshgate.store.ports import check_tcp_service_port
from meshgate.store.rows import read_row, record_row, update_row
from meshgate.store.txn import Write
from meshgate.store.world import service_from_row
from meshgate.validation import Checker

MAX_LABELS = 64
_LABEL_NAME = r"[A-Za-z0-9]([A-Za-z0-9._-]{0,61}[A-Za-z0-9])?"
_LABEL_KEY = re.compile(rf"^([a-z0-9]([a-z0-9.-]{{0,251}}[a-z0-9])?/)?{_LABEL_NAME}$")
_LABEL_VALUE = re.compile(rf"^({_LABEL_NAME})?$")


def service_to_dict(service: Service) -> dict[str, Any]:
    """The service as users see it (revisions, JSON/YAML output)."""
    return {
        "name": service.name,
        "protocol": service.protocol,
        "port": service.port,
        "labels": dict(service.labels),
    }


def _labels(v: Checker, labels: Mapping[str, Any] | Iterable[str] | None) -> dict[str, str]:
    """Labels from a mapping or from `KEY=VALUE` strings; each bad one is a violation."""
    if labels is None:
        return {}
    pairs: list[tuple[Any, Any]] = []
    if isinstance(labels, Mapping):
        pairs = list(labels.items())
    elif isinstance(labels, str):
        v.add("labels", f"{labels!r} is not a list of KEY=VALUE")
    else:
        for item in labels:
            if not isinstance(item, str) or "=" not in item:
                v.add("labels", f"{item!r} is not KEY=VALUE")
                continue
            key, _, value = item.partition("=")
            pairs.append((key, value))
    out: dict[str, str] = {}
    for key, value in pairs:
        if not isinstance(key, str) or not _LABEL_KEY.match(key):
            v.add(
                "labels",
                f"key {key!r} is not a label key (letters, digits, '.', '_', '-', up to 63, "
                "starting and ending with a letter or digit; optional DNS prefix and '/')",
            )
            continue
        if not isinstance(value, str) or not _LABEL_VALUE.match(value):
            v.add(
                f"labels.{key}",
                f"{value!r} is not a label value (letters, digits, '.', '_', '-', up to 63, "
                "starting and ending with a letter or digit, or empty)",
            )
            continue
        if key in out:
            v.add(f"labels.{key}", "given more than once")
            continue
        out[key] = value
    if len(out) > MAX_LABELS:
        v.add("labels", f"{len(out)} labels; at most {MAX_LABELS}")
    return out


def validate_service(
    name: Any, protocol: Any = "http", port: Any = 80, labels: Any = None
) -> Service:
    """A `Service` from raw values, or ValidationError listing every bad field.

    `labels` is a mapping or an iterable of `KEY=VALUE` strings.
    """
    v = Checker(f'service "{name}"')
    v.dns_label("name", name)
    v.one_of("protocol", protocol, PROTOCOLS)
    v.port("port", port)
    parsed = _labels(v, labels)
    v.done()
    return Service(
        name=name, protocol=protocol, port=port, labels=tuple(sorted(parsed.items()))
    )


def _row(conn: Connection, name: str) -> Any:
    return conn.execute(select(schema.services).where(schema.services.c.name == name)).first()


def get_service(conn: Connection, name: str) -> Service:
    row = _row(conn, name)
    if row is None:
        raise NotFound(f'service "{name}" not found')
    return service_from_row(row)


def list_services(conn: Connection) -> list[Service]:
    rows = conn.execute(select(schema.services).order_by(schema.services.c.name))
    return [service_from_row(r) for r in rows]


def add_service(
    w: Write, name: Any, protocol: Any = "http", port: Any = 80, labels: Any = None
) -> Service:
    svc = validate_service(name, protocol, port, labels)
    if _row(w.conn, svc.name) is not None:
        raise AlreadyExists(f'service "{svc.name}" already exists')
    if svc.protocol == "tcp":
        check_tcp_service_port(w.conn, svc.name, svc.port)  # no duplicate local listener (ports.py)
    now = time.time()
    w.conn.execute(
        insert(schema.services).values(
            name=svc.name,
            protocol=svc.protocol,
            port=svc.port,
            labels=json.dumps(dict(svc.labels), sort_keys=True),
            created_at=now,
            updated_at=now,
        )
    )
    record_row(w, schema.services, svc.name, None)
    return svc


def update_service(
    w: Write,
    name: str,
    *,
    protocol: Any = None,
    port: Any = None,
    set_labels: Any = None,
    unset_labels: Iterable[str] = (),
    replace_labels: Any = None,
) -> Service:
    """Change the given fields; None keeps a field.

    Labels: `replace_labels` (mapping or KEY=VALUE strings) replaces them all;
    otherwise `set_labels` adds or overwrites keys and `unset_labels` removes keys.
    Records a change only when something differs.
    """
    current = get_service(w.conn, name)
    v = Checker(f'service "{name}"')
    labels = dict(current.labels) if replace_labels is None else _labels(v, replace_labels)
    labels.update(_labels(v, set_labels))
    for key in unset_labels:
        if key not in labels:
            v.add("labels", f"no label {key!r} to remove")
        labels.pop(key, None)
    v.done()
    new = validate_service(
        name,
        current.protocol if protocol is None else protocol,
        current.port if port is None else port,
        labels,
    )
    if new == current:
        return current
    if new.protocol == "tcp":
        check_tcp_service_port(w.conn, name, new.port)  # no duplicate local listener (ports.py)
    update_row(w, schema.services, name, protocol=new.protocol, port=new.port,
               labels=json.dumps(dict(new.labels), sort_keys=True), updated_at=time.time())
    return new


def dependents(conn: Connection, name: str) -> list[str]:
    """What refers to service `name` (besides its instances), as `kind "id"` strings."""
    s = schema
    found = [
        f'proxy "{r.name}"'
        for r in conn.execute(
            select(s.proxies.c.name).where(s.proxies.c.service == name).order_by(s.proxies.c.name)
        )
    ]
    for r in conn.execute(
        select(s.policies.c.id, s.policies.c.target, s.policies.c.sources).order_by(
            s.policies.c.seq
        )
    ):
        if r.target == name or name in json.loads(r.sources or "[]"):
            found.append(f'policy "{r.id}"')
    found += [
        f'edge route "{r.id}"'
        for r in conn.execute(
            select(s.edge_routes.c.id)
            .where(s.edge_routes.c.service == name)
            .order_by(s.edge_routes.c.id)
        )
    ]
    return found


def remove_service(w: Write, name: str) -> Service:
    """Remove a service and its instances; Conflict while anything else refers to it."""
    svc = get_service(w.conn, name)
    users = dependents(w.conn, name)
    if users:
        raise Conflict(
            f'service "{name}" is still used by {", ".join(users)}: remove or change them first'
        )
    inst = schema.instances
    ids = list(w.conn.execute(select(inst.c.id).where(inst.c.service == name).order_by(inst.c.id)).scalars())
    gone = {i: read_row(w.conn, inst, i) for i in ids}
    before = read_row(w.conn, schema.services, name)
    w.conn.execute(delete(inst).where(inst.c.service == name))
    w.conn.execute(delete(schema.services).where(schema.services.c.name == name))
    for i, row in gone.items():
        record_row(w, inst, i, row)
    record_row(w, schema.services, name, before)
    return svc

