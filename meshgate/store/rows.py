"""Full table rows as JSON values: what a revision records and a rollback restores.

The revision CONVENTION (every `w.record` follows it, so history, diff and
rollback work generically, table by table):
- `kind` is the table name (`services`, `instances`, `proxies`, ...);
- `key` is the primary key as a string, composite keys joined with "/";
- `before` / `after` are the full rows (column -> value), None when absent;
  bytes are base64 text, JSON-text columns stay text.

Repositories call `record_row` after they changed a row:

    before = read_row(w.conn, schema.services, "orders")
    w.conn.execute(update(schema.services)...)
    record_row(w, schema.services, "orders", before)   # reads `after`, picks the op

or, for one row by its key, `update_row(w, schema.services, "orders", port=8081)` and
`delete_row(w, schema.services, "orders")`, which do both.

Redacted columns (`REDACTED`) are recorded as a marker instead of their value:
a CA's sealed private key never lands in the revision log (CA rows are not
restored by rollback, see meshgate/store/revisions.py).
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from typing import Any

from sqlalchemy import Connection, LargeBinary, Table, and_, delete, select, update
from sqlalchemy.sql.elements import ColumnElement

from meshgate.store.txn import Write

KEY_SEPARATOR = "/"
REDACTED_MARK = "(redacted)"
# Edge host keys (`edge_certs.key_encrypted`) are recorded sealed, as stored (AES-GCM
# under the store key), so a rollback can bring a removed certificate back whole.
REDACTED: dict[str, frozenset[str]] = {"ca_certs": frozenset({"key_encrypted"})}


def _pk_columns(table: Table) -> list[Any]:
    return list(table.primary_key.columns)


def row_key(table: Table, row: Mapping[str, Any]) -> str:
    """The convention's key of `row`: its primary key values joined with "/"."""
    return KEY_SEPARATOR.join(str(row[c.name]) for c in _pk_columns(table))


def key_values(table: Table, key: str | int | Mapping[str, Any]) -> dict[str, Any]:
    """Primary-key column -> value, from a key string (or a scalar for one-column keys)."""
    cols = _pk_columns(table)
    if isinstance(key, Mapping):
        return {c.name: key[c.name] for c in cols}
    parts = [key] if len(cols) == 1 else str(key).split(KEY_SEPARATOR, len(cols) - 1)
    if len(parts) != len(cols):
        raise ValueError(f"{table.name}: key {key!r} does not name {len(cols)} columns")
    out: dict[str, Any] = {}
    for col, part in zip(cols, parts, strict=True):
        out[col.name] = int(part) if col.type.python_type is int else str(part)
    return out


def key_clause(table: Table, key: str | int | Mapping[str, Any]) -> ColumnElement[bool]:
    values = key_values(table, key)
    return and_(*(table.c[name] == value for name, value in values.items()))


def to_json(table: Table, row: Mapping[str, Any]) -> dict[str, Any]:
    """Every column of `row` as a JSON value (bytes as base64, redacted columns marked)."""
    hidden = REDACTED.get(table.name, frozenset())
    out: dict[str, Any] = {}
    for col in table.columns:
        value = row[col.name]
        if col.name in hidden and value is not None:
            value = REDACTED_MARK
        elif isinstance(value, (bytes, bytearray, memoryview)):
            value = base64.b64encode(bytes(value)).decode("ascii")
        elif isinstance(col.type, LargeBinary) and value is not None:
            value = base64.b64encode(bytes(value)).decode("ascii")
        out[col.name] = value
    return out


def from_json(table: Table, data: Mapping[str, Any]) -> dict[str, Any]:
    """Column values for an INSERT/UPDATE from a recorded row (base64 back to bytes)."""
    out: dict[str, Any] = {}
    for col in table.columns:
        if col.name not in data:
            continue
        value = data[col.name]
        if isinstance(col.type, LargeBinary) and isinstance(value, str):
            value = base64.b64decode(value)
        out[col.name] = value
    return out


def read_row(conn: Connection, table: Table, key: str | int | Mapping[str, Any]) -> dict[str, Any] | None:
    """The row with primary key `key` as recorded in revisions, or None."""
    row = conn.execute(select(table).where(key_clause(table, key))).mappings().first()
    return None if row is None else to_json(table, dict(row))


def record_row(
    w: Write, table: Table, key: str | int | Mapping[str, Any], before: dict[str, Any] | None
) -> dict[str, Any] | None:
    """Record the change of one row for the revision: reads the row as it is now
    (`after`), derives the op (add, update, remove) and records nothing when the
    row did not change. Returns `after`."""
    after = read_row(w.conn, table, key)
    if before == after:
        return after
    op = "add" if before is None else "remove" if after is None else "update"
    text_key = key if isinstance(key, str) else row_key(table, key_values(table, key))
    w.record(table.name, text_key, op, before=before, after=after)
    return after


def update_row(w: Write, table: Table, key: str | int | Mapping[str, Any], **values: Any) -> None:
    """UPDATE the row with primary key `key` and record the change (none if nothing differs)."""
    before = read_row(w.conn, table, key)
    w.conn.execute(update(table).where(key_clause(table, key)).values(**values))
    record_row(w, table, key, before)


def delete_row(w: Write, table: Table, key: str | int | Mapping[str, Any]) -> None:
    """DELETE the row with primary key `key` and record its removal."""
    before = read_row(w.conn, table, key)
    w.conn.execute(delete(table).where(key_clause(table, key)))
    record_row(w, table, key, before)


def first_free(conn: Connection, column: Any, base: str) -> str:
    """`base` if no row of `column`'s table has it, else the first free `base-2`, `base-3`, ...
    (deterministic, readable ids)."""
    taken = set(conn.execute(select(column).where(column.like(base + "%"))).scalars())
    if base not in taken:
        return base
    n = 2
    while f"{base}-{n}" in taken:
        n += 1
    return f"{base}-{n}"
