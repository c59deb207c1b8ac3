"""CA rows (`ca_certs`) and the rotation state (`settings` key `ca.rotation`).

Every change goes through a `Write` and records a revision of kind "ca_certs"
(a certificate row) or "settings" (key `ca.rotation`: the phase), full rows per
the convention in store/rows.py. Revisions never carry key material: the sealed
CA key is recorded as "(redacted)" (rollback never restores CA rows).
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, insert, select, update

from meshgate.store import schema
from meshgate.store.rows import read_row, record_row, update_row
from meshgate.store.txn import Write

ROTATION_KEY = "ca.rotation"
CROSS_KEY = "ca.cross"
STATUSES = ("active", "next", "trusted", "retired")
IN_BUNDLE = ("active", "next", "trusted")


@dataclass(frozen=True)
class CaRow:
    id: int
    cert_pem: str
    chain_pem: str
    key_encrypted: bytes | None
    status: str
    fingerprint: str
    not_after: float
    created_at: float

    @property
    def root_pem(self) -> str:
        from meshgate.ca.authority import root_of

        return root_of(self.cert_pem, self.chain_pem)

    @property
    def root_fingerprint(self) -> str:
        from meshgate.ca.authority import fingerprint

        return fingerprint(self.root_pem)

    def view(self) -> dict[str, Any]:
        """The row as users see it (history, `ca show`): no key material."""
        from meshgate.ca.authority import load_certs

        cert = load_certs(self.cert_pem)[0]
        return {
            "id": self.id,
            "status": self.status,
            "role": "intermediate" if self.chain_pem.strip() else "root",
            "subject": cert.subject.rfc4514_string(),
            "fingerprint": self.fingerprint,
            "root_fingerprint": self.root_fingerprint,
            "not_after": _iso(self.not_after),
            "can_sign": self.key_encrypted is not None,
        }


def _iso(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, tz=dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _row(r: Any) -> CaRow:
    return CaRow(
        id=r.id,
        cert_pem=r.cert_pem,
        chain_pem=r.chain_pem or "",
        key_encrypted=bytes(r.key_encrypted) if r.key_encrypted is not None else None,
        status=r.status,
        fingerprint=r.fingerprint,
        not_after=r.not_after,
        created_at=r.created_at,
    )


def list_cas(conn: Connection, statuses: tuple[str, ...] = STATUSES) -> list[CaRow]:
    t = schema.ca_certs
    rows = conn.execute(select(t).where(t.c.status.in_(statuses)).order_by(t.c.id))
    return [_row(r) for r in rows]


def get_ca(conn: Connection, ca_id: int) -> CaRow | None:
    t = schema.ca_certs
    r = conn.execute(select(t).where(t.c.id == ca_id)).first()
    return None if r is None else _row(r)


def insert_ca(
    w: Write,
    *,
    cert_pem: str,
    chain_pem: str,
    key_encrypted: bytes | None,
    status: str,
    now: float,
) -> CaRow:
    from meshgate.ca.authority import fingerprint, load_certs

    cert = load_certs(cert_pem)[0]
    values = {
        "cert_pem": cert_pem,
        "chain_pem": chain_pem,
        "key_encrypted": key_encrypted,
        "status": status,
        "fingerprint": fingerprint(cert),
        "not_after": cert.not_valid_after_utc.timestamp(),
        "created_at": now,
    }
    result = w.conn.execute(insert(schema.ca_certs).values(**values))
    row = get_ca(w.conn, int(result.inserted_primary_key[0]))  # type: ignore[index]
    assert row is not None
    record_row(w, schema.ca_certs, row.id, None)
    return row


def set_status(w: Write, row: CaRow, status: str) -> CaRow:
    if row.status == status:
        return row
    update_row(w, schema.ca_certs, row.id, status=status)
    new = get_ca(w.conn, row.id)
    assert new is not None
    return new


def rotation_state(conn: Connection, *, for_update: bool = False) -> dict[str, Any]:
    """The rotation state; {"phase": "idle"} when none was ever started."""
    t = schema.settings
    q = select(t.c.value).where(t.c.key == ROTATION_KEY)
    if for_update and conn.dialect.name != "sqlite":
        q = q.with_for_update()  # SQLite writers are serialized by BEGIN IMMEDIATE
    raw = conn.execute(q).scalar()
    return json.loads(raw) if raw else {"phase": "idle"}


def _set_setting(w: Write, key: str, data: Any, now: float) -> None:
    t = schema.settings
    before = read_row(w.conn, t, key)
    value = json.dumps(data, sort_keys=True)
    if before is not None:
        w.conn.execute(update(t).where(t.c.key == key).values(value=value, updated_at=now))
    else:
        w.conn.execute(insert(t).values(key=key, value=value, updated_at=now))
    record_row(w, t, key, before)


def set_rotation_state(w: Write, state: dict[str, Any], now: float) -> None:
    _set_setting(w, ROTATION_KEY, state, now)


def cross_certs(conn: Connection) -> list[str]:
    """PEMs of cross-certificates: each newer root re-issued by the root it replaced.

    The xDS port presents them after its own certificate, so an Envoy whose
    bootstrap still trusts only an older root keeps connecting after rotations.
    """
    t = schema.settings
    raw = conn.execute(select(t.c.value).where(t.c.key == CROSS_KEY)).scalar()
    return list(json.loads(raw)) if raw else []


def add_cross_cert(w: Write, pem: str, now: float) -> None:
    _set_setting(w, CROSS_KEY, [*cross_certs(w.conn), pem], now)


def sds_status(conn: Connection) -> list[dict[str, Any]]:
    """Per proxy with an SDS stream: connected, ACKed roots and ACKed leaf issuer."""
    t = schema.proxy_status
    cols = [t.c.proxy, t.c.connected, t.c.acked_roots]
    has_issuer = "acked_issuer" in t.c
    if has_issuer:
        cols.append(t.c.acked_issuer)
    out = []
    for r in conn.execute(select(*cols).where(t.c.type == "sds").order_by(t.c.proxy)):
        out.append(
            {
                "proxy": r.proxy,
                "connected": bool(r.connected),
                "acked_roots": json.loads(r.acked_roots) if r.acked_roots else [],
                "acked_issuer": r.acked_issuer if has_issuer else None,
            }
        )
    return out
