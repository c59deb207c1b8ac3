"""proxy_status: what each proxy was sent and ACKed, per xDS type (server bookkeeping).

The xDS server writes these rows in batches (`write_rows`: one transaction
for many rows); they make no revisions. `status_rows` reads them for
`meshgate proxy status` / `proxy show`.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

from sqlalchemy import Engine, delete, insert, select, update

from meshgate.store import schema

TYPE_ORDER = ("cds", "eds", "sds", "lds", "rds")
COLUMNS = tuple(c.name for c in schema.proxy_status.columns)
_JSON = ("nack_resources", "nack_sources", "acked_roots")


def write_rows(engine: Engine, rows: Iterable[Mapping[str, Any]]) -> int:
    """Upsert rows keyed by (proxy, type) in one transaction; returns how many."""
    t = schema.proxy_status
    n = 0
    with engine.begin() as conn:
        for row in rows:
            values = {k: (json.dumps(v) if k in _JSON and v is not None else v)
                      for k, v in row.items() if k in t.c}
            key = (t.c.proxy == values["proxy"]) & (t.c.type == values["type"])
            rest = {k: v for k, v in values.items() if k not in ("proxy", "type")}
            if conn.execute(update(t).where(key).values(**rest)).rowcount == 0:
                # the proxy may have been removed meanwhile: no orphan rows
                if conn.execute(
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
