"""proxy_status: what each proxy was sent and ACKed, per xDS type (server bookkeeping).

The xDS server writes these rows in batches (`write_rows`: one transaction
for many rows); they make no revisions. `status_rows` reads them for
`meshgate proxy status` / `proxy show`.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

from sqlalchemy import Engine, bindparam, delete, insert, or_, select, update

from meshgate.store import schema

TYPE_ORDER = ("cds", "eds", "sds", "lds", "rds")
COLUMNS = tuple(c.name for c in schema.proxy_status.columns)
_JSON = ("nack_resources", "nack_sources", "acked_roots")


def _ours_to_write(t: Any, newer: bool) -> Any:
    """Replicas: a row another replica holds for a newer stream is not ours to write.

    A proxy that moved from replica A to B must not be shown disconnected (or
    on A) by a late write from A: A may write over its own rows, rows nobody
    holds, and, when connected (`newer`), rows of an older stream (a dead
    replica's). Bound parameters `b_replica` and `b_since` (executemany).
    """
    mine = or_(t.c.replica.is_(None), t.c.replica == bindparam("b_replica"), t.c.connected.is_not(True))
    if not newer:
        return mine
    return or_(mine, t.c.connected_since.is_(None), t.c.connected_since <= bindparam("b_since"))


def write_rows(engine: Engine, rows: Iterable[Mapping[str, Any]]) -> int:
    """Upsert rows keyed by (proxy, type) in one transaction; returns how many were written
    (rows another replica holds for a newer stream, and rows of removed proxies, are not).

    Rows carry only the columns they set. Rows of the same shape go in one
    executemany, so a flush after 1,000 proxies ACKed is a handful of
    statements, not thousands (the flush thread then barely holds the GIL).
    """
    t = schema.proxy_status
    prepared = [{k: (json.dumps(v) if k in _JSON and v is not None else v) for k, v in row.items() if k in t.c}
                for row in rows]
    if not prepared:
        return 0
    names = sorted({r["proxy"] for r in prepared})
    n = 0
    with engine.begin() as conn:
        existing: set[tuple[str, str]] = set()
        alive: set[str] = set()
        for i in range(0, len(names), 500):
            chunk = names[i:i + 500]
            existing.update((r.proxy, r.type) for r in conn.execute(
                select(t.c.proxy, t.c.type).where(t.c.proxy.in_(chunk))))
            alive.update(conn.execute(
                select(schema.proxies.c.name).where(schema.proxies.c.name.in_(chunk))).scalars())
        updates: dict[tuple[tuple[str, ...], bool], list[dict[str, Any]]] = {}
        inserts: dict[tuple[str, ...], list[dict[str, Any]]] = {}
        for r in prepared:
            if (r["proxy"], r["type"]) in existing:
                newer = bool(r.get("connected")) and r.get("connected_since") is not None
                updates.setdefault((tuple(sorted(r)), newer), []).append(r)
            elif r["proxy"] in alive:  # the proxy may have been removed meanwhile: no orphan rows
                inserts.setdefault(tuple(sorted(r)), []).append(r)
        for (cols, newer), batch in updates.items():
            sets = [c for c in cols if c not in ("proxy", "type")]
            stmt = (update(t)
                    .where(t.c.proxy == bindparam("b_proxy"), t.c.type == bindparam("b_type"),
                           _ours_to_write(t, newer))
                    .values({c: bindparam("v_" + c) for c in sets}))
            params = [{"b_proxy": r["proxy"], "b_type": r["type"], "b_replica": r.get("replica"),
                       **({"b_since": r["connected_since"]} if newer else {}),
                       **{"v_" + c: r[c] for c in sets}} for r in batch]
            if len(params) == 1 or not conn.dialect.supports_sane_multi_rowcount:
                n += sum(conn.execute(stmt, p).rowcount for p in params)
            else:
                n += conn.execute(stmt, params).rowcount  # rows held by another replica are not counted
        for batch in inserts.values():
            conn.execute(insert(t), batch)
            n += len(batch)
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
