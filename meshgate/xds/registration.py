"""Self-registration: a sidecar's instance follows its xDS stream.

A sidecar's bootstrap declares its instance in node metadata
(`meshgate proxy bootstrap --address --inbound-port --app-port`):

    {"meshgate": {"kind": "sidecar", "service": "orders",
                  "instance": {"address": "10.0.0.7", "inbound_port": 15006, "app_port": 8080}}}

- When the sidecar connects, its instance is registered (or updated, or kept)
  before the stream is served: `add_instance(..., proxy=<name>, source="proxy")`,
  a revision by actor "meshgate-server".
- Metadata that is malformed, or contradicts the store (another kind, another
  service), refuses the stream with INVALID_ARGUMENT naming every bad field; an
  address:port held by another live instance refuses it with
  FAILED_PRECONDITION, and so does an inbound port on 127.0.0.1 that the sidecar
  listens on locally already (its outbound port, a tcp service's port: Envoy
  would NACK the listener; store/ports.py). Envoy logs the message and retries,
  so a broken sidecar is loud instead of silently serving without an inbound side.
- When its last stream ends, the sweep (every second) marks the instance
  `disconnected_at`; after the mesh's `instance_grace_seconds` it is removed. A
  reconnect within the grace keeps it (the mark is cleared).

Several replicas (one store, PostgreSQL): the replica holding a sidecar's
stream owns its instance. The sweep never marks or removes an instance whose
proxy is connected to another replica (its `proxy_status` rows say so, written
by that replica within half a second), and clears a mark left by a replica the
sidecar moved away from. A stopping replica marks nothing (its sidecars will
reconnect elsewhere, or to it once restarted), and a starting one waits
`settle` seconds before marking sidecars it has not seen connect (a stream
that ended on this replica is marked at the next sweep); the grace
counts from the replica's start at the earliest, so a control plane that was
down longer than the grace does not remove instances before their sidecars
could come back.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from google.protobuf.json_format import MessageToDict
from sqlalchemy import Engine, delete, select, update

from meshgate.errors import AlreadyExists, MeshgateError
from meshgate.model import Proxy
from meshgate.store import schema
from meshgate.store.db import reading
from meshgate.store.instances import add_instance, endpoint
from meshgate.store.ports import PortConflict, check_inbound_port
from meshgate.store.rows import read_row, record_row
from meshgate.store.txn import Write, write
from meshgate.validation import Checker
from meshgate.xds.errors import StreamRefused
from meshgate.xds.logs import event

log = logging.getLogger("meshgate.xds.registration")

ACTOR = "meshgate-server"
SWEEP_INTERVAL = 1.0
SETTLE_SECONDS = 10.0
META = "node.metadata.meshgate"


@dataclass(frozen=True)
class Claim:
    """The instance a sidecar's bootstrap declares."""

    service: str
    address: str
    inbound_port: int
    app_port: int

    @property
    def key(self) -> str:
        return endpoint(self.address, self.inbound_port)


def _port(v: Checker, name: str, value: Any) -> int | None:
    # Struct numbers arrive as floats: 15006.0 is a port, 15006.5 and "15006" are not
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        v.add(name, f"{value!r} is not a port (1-65535)")
        return None
    return value if v.port(name, value) else None


def parse_claim(proxy: Proxy, metadata: Any) -> Claim | None:
    """The instance declared in `metadata` (node.metadata, a Struct), or None when
    it declares none. ValidationError naming every bad field otherwise."""
    raw = MessageToDict(metadata).get("meshgate")
    if raw is None:
        return None
    v = Checker(f'node metadata of proxy "{proxy.name}"')
    if not isinstance(raw, dict):
        v.add(META, "must be an object")
        v.done()
    kind = raw.get("kind", proxy.kind)
    v.require(kind == proxy.kind, f"{META}.kind", f"{kind!r}, but proxy {proxy.name!r} is a {proxy.kind}")
    service = raw.get("service", proxy.service)
    if proxy.kind == "sidecar":
        v.require(service == proxy.service, f"{META}.service",
                  f"{service!r}, but proxy {proxy.name!r} is the sidecar of {proxy.service!r}")
    inst = raw.get("instance")
    if inst is None:
        v.done()
        return None
    if proxy.kind != "sidecar":
        v.add(f"{META}.instance", "only sidecars register instances")
        v.done()
    if not isinstance(inst, dict):
        v.add(f"{META}.instance", "must be an object with address, inbound_port, app_port")
        v.done()
    address = inst.get("address")
    if not isinstance(address, str):
        v.add(f"{META}.instance.address", f"{address!r} is not an IP address or host name")
    else:
        v.address(f"{META}.instance.address", address)
    inbound = _port(v, f"{META}.instance.inbound_port", inst.get("inbound_port"))
    app = _port(v, f"{META}.instance.app_port", inst.get("app_port"))
    unknown = sorted(set(inst) - {"address", "inbound_port", "app_port"})
    if unknown:
        v.add(f"{META}.instance", f"unknown field(s): {', '.join(unknown)}")
    v.done()
    assert inbound is not None and app is not None and isinstance(address, str)
    return Claim(str(proxy.service), address, inbound, app)


