"""Revisions: history, the net changes between two revisions, and rollback.

    list_revisions(conn, limit=20)         # newest first
    net_changes(conn, 5, 9)                # what changed from the state at 5 to the state at 9
    result = rollback(engine, 5, actor)    # a NEW revision restoring the state as of 5

Every revision records full rows (the convention in store/rows.py), so the
state as of revision N is, for every row changed after N, the `before` of its
first change after N. Rollback writes those rows back table by table, in
foreign-key order, as one new revision: nothing is rewritten or deleted from
history, and the servers push it like any other change.

Never rolled back (security and runtime state, listed in the result as notes):
- CA certificates and the rotation state (`ca_certs`, settings `ca.*`): a
  rollback must not bring back a retired CA or its key;
- a proxy's revocation and its join token (`proxies.revoked`, `token_hash`):
  a revoked proxy stays revoked, a rotated token stays rotated; a proxy that
  rollback brings back gets a NEW join token (shown once), never its old one
  (one that was revoked at that revision comes back revoked, without a token);
- instances that sidecars registered themselves (`source = proxy`): they
  follow the running sidecars, not history (kept; a CLI instance whose place
  one of them took is refused, not overwritten).
A restore that breaks a constraint (for example an instance address now taken
by a self-registered instance) is refused with the row named; nothing changes.
So is a result where a sidecar would listen twice on one address: a kept
self-registered instance on 127.0.0.1 whose inbound port is the outbound port
or a tcp service port brought back (store/ports.py), and a row holding an
IPv4-mapped IPv6 address where Envoy binds or connects (an instance's address, a
gateway's listen, a JWKS host), which revisions from before the store refused
one may hold (validation.mapped_ipv4).
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from sqlalchemy import Connection, Engine, Table, delete, func, insert, select, text, update
from sqlalchemy.exc import IntegrityError

from meshgate.errors import Conflict, NotFound
from meshgate.store import ports, schema
from meshgate.store.rows import from_json, key_clause, read_row, record_row, row_key
from meshgate.store.txn import current_revision, write
from meshgate.validation import mapped_ipv4, mapped_message, split_host_port

# Foreign-key order: a table refers only to tables before it. Writes go in this
# order, deletions in reverse.
ORDER: tuple[str, ...] = (
    "mesh", "services", "jwt_providers", "proxies", "instances", "policies", "edge_routes",
    "edge_certs", "settings",
)
PROXY_SECRET_COLUMNS = ("token_hash", "revoked")


@dataclass(frozen=True)
class Revision:
    id: int
    actor: str
    at: float
    summary: str
    changes: list[dict[str, Any]]

    def as_dict(self, with_changes: bool = False) -> dict[str, Any]:
        d: dict[str, Any] = {
            "revision": self.id,
            "at": dt.datetime.fromtimestamp(self.at, tz=dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "actor": self.actor,
            "summary": self.summary,
            "changes": len(self.changes),
        }
        if with_changes:
            d["changes"] = self.changes
        return d


def _revision(row: Any) -> Revision:
    return Revision(row.id, row.actor, row.at, row.summary, json.loads(row.changes))


def list_revisions(conn: Connection, limit: int | None = None) -> list[Revision]:
    r = schema.revisions
    q = select(r).order_by(r.c.id.desc())
    if limit is not None:
        q = q.limit(min(limit, 2**63 - 1))  # SQLite's largest integer: more means all
    return [_revision(x) for x in conn.execute(q)]


def _check_rev(conn: Connection, rev: int) -> None:
    latest = current_revision(conn)
    if not 1 <= rev <= latest:
        raise NotFound(f"revision {rev} not found: revisions are 1 to {latest} (see `meshgate history`)")


def net_changes(conn: Connection, a: int, b: int | None = None) -> list[dict[str, Any]]:
    """Changes taking the state as of revision `a` to the state as of `b` (default: now),
    one per row, in the order rows were first touched; backwards when b < a."""
    _check_rev(conn, a)
    if b is None:
        b = current_revision(conn)
    _check_rev(conn, b)
    low, high = min(a, b), max(a, b)
    r = schema.revisions
    net: dict[tuple[str, str], list[Any]] = {}
    rows = conn.execute(select(r).where(r.c.id > low, r.c.id <= high).order_by(r.c.id))
    for row in rows:
        for c in json.loads(row.changes):
            k = (c["kind"], c["key"])
            if k not in net:
                net[k] = [c["before"], c["after"], row.id]
            else:
                net[k][1], net[k][2] = c["after"], row.id
    out = []
    for (kind, key), (before, after, last) in net.items():
        if b < a:
            before, after = after, before
        if before == after:
            continue
        op = "add" if before is None else "remove" if after is None else "update"
        out.append({"kind": kind, "key": key, "op": op, "before": before, "after": after,
                    "revision": last})
    return out


@dataclass
class RollbackResult:
    revision: int | None
    target: int
    changes: list[dict[str, Any]] = field(default_factory=list)
    tokens: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def _table(kind: str) -> Table | None:
    return schema.metadata.tables.get(kind)


def _kept_back(change: dict[str, Any]) -> str | None:
    """Why a row is not rolled back, or None when it is."""
    kind, key = change["kind"], change["key"]
    if kind == "ca_certs":
        return f"ca_certs {key}: CA certificates are never rolled back (use `meshgate ca`)"
    if kind == "settings" and str(key).startswith("ca."):
        return f"settings {key}: the CA rotation state is never rolled back"
    if _table(kind) is None or kind not in ORDER:
        return f"{kind} {key}: not a table rollback restores"
    return None


def _fk_dependents(conn: Connection, table: Table, row: dict[str, Any]) -> list[tuple[Table, str, str]]:
    """(child table, child key, ondelete) of rows whose foreign keys point at `row`."""
    out = []
    for child in schema.metadata.sorted_tables:
        for fk in child.foreign_keys:
            if fk.column.table is not table:
                continue
            value = row[fk.column.name]
            for r in conn.execute(select(child).where(fk.parent == value)).mappings():
                out.append((child, row_key(child, dict(r)), (fk.ondelete or "RESTRICT").upper()))
    return out


def _mapped_address(table: str, row: dict[str, Any]) -> str | None:
    """`field: why` when the row holds an IPv4-mapped IPv6 address where Envoy binds or
    connects (validation.mapped_ipv4); revisions from before the store refused one may."""
    if table == "instances":
        plain = mapped_ipv4(str(row.get("address")))
        return f"address: {mapped_message(str(row.get('address')), plain)}" if plain else None
    if table == "proxies" and row.get("listen"):
        parsed = split_host_port(str(row["listen"]))
        plain = mapped_ipv4(parsed[0]) if parsed else None
        return f"listen: {mapped_message(str(row['listen']), f'{plain}:{parsed[1]}')}" \
            if plain and parsed else None
    if table == "jwt_providers" and row.get("jwks_uri"):
        try:
            host = urlsplit(str(row["jwks_uri"])).hostname or ""
        except ValueError:
            return None
        plain = mapped_ipv4(host)
        return f"jwks_uri: {mapped_message(host, plain)}" if plain else None
    return None


def _restore(w: Any, table: Table, key: str, target: dict[str, Any] | None, res: RollbackResult) -> None:
    conn = w.conn
    now = read_row(conn, table, key)
    if table.name == "instances":
        # Self-registered instances follow the running sidecars, not history. Ids can
        # be reused (SQLite), so one key may have been a CLI instance and then a runtime one.
        now_runtime = (now or {}).get("source") == "proxy"
        if target is not None and target.get("source") == "proxy":
            target = now if now_runtime or now is None else None
        if now_runtime and target != now:
            if target is None:
                res.notes.append(f"instances {key}: registered by its sidecar (runtime state, kept)")
                return
            raise Conflict(f"its id is now a self-registered instance of proxy "
                           f"{(now or {}).get('proxy')!r} (runtime state, never rolled back)")
        if now is None and target is None:
            return
    if target is not None and table.name == "proxies":
        if now is not None:  # revocation and token stay as they are now
            kept = [c for c in PROXY_SECRET_COLUMNS if now[c] != target.get(c)]
            if kept:
                res.notes.append(f"proxies {key}: {' and '.join(kept)} kept as they are now "
                                 "(revocation and tokens are never rolled back)")
            target = {**target, **{c: now[c] for c in PROXY_SECRET_COLUMNS}}
        else:
            from meshgate.store.proxies import hash_token, new_token

            token = new_token()
            if target.get("revoked"):  # revoked then: back revoked, with a token nobody has
                res.notes.append(f"proxies {key}: back revoked, as it was at that revision")
            else:
                res.tokens[key] = token
            target = {**target, "token_hash": hash_token(token)}
    if now == target:
        return
    if target is not None:
        mapped = _mapped_address(table.name, target)
        if mapped:
            raise Conflict(mapped)
    if target is None:
        for child, child_key, ondelete in _fk_dependents(conn, table, now or {}):
            if ondelete == "RESTRICT" or ondelete == "NO ACTION":
                raise Conflict(f"{child.name} {child_key!r} still refers to it and is not part "
                               "of the rollback")
            before_child = read_row(conn, child, child_key)
            if ondelete == "CASCADE":
                conn.execute(delete(child).where(key_clause(child, child_key)))
            else:  # SET NULL
                fk_cols = [fk.parent.name for fk in child.foreign_keys if fk.column.table is table]
                conn.execute(update(child).where(key_clause(child, child_key)).values(
                    **dict.fromkeys(fk_cols)))
            record_row(w, child, child_key, before_child)
        conn.execute(delete(table).where(key_clause(table, key)))
    elif now is None:
        conn.execute(insert(table).values(**from_json(table, target)))
    else:
        conn.execute(update(table).where(key_clause(table, key)).values(**from_json(table, target)))
    record_row(w, table, key, now)


def _fix_sequences(conn: Connection) -> None:
    """PostgreSQL: rows restored with their old ids must not collide with the next insert."""
    if conn.dialect.name != "postgresql":
        return
    for t in (schema.instances,):
        top = conn.execute(select(func.max(t.c.id))).scalar()
        if top is not None:
            conn.execute(text(f"SELECT setval(pg_get_serial_sequence('{t.name}', 'id'), :v)"), {"v": top})


def rollback(engine: Engine, rev: int, actor: str | None = None) -> RollbackResult:
    """One new revision that restores every row changed after `rev` to its state as of `rev`
    (minus what is never rolled back, see the module doc). NotFound for an unknown revision;
    Conflict, with the row named, when a restore breaks a constraint."""
    res = RollbackResult(revision=None, target=rev)
    with write(engine, f"rollback to revision {rev}", actor) as w:
        latest = current_revision(w.conn)
        _check_rev(w.conn, rev)
        if rev == latest:
            return res
        changes = net_changes(w.conn, latest, rev)  # backwards: `after` is the state as of rev
        wanted: list[dict[str, Any]] = []
        for c in changes:
            why = _kept_back(c)
            if why:
                res.notes.append(why)
            else:
                wanted.append(c)
        rank = {name: i for i, name in enumerate(ORDER)}
        removals = sorted((c for c in wanted if c["after"] is None), key=lambda c: -rank[c["kind"]])
        writes = sorted((c for c in wanted if c["after"] is not None), key=lambda c: rank[c["kind"]])
        for c in removals + writes:
            table = _table(c["kind"])
            assert table is not None
            try:
                with w.conn.begin_nested():
                    _restore(w, table, c["key"], c["after"], res)
            except IntegrityError as exc:
                raise Conflict(f"cannot restore {c['kind']} {c['key']!r} as of revision {rev}: "
                               f"{exc.orig}; nothing was changed") from exc
            except Conflict as exc:
                raise Conflict(f"cannot restore {c['kind']} {c['key']!r} as of revision {rev}: "
                               f"{exc}; nothing was changed") from exc
        # kept runtime state (self-registered instances) next to restored sidecars and
        # services can make a sidecar listen twice on one address (store/ports.py)
        clashes = ports.collisions(w.conn)
        if clashes:
            raise Conflict(f"cannot roll back to revision {rev}: {'; '.join(clashes)}; "
                           f"{ports.WHY_INBOUND}; nothing was changed")
        _fix_sequences(w.conn)
        res.changes = list(w.changes)
    res.revision = w.revision
    for name in res.tokens:
        res.notes.append(f"proxy {name!r} is back with a NEW join token (its old token stays invalid)")
    return res
