"""A real SQLite store with a mesh and its root CA, for CA tests (no CLI needed)."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, insert, update

from meshgate.ca import create_keybox, initialize_ca
from meshgate.ca.keys import KeyBox
from meshgate.store import schema
from meshgate.store.db import open_store
from meshgate.store.txn import write

TD = "example.org"


def new_store(path_or_url: Path | str, now: float) -> tuple[Engine, KeyBox]:
    """A SQLite file (path) or any database URL, with the mesh and its root CA."""
    url = path_or_url if isinstance(path_or_url, str) else f"sqlite:///{path_or_url}"
    engine = open_store(url, must_exist=False)
    box = create_keybox(url)
    with write(engine, "init", "test") as w:
        w.conn.execute(insert(schema.mesh).values(id=1, trust_domain=TD, created_at=now))
        initialize_ca(w, box, TD, now)
    return engine, box


def set_sds(engine: Engine, proxy: str, *, connected: bool = True,
            roots: list[str] | None = None, issuer: str | None = None) -> None:
    """What the xDS server records for a proxy's SDS stream (simulated)."""
    t = schema.proxy_status
    values: dict[str, Any] = {"connected": connected, "acked_roots": json.dumps(roots or []),
                              "acked_issuer": issuer}
    with engine.begin() as conn:
        found = conn.execute(update(t).where(t.c.proxy == proxy, t.c.type == "sds").values(**values))
        if not found.rowcount:
            conn.execute(insert(t).values(proxy=proxy, type="sds", **values))


def dump(path: Path) -> str:
    """Every row of the database as SQL text (to prove a failed command changed nothing)."""
    with sqlite3.connect(path) as conn:
        return "\n".join(conn.iterdump())
