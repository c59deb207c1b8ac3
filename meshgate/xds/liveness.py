"""This replica's heartbeat in the shared store, and the sweep of dead replicas.

The bookkeeping lives in meshgate/store/replicas.py; this runs it inside
`meshgate serve`: register at start, `tick` every second in a worker thread,
unregister at a clean stop. When other replicas had declared this one gone
(a pause longer than the timeout) its proxies' status rows were marked
disconnected: they are written again from the ledger at the next flush.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable
from typing import Any

from sqlalchemy import Engine

from meshgate.store.replicas import HEARTBEAT_INTERVAL, STALE_AFTER, Liveness
from meshgate.xds.logs import event

log = logging.getLogger("meshgate.xds.liveness")
TICK = 1.0


class ReplicaLiveness:
    def __init__(self, engine: Engine, replica: str, *, ledger: Any,
                 connected: Callable[[], Iterable[str]], timeout: float = STALE_AFTER) -> None:
        self.engine = engine
        self.replica = replica
        self.ledger = ledger
        self.connected = connected
        self.timeout = timeout
        self.liveness: Liveness | None = None

    async def start(self, listen: str) -> None:
        self.liveness = Liveness(self.engine, self.replica, listen,
                                 interval=min(HEARTBEAT_INTERVAL, self.timeout / 4),
                                 stale_after=self.timeout)
        await asyncio.to_thread(self.liveness.start)

    async def run(self) -> None:
        """Beat and sweep every second until cancelled; errors are logged and retried."""
        while True:
            await asyncio.sleep(TICK)
            if self.liveness is None:
                continue
            try:
                rejoined, swept = await asyncio.to_thread(self.liveness.tick)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - the store may be briefly unreachable
                event(log, "replica-heartbeat-failed", level=logging.WARNING, error=repr(exc))
                continue
            for name in swept:
                event(log, "replica-gone", level=logging.WARNING, replica=name,
                      note=f"silent for {self.timeout:g}s; status rows it still held are now disconnected")
            if rejoined:
                names = sorted(self.connected())
                self.ledger.touch(names)
                event(log, "replica-rejoined", level=logging.WARNING, replica=self.replica,
                      proxies=len(names))

    async def stop(self) -> None:
        if self.liveness is None:
            return
        try:
            await asyncio.to_thread(self.liveness.stop)
        except Exception as exc:  # noqa: BLE001 - the others will sweep the row
            event(log, "replica-unregister-failed", level=logging.WARNING, error=repr(exc))