@dataclass
class SweepResult:
    cleared: list[str] = field(default_factory=list)  # proxy names whose mark was lifted
    marked: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.cleared or self.marked or self.removed)


def _row_for_proxy(conn: Any, proxy: str) -> Any:
    i = schema.instances
    return conn.execute(select(i).where(i.c.proxy == proxy).order_by(i.c.id)).first()


def _row_at(conn: Any, address: str, port: int) -> Any:
    i = schema.instances
    return conn.execute(select(i).where(i.c.address == address, i.c.inbound_port == port)).first()


def _set(w: Write, instance_id: int, **values: Any) -> None:
    i = schema.instances
    before = read_row(w.conn, i, instance_id)
    w.conn.execute(update(i).where(i.c.id == instance_id).values(**values))
    record_row(w, i, instance_id, before)


def _remove(w: Write, instance_id: int) -> None:
    i = schema.instances
    before = read_row(w.conn, i, instance_id)
    w.conn.execute(delete(i).where(i.c.id == instance_id))
    record_row(w, i, instance_id, before)


def _same(row: Any, claim: Claim) -> bool:
    return (row.address, row.inbound_port, row.app_port, row.service) == (
        claim.address, claim.inbound_port, claim.app_port, claim.service)


class Registrar:
    """The xDS server's stream hook for self-registration, and the sweep.

        registrar = Registrar(engine, replica="10.0.0.5:18000")
        server = XdsServer(engine, hooks=[registrar], ...)
        await server.start(...); await registrar.start()
        ...
        await registrar.stop(); await server.stop()
    """

    def __init__(self, engine: Engine, *, replica: str, clock: Callable[[], float] = time.time,
                 settle: float = SETTLE_SECONDS, interval: float = SWEEP_INTERVAL) -> None:
        self.engine = engine
        self.replica = replica
        self.clock = clock
        self.settle = settle
        self.interval = interval
        self.started = clock()
        self.live: Counter[str] = Counter()  # proxy -> open streams on this replica
        self.seen: set[str] = set()  # proxies that streamed from this replica since it started
        self._lock = asyncio.Lock()  # one registration or sweep at a time
        self._task: asyncio.Task[None] | None = None

    # -- stream hooks -------------------------------------------------------------
    async def connected(self, proxy: Proxy, node: Any) -> None:
        self.live[proxy.name] += 1
        self.seen.add(proxy.name)
        try:
            claim = parse_claim(proxy, node.metadata)
        except MeshgateError as exc:
            raise StreamRefused("INVALID_ARGUMENT", str(exc)) from exc
        if claim is None:
            return
        async with self._lock:
            what = await asyncio.to_thread(self._claim, proxy.name, claim)
        if what != "unchanged":
            event(log, "instance-" + what, proxy=proxy.name, service=claim.service, instance=claim.key)

    async def disconnected(self, proxy: Proxy, node: Any) -> None:
        """The sweep marks the instance within `interval` once no stream is left."""
        self.live[proxy.name] -= 1
        if self.live[proxy.name] <= 0:
            del self.live[proxy.name]

    # -- lifecycle ------------------------------------------------------------------
    async def start(self) -> None:
        self.started = self.clock()
        self._task = asyncio.create_task(self._loop(), name="self-registration")

    async def stop(self) -> None:
        """Before the server closes its streams: a stopping replica marks nothing."""
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):  # noqa: BLE001 - stopping anyway
                pass
            self._task = None

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.sweep()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - retried at the next sweep
                event(log, "sweep-failed", level=logging.WARNING, error=repr(exc))

    async def sweep(self) -> SweepResult:
        async with self._lock:
            live, seen = frozenset(self.live), frozenset(self.seen)
            result = await asyncio.to_thread(self._sweep, live, seen, self.clock())
        for name in result.marked:
            event(log, "instance-disconnected", proxy=name)
        for name in result.removed:
            event(log, "instance-removed", proxy=name)
        return result

    # -- store (worker threads) --------------------------------------------------------
    def _claim(self, proxy: str, claim: Claim) -> str:
        """Register, update or keep the instance; returns what happened."""
        with reading(self.engine) as conn:  # the usual reconnect writes nothing
            mine = _row_for_proxy(conn, proxy)
        if mine is not None and _same(mine, claim) and mine.disconnected_at is None:
            return "unchanged"  # the usual reconnect: no write, no revision
        try:
            with write(self.engine, f"self-registration: {proxy} connected ({claim.key})", ACTOR) as w:
                return self._claim_in(w, proxy, claim)
        except AlreadyExists as exc:  # lost a race for the address to another writer
            raise StreamRefused("FAILED_PRECONDITION", str(exc)) from exc

    def _claim_in(self, w: Write, proxy: str, claim: Claim) -> str:
        conn = w.conn
        mine = _row_for_proxy(conn, proxy)
        taken = _row_at(conn, claim.address, claim.inbound_port)
        if taken is not None and (mine is None or taken.id != mine.id):
            if taken.source == "proxy" and taken.disconnected_at is not None:
                _remove(w, taken.id)  # its sidecar is gone; this one took over the address
            else:
                owner = f'sidecar "{taken.proxy}"' if taken.source == "proxy" else "the CLI"
                raise StreamRefused(
                    "FAILED_PRECONDITION",
                    f"instance {claim.key} is already registered (id {taken.id}, service "
                    f'"{taken.service}", by {owner}); give this sidecar another --inbound-port, '
                    f"or remove that instance",
                )
        try:  # before add_instance or a move: the same rule, named as the bootstrap's field
            check_inbound_port(conn, proxy, claim.address, claim.inbound_port,
                               subject=f'node metadata of proxy "{proxy}"', field=f"{META}.instance.inbound_port",
                               option="--inbound-port for its bootstrap")
        except PortConflict as exc:
            raise StreamRefused("FAILED_PRECONDITION", str(exc)) from exc
        if mine is None:
            add_instance(w, claim.service, claim.address, claim.inbound_port, claim.app_port,
                         proxy=proxy, source="proxy")
            return "registered"
        if mine.source != "proxy" and not _same(mine, claim):
            raise StreamRefused(
                "FAILED_PRECONDITION",
                f"proxy {proxy!r} fronts instance {endpoint(mine.address, mine.inbound_port)} "
                f"(id {mine.id}, added with the CLI) but its bootstrap declares {claim.key}: "
                "remove that instance or fix the bootstrap",
            )
        if _same(mine, claim):
            _set(w, mine.id, disconnected_at=None)
            return "reconnected"
        _set(w, mine.id, address=claim.address, inbound_port=claim.inbound_port,
             app_port=claim.app_port, disconnected_at=None)
        return "moved"

    def _sweep(self, live: frozenset[str], seen: frozenset[str], now: float) -> SweepResult:
        i, st = schema.instances, schema.proxy_status
        with reading(self.engine) as conn:  # the plan; its writes take the lock below
            rows = conn.execute(select(i).where(i.c.source == "proxy").order_by(i.c.id)).all()
            if not rows:
                return SweepResult()
            grace = conn.execute(select(schema.mesh.c.instance_grace_seconds)).scalar() or 0
            elsewhere = {
                r.proxy
                for r in conn.execute(
                    select(st.c.proxy).where(st.c.connected.is_(True), st.c.replica != self.replica)
                )
            }
        plan: list[tuple[str, Any]] = []
        for r in rows:
            if r.proxy is not None and r.proxy in live:
                if r.disconnected_at is not None:
                    plan.append(("clear", r))
            elif r.proxy is not None and r.proxy in elsewhere:
                continue  # the replica holding its stream owns it
            elif r.disconnected_at is None:
                # a stream that ended here is gone now; others may still be reconnecting after a start
                if r.proxy in seen or now - self.started >= self.settle:
                    plan.append(("mark", r))
            elif now - max(r.disconnected_at, self.started) >= grace:
                plan.append(("remove", r))
        result = SweepResult()
        if not plan:
            return result
        with write(self.engine, "self-registration sweep", ACTOR) as w:
            notes = []
            for action, r in plan:
                current = read_row(w.conn, i, r.id)
                if current is None or current["disconnected_at"] != r.disconnected_at:
                    continue  # changed since it was read (a reconnect): next sweep decides
                name = r.proxy or f"instance {r.id}"
                where = endpoint(r.address, r.inbound_port)
                if action == "clear":
                    _set(w, r.id, disconnected_at=None)
                    result.cleared.append(name)
                    notes.append(f"{name} ({where}) connected again")
                elif action == "mark":
                    _set(w, r.id, disconnected_at=now)
                    result.marked.append(name)
                    notes.append(f"{name} ({where}) disconnected, removed after {grace}s unless it reconnects")
                else:
                    _remove(w, r.id)
                    result.removed.append(name)
                    notes.append(f"{name} ({where}) removed: gone for {grace}s")
            w.summary = "self-registration: " + "; ".join(notes) if notes else w.summary
        return result
