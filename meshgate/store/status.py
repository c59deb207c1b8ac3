"""proxy_status: what each proxy was sent and ACKed, per xDS type (server bookkeeping).

The xDS server writes these rows in batches (`write_rows`: one transaction
for many rows); they make no revisions. `status_rows` reads them for
`meshgate proxy status` / `proxy show`.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

from sqlalchemy import Engine, delete, insert, or_, select, update

from meshgate.store import schema

TYPE_ORDER = ("cds", "eds", "sds", "lds", "rds")
COLUMNS = tuple(c.name for c in schema.proxy_status.columns)
_JSON = ("nack_resources", "nack_sources", "acked_roots")


def _held_elsewhere(t: Any, values: Mapping[str, Any]) -> Any:
    """Replicas: a row another replica holds for a newer stream is not ours to write.

    A proxy that moved from replica A to B must not be shown disconnected (or
    on A) by a late write from A: A may write over its own rows, rows nobody
    holds, and, when connected, rows of an older stream (a dead replica's).
    """
    replica = values.get("replica")
    mine = or_(t.c.replica.is_(None), t.c.replica == replica, t.c.connected.is_not(True))
    if not values.get("connected") or values.get("connected_since") is None:
        return mine
    return or_(mine, t.c.connected_since.is_(None),
               t.c.connected_since <= values["connected_since"])


def write_rows(engine: Engine, rows: Iterable[Mapping[str, Any]]) -> int:
    """Upsert rows keyed by (proxy, type) in one transaction; returns how many written."""
    t = schema.proxy_status
    n = 0
    with engine.begin() as conn:
        for row in rows:
            values = {k: (json.dumps(v) if k in _JSON and v is not None else v)
                      for k, v in row.items() if k in t.c}
            key = (t.c.proxy == values["proxy"]) & (t.c.type == values["type"])
            rest = {k: v for k, v in values.items() if k not in ("proxy", "type")}
            if conn.execute(update(t).where(key, _held_elsewhere(t, values)).values(**rest)).rowcount:
                n += 1
            elif conn.execute(select(t.c.proxy).where(key)).first() is not None:
                continue  # another replica holds this proxy's stream now
            # the proxy may have been removed meanwhile: no orphan rows
            elif conn.execute(
                select(schema.proxies.c.name).where(schema.proxies.c.name == values["proxy"])
            ).first() is not None:
                conn.execute(insert(t).values(**values))
                n += 1
    return n


def mark_replica_disconnected(engine: Engine, replica: str) -> None:
    """At server start: rows a previous run of this replica left `connected` are not."""
    t = schema.proxy_status
    with engine.begin() as conn:
        conn.execute(update(t).where(t.c.replica == replica, t.c.connected.is_(True)).values(connected=False))


def delete_for_proxy(conn: Any, proxy: str) -> None:
    conn.execute(delete(schema.proxy_status).where(schema.proxy_status.c.proxy == proxy))


def _decode(row: Any) -> dict[str, Any]:
    d = dict(row._mapping)
    for k in _JSON:
        if k in d and d[k] is not None:
            try:
                d[k] = json.loads(d[k])
            except ValueError:
                pass
    d["connected"] = bool(d.get("connected"))
    return d


def status_rows(conn: Any, proxy: str | None = None) -> list[dict[str, Any]]:
    """Rows (JSON columns decoded) in proxy then push order."""
    t = schema.proxy_status
    q = select(t)
    if proxy is not None:
        q = q.where(t.c.proxy == proxy)
    rows = [_decode(r) for r in conn.execute(q)]
    order = {k: i for i, k in enumerate(TYPE_ORDER)}
    rows.sort(key=lambda r: (r["proxy"], order.get(r["type"], 99)))
    return rows


def in_sync(row: Mapping[str, Any]) -> bool:
    """The proxy runs what it was last sent."""
    return row.get("sent_version") is not None and row.get("sent_version") == row.get("acked_version")


def nack_open(row: Mapping[str, Any]) -> bool:
    """The last NACK has not been followed by an ACK."""
    if row.get("nack_at") is None:
        return False
    acked_at = row.get("acked_at")
    return acked_at is None or acked_at < row["nack_at"]
