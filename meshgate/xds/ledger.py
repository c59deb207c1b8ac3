"""The ACK/NACK ledger: per proxy and type, what was sent, ACKed and NACKed.

Streams update it in memory on every message; `flush` writes the rows that
changed since the last flush in one transaction (the server calls it every
half second), never one write per message.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

from sqlalchemy import Engine

from meshgate.store import status as store_status


class Ledger:
    def __init__(self, engine: Engine | None, replica: str, clock: Callable[[], float] = time.time) -> None:
        self.engine = engine
        self.replica = replica
        self.clock = clock
        self.rows: dict[tuple[str, str], dict[str, Any]] = {}
        self._dirty: set[tuple[str, str]] = set()
        self._lock = threading.Lock()
        self.flushes = 0

    def _row(self, proxy: str, t: str) -> dict[str, Any]:
        key = (proxy, t)
        row = self.rows.get(key)
        if row is None:
            now = self.clock()
            row = self.rows[key] = {
                "proxy": proxy, "type": t, "replica": self.replica,
                "connected": True, "connected_since": now, "last_seen": now,
            }
        self._dirty.add(key)
        return row

    def seen(self, proxy: str, t: str) -> None:
        with self._lock:
            row = self._row(proxy, t)
            if not row["connected"]:
                row["connected"], row["connected_since"] = True, self.clock()
            row["last_seen"] = self.clock()

    def sent(self, proxy: str, t: str, version: str, nonce: str) -> None:
        with self._lock:
            row = self._row(proxy, t)
            row.update(sent_version=version, sent_nonce=nonce, sent_at=self.clock())

    def acked(self, proxy: str, t: str, version: str, *, acked_roots: list[str] | None = None,
              acked_issuer: str | None = None) -> None:
        with self._lock:
            row = self._row(proxy, t)
            row.update(acked_version=version, acked_at=self.clock(), last_seen=self.clock())
            if acked_roots is not None:
                row["acked_roots"] = acked_roots
            if acked_issuer is not None:
                row["acked_issuer"] = acked_issuer

    def nacked(self, proxy: str, t: str, version: str, detail: str, resources: list[str],
               sources: list[str]) -> None:
        with self._lock:
            row = self._row(proxy, t)
            row.update(nack_version=version, nack_detail=detail, nack_resources=resources,
                       nack_sources=sources, nack_at=self.clock(), last_seen=self.clock())

    def disconnected(self, proxy: str) -> None:
        with self._lock:
            for (p, t), row in self.rows.items():
                if p == proxy:
                    row["connected"] = False
                    row["last_seen"] = self.clock()
                    self._dirty.add((p, t))

    def touch(self, proxies: Iterable[str]) -> None:
        """Write these proxies' rows again at the next flush (replicas: after the
        others declared this replica gone and marked its rows disconnected)."""
        names = set(proxies)
        with self._lock:
            self._dirty.update(k for k in self.rows if k[0] in names)

    def forget(self, proxies: Iterable[str]) -> None:
        """Drop in-memory rows of removed proxies (their stored rows go with them)."""
        gone = set(proxies)
        with self._lock:
            for key in [k for k in self.rows if k[0] in gone]:
                self.rows.pop(key, None)
                self._dirty.discard(key)

    def take_dirty(self) -> list[dict[str, Any]]:
        with self._lock:
            out = [dict(self.rows[k]) for k in self._dirty if k in self.rows]
            self._dirty.clear()
        return out

    def flush(self) -> int:
        """Write every changed row in one transaction; returns how many (blocking: run in a thread)."""
        rows = self.take_dirty()
        if not rows or self.engine is None:
            return 0
        try:
            store_status.write_rows(self.engine, rows)
        except Exception:
            with self._lock:  # try again next time
                self._dirty.update((r["proxy"], r["type"]) for r in rows)
            raise
        self.flushes += 1
        return len(rows)
