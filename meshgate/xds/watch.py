"""Noticing store changes made by other processes (the CLI) without a restart.

Every `interval` seconds: on SQLite, `PRAGMA data_version` on one long-lived
connection says whether anyone committed since the last look (cheap, no table
read); on any database, a change token then says whether it matters: the
newest revision id (every user-visible change writes one) and the CA rows
(rotation phases). The server's own proxy_status writes move data_version but
not the token, so they do not reload the World.
"""

from __future__ import annotations

import asyncio
import sqlite3
from typing import Any

from sqlalchemy import Engine, func, select

from meshgate.store import schema
from meshgate.store.db import reading, sqlite_path

DEFAULT_INTERVAL = 0.15


def change_token(engine: Engine) -> tuple[Any, ...]:
    with reading(engine) as conn:
        rev = conn.execute(select(func.coalesce(func.max(schema.revisions.c.id), 0))).scalar_one()
        cas = tuple(
            (r.id, r.status)
            for r in conn.execute(select(schema.ca_certs.c.id, schema.ca_certs.c.status).order_by(schema.ca_certs.c.id))
        )
    return (int(rev), cas)


class ChangeWatcher:
    def __init__(self, engine: Engine, interval: float = DEFAULT_INTERVAL) -> None:
        self.engine = engine
        self.interval = interval
        self.token = change_token(engine)
        path = sqlite_path(str(engine.url))
        self._sqlite: sqlite3.Connection | None = None
        self._data_version: int | None = None
        if path is not None:
            self._sqlite = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
            self._data_version = self._read_data_version()

    def _read_data_version(self) -> int:
        assert self._sqlite is not None
        return int(self._sqlite.execute("PRAGMA data_version").fetchone()[0])

    def poll(self) -> bool:
        """True when something that matters changed since the last poll (blocking)."""
        if self._sqlite is not None:
            dv = self._read_data_version()
            if dv == self._data_version:
                return False
            self._data_version = dv
        token = change_token(self.engine)
        if token == self.token:
            return False
        self.token = token
        return True

    async def wait(self) -> None:
        """Return once a change that matters happened."""
        while True:
            await asyncio.sleep(self.interval)
            if await asyncio.to_thread(self.poll):
                return

    def close(self) -> None:
        if self._sqlite is not None:
            self._sqlite.close()
            self._sqlite = None
