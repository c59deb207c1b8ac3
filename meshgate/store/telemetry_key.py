"""The server secret behind each proxy's telemetry key (settings `telemetry.key_secret`).

    secret = load_key_secret(engine)      # 32 random bytes, the same for every replica

Access-log streams prove which proxy sent them with `HMAC-SHA256(secret, proxy
name)` (meshgate.telemetry.keys). Every replica sharing the store derives the
same keys, so a proxy may send its access logs to any of them.

The secret is server-internal state, like proxy_status: it is written without a
revision (so it never shows in `history`, `diff` or a rollback), and `config
export` does not read the settings table. Migration 0007 creates it; a store
that lost the row gets a new one here, in one write transaction (a replica
racing us wins, and we read its value). Rotating it is not supported.
"""

from __future__ import annotations

import base64
import json
import secrets
import time

from sqlalchemy import Connection, Engine, insert, select
from sqlalchemy.exc import IntegrityError

from meshgate.store import schema
from meshgate.store.db import reading

SETTING = "telemetry.key_secret"
SECRET_BYTES = 32


def read_key_secret(conn: Connection) -> bytes | None:
    t = schema.settings
    raw = conn.execute(select(t.c.value).where(t.c.key == SETTING)).scalar()
    if raw is None:
        return None
    return base64.b64decode(json.loads(raw))


def ensure_key_secret(conn: Connection) -> None:
    """Create the secret when absent (inside the caller's transaction)."""
    if read_key_secret(conn) is None:
        value = json.dumps(base64.b64encode(secrets.token_bytes(SECRET_BYTES)).decode())
        conn.execute(insert(schema.settings).values(key=SETTING, value=value, updated_at=time.time()))


def load_key_secret(engine: Engine) -> bytes:
    """The secret, created first if the store has none."""
    with reading(engine) as conn:
        got = read_key_secret(conn)
    if got is not None:
        return got
    try:
        with engine.begin() as conn:
            ensure_key_secret(conn)
    except IntegrityError:
        pass  # another replica created it between our read and our insert
    with reading(engine) as conn:
        got = read_key_secret(conn)
    if got is None:  # pragma: no cover - the insert above committed or lost to one
        raise RuntimeError("the telemetry key secret could not be stored")
    return got
