"""Control-plane replicas: which `meshgate serve` processes are alive.

Several replicas share one store (PostgreSQL). Each proxy streams from one
replica, and that replica alone writes the proxy's `proxy_status` rows
(column `replica`). When a replica is killed it cannot mark its proxies
disconnected; without this module those rows would say "connected" forever,
and a CA root rotation (which waits for every connected proxy) would wait for
proxies that are gone.

So each replica keeps a row in `replicas` and bumps its `beats` counter every
`interval` seconds. Every replica watches the others: a replica whose counter
has not moved for `stale_after` seconds *of the watcher's own monotonic
clock* is gone (no wall clocks are compared across hosts). The watcher then
marks the rows that replica held as disconnected and deletes its row. Rows a
proxy's new replica wrote after it reconnected name the new replica and are
left alone.

A replica that was paused long enough to be declared gone finds its row
missing at its next beat: `Liveness.tick` re-registers it and reports it, so
the server rewrites its proxies' rows.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Engine, delete, insert, select, update

from meshgate.store import schema
from meshgate.store.db import reading

HEARTBEAT_INTERVAL = 2.0
STALE_AFTER = 15.0


def register(engine: Engine, name: str, listen: str | None, now: float) -> None:
    """Insert (or replace) this replica's row."""
    t = schema.replicas
    with engine.begin() as conn:
        conn.execute(delete(t).where(t.c.name == name))
        conn.execute(
            insert(t).values(
                name=name, listen=listen, host=socket.gethostname(), pid=os.getpid(),
                started_at=now, heartbeat_at=now, beats=0,
            )
        )


def beat(engine: Engine, name: str, now: float) -> bool:
    """Bump this replica's counter; False when its row is gone (another replica
    declared it dead)."""
    t = schema.replicas
    with engine.begin() as conn:
        result = conn.execute(
            update(t).where(t.c.name == name).values(beats=t.c.beats + 1, heartbeat_at=now)
        )
        return bool(result.rowcount)


def unregister(engine: Engine, name: str) -> None:
    """At a clean stop (the server has already marked its streams disconnected)."""
    t = schema.replicas
    with engine.begin() as conn:
        conn.execute(delete(t).where(t.c.name == name))


def list_replicas(conn: Any) -> list[dict[str, Any]]:
    t = schema.replicas
    return [dict(r._mapping) for r in conn.execute(select(t).order_by(t.c.name))]


def sweep(engine: Engine, gone: str, now: float) -> int:
    """Replica `gone` is dead: its connected proxy_status rows become disconnected
    (last_seen stays: when it was last heard of). Returns how many rows."""
    st, t = schema.proxy_status, schema.replicas
    with engine.begin() as conn:
        n = conn.execute(
            update(st)
            .where(st.c.replica == gone, st.c.connected.is_(True))
            .values(connected=False)
        ).rowcount
        conn.execute(delete(t).where(t.c.name == gone))
    return int(n or 0)


@dataclass
class Liveness:
    """One replica's heartbeat and its watch over the others (call `tick` about every second)."""

    engine: Engine
    name: str
    listen: str | None = None
    interval: float = HEARTBEAT_INTERVAL
    stale_after: float = STALE_AFTER
    clock: Callable[[], float] = time.time
    monotonic: Callable[[], float] = time.monotonic
    # other replica -> (last beats value seen, monotonic time it was first seen)
    _seen: dict[str, tuple[int, float]] = field(default_factory=dict)
    _next_beat: float = 0.0

    def start(self) -> None:
        register(self.engine, self.name, self.listen, self.clock())
        self._next_beat = self.monotonic() + self.interval

    def stop(self) -> None:
        unregister(self.engine, self.name)

    def tick(self) -> tuple[bool, list[str]]:
        """Beat when due, then sweep replicas found dead.

        Returns (rejoined, swept): `rejoined` is True when this replica had been
        declared dead and registered itself again (its proxies' status rows
        must be rewritten); `swept` names the replicas this call declared dead.
        """
        mono = self.monotonic()
        rejoined = False
        if mono >= self._next_beat:
            self._next_beat = mono + self.interval
            if not beat(self.engine, self.name, self.clock()):
                register(self.engine, self.name, self.listen, self.clock())
                rejoined = True
        return rejoined, self._sweep_dead(mono)

    def _sweep_dead(self, mono: float) -> list[str]:
        t = schema.replicas
        with reading(self.engine) as conn:  # a pure read: `sweep` below writes on its own
            rows = conn.execute(select(t.c.name, t.c.beats).where(t.c.name != self.name)).all()
        current = {r.name: int(r.beats) for r in rows}
        for name in list(self._seen):
            if name not in current:
                del self._seen[name]
        swept = []
        for name, beats in current.items():
            seen = self._seen.get(name)
            if seen is None or seen[0] != beats:
                self._seen[name] = (beats, mono)
            elif mono - seen[1] >= self.stale_after:
                sweep(self.engine, name, self.clock())
                self._seen.pop(name, None)
                swept.append(name)
        return swept
