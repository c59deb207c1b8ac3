"""Denied attempts in the store: batched writes into a bounded table, and reads.

`denial_events` (view `v_denials`) is server bookkeeping, not user
configuration: rows make no revision. It stays bounded: every batch write also
prunes rows older than `max_age_seconds` and the oldest rows beyond
`max_rows`, in the same transaction.

The server never writes from the request path: the hub queues denials and a
`DenialWriter` task writes them in batches from a worker thread.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine, delete, func, insert, select

from meshgate.store.db import reading
from meshgate.store.schema import denial_events
from meshgate.telemetry.accesslog import Denial

log = logging.getLogger(__name__)

DEFAULT_MAX_ROWS = 100_000
DEFAULT_MAX_AGE_SECONDS = 7 * 86400


@dataclass(frozen=True)
class Retention:
    max_rows: int = DEFAULT_MAX_ROWS
    max_age_seconds: float = DEFAULT_MAX_AGE_SECONDS

    def __post_init__(self) -> None:
        if self.max_rows < 1:
            raise ValueError("max_rows must be >= 1")
        if self.max_age_seconds <= 0:
            raise ValueError("max_age_seconds must be > 0")


def _clip(row: dict[str, Any]) -> dict[str, Any]:
    # Column widths (PostgreSQL enforces them; SQLite does not).
    out = dict(row)
    for col, width in (("proxy", 63), ("caller", 300), ("callee", 300), ("route", 63),
                       ("method", 16), ("rule_id", 63)):
        v = out.get(col)
        if isinstance(v, str) and len(v) > width:
            out[col] = v[:width]
    return out


def write_batch(engine: Engine, denials: Sequence[Denial], retention: Retention,
                now: float | None = None) -> int:
    """Insert `denials` and prune to the retention bounds. Returns rows pruned."""
    now = time.time() if now is None else now
    with engine.begin() as conn:
        if denials:
            conn.execute(insert(denial_events), [_clip(d.row()) for d in denials])
        pruned = conn.execute(
            delete(denial_events).where(denial_events.c.at < now - retention.max_age_seconds)
        ).rowcount or 0
        # The id of the newest row that falls outside max_rows, if any.
        cutoff = conn.execute(
            select(denial_events.c.id).order_by(denial_events.c.id.desc())
            .limit(1).offset(retention.max_rows)
        ).scalar()
        if cutoff is not None:
            pruned += conn.execute(
                delete(denial_events).where(denial_events.c.id <= cutoff)).rowcount or 0
    return int(pruned)


def read(engine: Engine, *, since: float | None = None, limit: int = 1000,
         caller: str | None = None, callee: str | None = None) -> list[dict[str, Any]]:
    """Newest first."""
    q = select(denial_events).order_by(denial_events.c.at.desc(), denial_events.c.id.desc())
    if since is not None:
        q = q.where(denial_events.c.at >= since)
    if caller:
        q = q.where(denial_events.c.caller == caller)
    if callee:
        q = q.where(denial_events.c.callee == callee)
    with reading(engine) as conn:  # read-only: never waits for a writer (`events`)
        return [dict(r._mapping) for r in conn.execute(q.limit(limit))]


def count(engine: Engine) -> int:
    with reading(engine) as conn:
        return int(conn.execute(select(func.count()).select_from(denial_events)).scalar_one())


class DenialWriter:
    """Queues denials and writes them in batches (every `interval` s or `batch` rows).

    The queue is bounded: when the store cannot keep up, the oldest queued
    denials are dropped and counted in `dropped`.
    """

    def __init__(self, engine: Engine, retention: Retention = Retention(), *,
                 interval: float = 1.0, batch: int = 500, max_queue: int = 20_000) -> None:
        self.engine = engine
        self.retention = retention
        self.interval = interval
        self.batch = batch
        self.queue: deque[Denial] = deque(maxlen=max_queue)
        self.dropped = 0
        self.written = 0
        self._wake = asyncio.Event()
        self._lock = asyncio.Lock()

    def put(self, denial: Denial) -> None:
        if len(self.queue) == self.queue.maxlen:
            self.dropped += 1
        self.queue.append(denial)
        if len(self.queue) >= self.batch:
            self._wake.set()

    async def flush(self) -> int:
        """Write everything queued now; returns rows written."""
        async with self._lock:
            total = 0
            while self.queue:
                chunk = [self.queue.popleft() for _ in range(min(self.batch, len(self.queue)))]
                try:
                    await asyncio.to_thread(write_batch, self.engine, chunk, self.retention)
                except Exception:  # noqa: BLE001 - the store may be busy; keep serving
                    log.exception("writing %d denial events failed; they are dropped", len(chunk))
                    self.dropped += len(chunk)
                    continue
                total += len(chunk)
            self.written += total
            return total

    async def run(self) -> None:
        """Flush forever (cancel to stop; a final flush runs on cancellation)."""
        try:
            while True:
                try:
                    await asyncio.wait_for(self._wake.wait(), self.interval)
                except TimeoutError:
                    pass
                self._wake.clear()
                await self.flush()
        finally:
            if self.queue:
                await asyncio.shield(self.flush())
