"""The xDS server: Aggregated Discovery Service (state-of-the-world and delta) over grpc.aio.

    server = XdsServer(engine, secrets=IssuerSecretProvider(issuer))
    port = await server.start("127.0.0.1:18000", credentials=grpc_tls_credentials)
    ...
    await server.stop()

Wiring only: authentication (auth.py), what to send (sotw.py / delta.py),
what each proxy should have (state.py), the ledger (ledger.py) and noticing
store changes (watch.py) live in their own modules. Other features plug in:
- `servicers`: callbacks that add gRPC services to the same server (telemetry);
- `hooks`: objects with async `connected(proxy, node)` / `disconnected(proxy, node)`
  (self-registration of instances, xds/registration.py); `connected` may raise
  StreamRefused to end the stream with a gRPC status;
- `rotation`: called about every second with (engine, now) (CA root rotation);
- `metrics`: an observer with proxy_connected/proxy_disconnected(proxy) and
  pushed/acked/nacked(proxy, type) (telemetry's ControlPlaneMetrics).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import socket
import time
import weakref
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import grpc
from envoy.config.core.v3 import base_pb2
from envoy.service.discovery.v3 import discovery_pb2
from google.protobuf.message import DecodeError
from sqlalchemy import Engine

from meshgate.model import Proxy, World
from meshgate.store import status as store_status
from meshgate.store.db import reading
from meshgate.store.proxies import credentials as load_credentials
from meshgate.store.replicas import STALE_AFTER
from meshgate.store.txn import writers_serialized
from meshgate.store.world import load_world_conn
from meshgate.xds.auth import Authenticated, Authenticator, AuthError
from meshgate.xds.delta import DeltaStream
from meshgate.xds.errors import StreamRefused
from meshgate.xds.ledger import Ledger
from meshgate.xds.liveness import ReplicaLiveness
from meshgate.xds.logs import event
from meshgate.xds.nacks import NackMemory
from meshgate.xds.peer import Peer, ProtocolError
from meshgate.xds.resources import Resource
from meshgate.xds.secrets import (
    NoSecrets,
    SecretProvider,
    bundle_fingerprints,
    identity_issuer,
    identity_not_after,
)
from meshgate.xds.sotw import SotwStream
from meshgate.xds.state import ConfigState
from meshgate.xds.translate.generated import DEFAULT_OPTIONS, Options
from meshgate.xds.translate.index import WorldIndex
from meshgate.xds.translate.tls import SECRET_IDENTITY, SECRET_TRUST
from meshgate.xds.watch import DEFAULT_INTERVAL, ChangeWatcher
from meshgate.xds.worldpatch import WorldChange, changes_since, patch

log = logging.getLogger("meshgate.xds.server")

SERVICE = "envoy.service.discovery.v3.AggregatedDiscoveryService"
FLUSH_INTERVAL = 0.5
FULL_RELOAD_INTERVAL = 300.0
TICK_INTERVAL = 1.0


class StreamHooks(Protocol):
    async def connected(self, proxy: Proxy, node: base_pb2.Node) -> None: ...
    async def disconnected(self, proxy: Proxy, node: base_pb2.Node) -> None: ...


class _Malformed:
    """A request whose bytes are not the message they should be."""

    def __init__(self, error: str) -> None:
        self.error = error


def _parser(cls: Any) -> Callable[[bytes], Any]:
    def parse(data: bytes) -> Any:
        try:
            return cls.FromString(data)
        except DecodeError as exc:
            return _Malformed(str(exc))

    return parse


@dataclass(eq=False)
class _Stream:
    proxy: str
    mode: str
    auth: Authenticated
    node: base_pb2.Node
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    close_reason: str | None = None
    since: float = field(default_factory=time.time)


class XdsServer:
    def __init__(
        self,
        engine: Engine,
        *,
        secrets: SecretProvider | None = None,
        options: Options = DEFAULT_OPTIONS,
        replica: str | None = None,
        poll_interval: float = DEFAULT_INTERVAL,
        flush_interval: float = FLUSH_INTERVAL,
        servicers: Sequence[Callable[[grpc.aio.Server], None]] = (),
        hooks: Sequence[StreamHooks] = (),
        rotation: Callable[[Engine, float], Any] | None = None,
        metrics: Any = None,
        clock: Callable[[], float] = time.time,
        replica_timeout: float = STALE_AFTER,
    ) -> None:
        self.engine = engine
        self.secrets = secrets or NoSecrets()
        self.options = options
        self.replica = replica or f"{socket.gethostname()}:{os.getpid()}"
        self.poll_interval = poll_interval
        self.flush_interval = flush_interval
        self.servicers = list(servicers)
        self.hooks = list(hooks)
        self.rotation = rotation
        self.metrics = metrics
        self.clock = clock
        self.auth = Authenticator()
        self.ledger = Ledger(engine, self.replica, clock)
        self.streams: dict[str, set[_Stream]] = {}
        # replicas sharing the store: heartbeat, and the sweep of dead ones (liveness.py)
        self.liveness = ReplicaLiveness(engine, self.replica, ledger=self.ledger,
                                        connected=lambda: list(self.streams), timeout=replica_timeout)
        self.nacks: dict[str, NackMemory] = {}
        self.state: ConfigState | None = None
        self.port: int | None = None
        self.last_apply_cpu_ms: float = 0.0
        self.last_load_cpu_ms: float = 0.0
        self._incremental = writers_serialized(engine)  # revisions visible in order: patchable
        self._full_at = 0.0
        self._creds: dict[str, Any] = {}
        self._server: grpc.aio.Server | None = None
        self._watcher: ChangeWatcher | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._stream_ids = itertools.count(1)
        self._facts: weakref.WeakKeyDictionary[Resource, dict[str, Any]] = weakref.WeakKeyDictionary()
        self._stopping = asyncio.Event()

    # -- lifecycle -------------------------------------------------------------
    async def start(self, listen: str = "127.0.0.1:0", *, credentials: grpc.ServerCredentials | None = None) -> int:
        world, creds = await asyncio.to_thread(self._load)
        self._full_at = time.monotonic()
        self._creds = creds
        self.auth.update(creds)
        self.state = ConfigState(world, secrets=self.secrets, options=self.options, clock=self.clock)
        await asyncio.to_thread(store_status.mark_replica_disconnected, self.engine, self.replica)
        self._watcher = await asyncio.to_thread(ChangeWatcher, self.engine, self.poll_interval)
        server = grpc.aio.server(options=[("grpc.max_receive_message_length", 16 * 1024 * 1024)])
        server.add_generic_rpc_handlers((self._handlers(),))
        for register in self.servicers:
            register(server)
        port = server.add_secure_port(listen, credentials) if credentials else server.add_insecure_port(listen)
        if port == 0:
            raise OSError(f"cannot listen on {listen}")
        await server.start()
        self._server, self.port = server, port
        await self.liveness.start(f"{listen.rsplit(':', 1)[0]}:{port}")
        self._tasks = [
            asyncio.create_task(self._watch_loop(), name="xds-watch"),
            asyncio.create_task(self._flush_loop(), name="xds-flush"),
            asyncio.create_task(self._tick_loop(), name="xds-tick"),
            asyncio.create_task(self.liveness.run(), name="xds-liveness"),
        ]
        event(log, "serving", listen=listen, port=port, tls=credentials is not None,
              revision=world.revision, proxies=len(world.proxies))
        return port

    async def stop(self, grace: float = 1.0) -> None:
        self._stopping.set()
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            try:
                await t
            except (asyncio.CancelledError, Exception):  # noqa: BLE001
                pass
        if self._server is not None:
            await self._server.stop(grace)
        for name in list(self.streams):
            self.ledger.disconnected(name)
        await asyncio.to_thread(self._flush_quietly)
        await self.liveness.stop()
        if self._watcher is not None:
            self._watcher.close()
        event(log, "stopped", replica=self.replica)

    async def wait_stopped(self) -> None:
        await self._stopping.wait()

    def _handlers(self) -> grpc.GenericRpcHandler:
        return grpc.method_handlers_generic_handler(
            SERVICE,
            {
                "StreamAggregatedResources": grpc.stream_stream_rpc_method_handler(
                    self._sotw,
                    request_deserializer=_parser(discovery_pb2.DiscoveryRequest),
                    response_serializer=discovery_pb2.DiscoveryResponse.SerializeToString,
                ),
                "DeltaAggregatedResources": grpc.stream_stream_rpc_method_handler(
                    self._delta,
                    request_deserializer=_parser(discovery_pb2.DeltaDiscoveryRequest),
                    response_serializer=discovery_pb2.DeltaDiscoveryResponse.SerializeToString,
                ),
            },
        )

    # -- streams -----------------------------------------------------------------
    async def _sotw(self, request_iterator: Any, context: grpc.aio.ServicerContext) -> None:
        await self._serve(context, "sotw", lambda peer: SotwStream(peer))

    async def _delta(self, request_iterator: Any, context: grpc.aio.ServicerContext) -> None:
        await self._serve(context, "delta", lambda peer: DeltaStream(peer))

    async def _serve(self, context: grpc.aio.ServicerContext, mode: str, make: Callable[[Peer], Any]) -> None:
        first = await context.read()
        if first is grpc.aio.EOF:
            return
        if isinstance(first, _Malformed):
            await self._abort(context, grpc.StatusCode.INVALID_ARGUMENT, f"malformed request: {first.error}", None)
        node_id = first.node.id
        if not node_id:
            await self._abort(context, grpc.StatusCode.INVALID_ARGUMENT,
                              "the first request must carry node.id (the proxy's name)", None)
        try:
            auth = self.auth.authenticate(context.invocation_metadata() or (), node_id)
        except AuthError as exc:
            event(log, "refused", level=logging.WARNING, node=node_id, mode=mode, peer=context.peer(), reason=str(exc))
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, str(exc))
        assert self.state is not None
        proxy = self.state.world.proxies[auth.proxy]
        stream = _Stream(auth.proxy, mode, auth, first.node)
        peer = Peer(
            auth.proxy, f"{next(self._stream_ids):x}", mode=mode, ledger=self.ledger,
            nacks=self.nacks.setdefault(auth.proxy, NackMemory()), secret_facts=self._secret_facts, metrics=self.metrics,
        )
        engine = make(peer)
        self._register(stream)
        event(log, "connected", proxy=auth.proxy, mode=mode, peer=context.peer())
        read_task: asyncio.Future[Any] | None = None
        wake: asyncio.Future[Any] | None = None
        try:
            # inside the try: a stream refused (or cancelled) in a hook is unregistered too
            for h in self.hooks:
                try:
                    await self._call_hook(h.connected, proxy, first.node)
                except StreamRefused as exc:
                    await self._abort(context, grpc.StatusCode[exc.code], str(exc), auth.proxy)
            req: Any = first
            while True:
                if req is not None:
                    if isinstance(req, _Malformed):
                        await self._abort(context, grpc.StatusCode.INVALID_ARGUMENT, f"malformed request: {req.error}", auth.proxy)
                    try:
                        responses = engine.handle(req, self.state.snapshot(auth.proxy))
                    except ProtocolError as exc:
                        await self._abort(context, grpc.StatusCode.INVALID_ARGUMENT, str(exc), auth.proxy)
                    for resp in responses:
                        await context.write(resp)
                    req = None
                if read_task is None:
                    read_task = asyncio.ensure_future(context.read())
                wake = asyncio.ensure_future(stream.wake.wait())
                done, _ = await asyncio.wait({read_task, wake}, return_when=asyncio.FIRST_COMPLETED)
                if wake in done:
                    stream.wake.clear()
                    if stream.close_reason is not None:
                        event(log, "closed", proxy=auth.proxy, mode=mode, reason=stream.close_reason)
                        await context.abort(grpc.StatusCode.UNAUTHENTICATED, stream.close_reason)
                    for resp in engine.push(self.state.snapshot(auth.proxy)):
                        await context.write(resp)
                else:
                    wake.cancel()
                wake = None
                if read_task in done:
                    req = read_task.result()
                    read_task = None
                    if req is grpc.aio.EOF:
                        break
        finally:
            for task in (read_task, wake):
                if task is not None:
                    task.cancel()
            self._unregister(stream)
            event(log, "disconnected", proxy=auth.proxy, mode=mode)
            for h in self.hooks:
                await self._call_hook(h.disconnected, proxy, first.node)

    async def _abort(self, context: grpc.aio.ServicerContext, code: grpc.StatusCode, message: str, proxy: str | None) -> None:
        event(log, "rejected-request", level=logging.WARNING, proxy=proxy, code=code.name, reason=message)
        await context.abort(code, message)

    async def _call_hook(self, fn: Callable[..., Awaitable[None]], proxy: Proxy, node: base_pb2.Node) -> None:
        try:
            await fn(proxy, node)
        except StreamRefused:
            raise  # the hook's decision: the caller ends the stream with its status
        except Exception as exc:  # noqa: BLE001 - a hook must not break the stream
            event(log, "hook-failed", level=logging.ERROR, proxy=proxy.name, error=repr(exc))

    def _register(self, stream: _Stream) -> None:
        assert self.state is not None
        group = self.streams.setdefault(stream.proxy, set())
        group.add(stream)
        self.state.track(stream.proxy)
        if len(group) == 1 and self.metrics is not None:
            self.metrics.proxy_connected(stream.proxy)

    def _unregister(self, stream: _Stream) -> None:
        assert self.state is not None
        group = self.streams.get(stream.proxy)
        if group is not None:
            group.discard(stream)
            if not group:
                del self.streams[stream.proxy]
                self.state.untrack(stream.proxy)
                self.ledger.disconnected(stream.proxy)
                if self.metrics is not None:
                    self.metrics.proxy_disconnected(stream.proxy)

    def _wake(self, proxies: Sequence[str] | set[str]) -> None:
        for name in proxies:
            for s in self.streams.get(name, ()):
                s.wake.set()

    def _secret_facts(self, resources: Sequence[Resource]) -> dict[str, Any]:
        facts: dict[str, Any] = {}
        roots = self.state.world.trust_roots_pem if self.state else ()
        for r in resources:
            cached = self._facts.get(r)
            if cached is None:
                cached = {}
                try:
                    if r.name == SECRET_TRUST:
                        cached["acked_roots"] = bundle_fingerprints(r.body)
                    elif r.name == SECRET_IDENTITY:
                        issuer = identity_issuer(r.body, roots)
                        if issuer:
                            cached["acked_issuer"] = issuer
                        not_after = identity_not_after(r.body)
                        if not_after is not None:
                            cached["cert_not_after"] = not_after
                except Exception:  # noqa: BLE001 - facts are best effort, never fatal
                    cached = {}
                self._facts[r] = cached
            facts.update(cached)
        return facts

    # -- store changes -------------------------------------------------------------
    def _load(self) -> tuple[World, dict[str, Any]]:
        with reading(self.engine) as conn:  # one snapshot, no write lock
            return load_world_conn(conn), load_credentials(conn)

    def _refresh(self) -> tuple[World, dict[str, Any], WorldIndex | None, WorldChange | None]:
        """The World now (in a worker thread): the revisions since the last one applied
        to it (where writers are serialized: SQLite, PostgreSQL), else a full reload
        (also every FULL_RELOAD_INTERVAL, as a safety net)."""
        assert self.state is not None
        c0 = time.thread_time()
        result = None
        if self._incremental and time.monotonic() - self._full_at < FULL_RELOAD_INTERVAL:
            with reading(self.engine) as conn:
                revisions = changes_since(conn, self.state.world.revision)
            result = patch(self.state.world, self.state.index, self._creds, revisions, ordered=True)
        if result is None:
            world, creds = self._load()
            self._full_at = time.monotonic()
            out: tuple[World, dict[str, Any], WorldIndex | None, WorldChange | None] = (world, creds, None, None)
        else:
            world, index, creds, change = result
            out = (world, creds, index, change)
        self.last_load_cpu_ms = (time.thread_time() - c0) * 1000
        return out

    def apply_world(self, world: World, creds: dict[str, Any], index: WorldIndex | None = None,
                    change: WorldChange | None = None) -> set[str]:
        """Adopt a new World: recompute affected proxies, wake their streams, close
        streams whose token no longer works. Returns the proxies pushed to."""
        assert self.state is not None
        t0 = time.thread_time()
        self.auth.update(creds)
        self._creds = creds
        old = self.state.world
        changed = self.state.set_world(world, index=index, change=change)
        for group in self.streams.values():
            for s in group:
                why = self.auth.still_valid(s.auth)
                if why is not None and s.close_reason is None:
                    s.close_reason = why
                    s.wake.set()
        self.ledger.forget(set(old.proxies) - set(world.proxies))
        self._wake(changed)
        self.last_apply_cpu_ms = (time.thread_time() - t0) * 1000
        event(log, "world-applied", revision=world.revision, proxies_changed=len(changed),
              incremental=change is not None, load_cpu_ms=f"{self.last_load_cpu_ms:.1f}",
              cpu_ms=f"{self.last_apply_cpu_ms:.1f}")
        return changed

    async def _watch_loop(self) -> None:
        assert self._watcher is not None
        while True:
            try:
                await self._watcher.wait()
                self.apply_world(*await asyncio.to_thread(self._refresh))
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - keep serving the last good World
                event(log, "reload-failed", level=logging.ERROR, error=repr(exc))
                await asyncio.sleep(1.0)

    async def _flush_loop(self) -> None:
        while True:
            await asyncio.sleep(self.flush_interval)
            await asyncio.to_thread(self._flush_quietly)

    def _flush_quietly(self) -> None:
        try:
            self.ledger.flush()
        except Exception as exc:  # noqa: BLE001 - retried at the next flush
            event(log, "ledger-flush-failed", level=logging.WARNING, error=repr(exc))

    async def _tick_loop(self) -> None:
        """Every second: identities at half-life get re-pushed; a CA rotation advances."""
        while True:
            await asyncio.sleep(TICK_INTERVAL)
            now = self.clock()
            try:
                if self.state is not None and self.secrets.next_refresh(now) <= now:
                    changed = self.state.refresh_secrets()
                    if changed:
                        event(log, "secrets-refreshed", proxies=len(changed))
                        self._wake(changed)
                if self.rotation is not None:
                    await asyncio.to_thread(self.rotation, self.engine, now)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001
                event(log, "tick-failed", level=logging.ERROR, error=repr(exc))

    # -- introspection -------------------------------------------------------------
    def connected(self) -> list[dict[str, Any]]:
        out = []
        for name, group in sorted(self.streams.items()):
            for s in group:
                out.append({"proxy": name, "mode": s.mode, "since": s.since})
        return out


