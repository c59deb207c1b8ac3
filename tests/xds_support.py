"""Helpers for xDS tests: a store with a mesh, rows through the store's own repositories,
an in-process server, and a fake ADS client (state-of-the-world or delta) over real gRPC."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import grpc
from envoy.config.core.v3 import base_pb2
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2
from google.rpc import status_pb2
from sqlalchemy import Engine, update

from meshgate.ca import create_keybox, initialize_ca, load_keybox
from meshgate.ca.identity import IdentityIssuer
from meshgate.store import schema
from meshgate.store.db import open_store
from meshgate.store.instances import add_instance, remove_instance
from meshgate.store.mesh import create_mesh
from meshgate.store.proxies import add_proxy
from meshgate.store.services import add_service
from meshgate.store.txn import write
from meshgate.xds import types
from meshgate.xds.secrets import IssuerSecretProvider
from meshgate.xds.server import XdsServer

CDS, EDS, SDS, LDS, RDS = types.CLUSTER, types.ENDPOINT, types.SECRET, types.LISTENER, types.ROUTE


def new_mesh(db_path: Path | str, *, default_action: str = "allow", mtls_mode: str = "strict") -> Engine:
    """What `meshgate init` makes (mesh + root CA + key) in a fresh store (SQLite path or URL)."""
    engine = open_store(str(db_path), must_exist=False)
    keybox = create_keybox(str(engine.url))
    with write(engine, "init") as w:
        create_mesh(w, "example.org", mtls_mode=mtls_mode, default_action=default_action)
        initialize_ca(w, keybox, "example.org", time.time())
    return engine


def issuer_secrets(engine: Engine) -> IssuerSecretProvider:
    """The real mesh CA as the server's SecretProvider."""
    return IssuerSecretProvider(IdentityIssuer(engine, load_keybox(str(engine.url))))


def service(engine: Engine, name: str, protocol: str = "http", port: int = 80) -> None:
    with write(engine, f"add service {name}") as w:
        add_service(w, name, protocol=protocol, port=port)


def instance(engine: Engine, svc: str, inbound_port: int, app_port: int = 8080,
             address: str = "127.0.0.1", proxy: str | None = None) -> int:
    with write(engine, f"add instance of {svc}") as w:
        return add_instance(w, svc, address, inbound_port, app_port, proxy=proxy).id


def drop_instance(engine: Engine, instance_id: int) -> None:
    with write(engine, f"remove instance {instance_id}") as w:
        remove_instance(w, instance_id)


def sidecar(engine: Engine, name: str, svc: str, outbound_port: int = 15001) -> str:
    with write(engine, f"add proxy {name}") as w:
        return add_proxy(w, name, kind="sidecar", service=svc, outbound_port=outbound_port)[1]


def change_instance(engine: Engine, instance_id: int, **values: Any) -> None:
    """A raw change of an instance's columns (tests only: instances have no update command),
    recorded in a revision like any write."""
    from meshgate.store.rows import read_row, record_row

    with write(engine, "test: change instance") as w:
        before = read_row(w.conn, schema.instances, instance_id)
        w.conn.execute(update(schema.instances).where(schema.instances.c.id == instance_id).values(**values))
        record_row(w, schema.instances, instance_id, before)


def set_instance_address(engine: Engine, instance_id: int, address: str) -> None:
    """A raw change (tests only): move an instance to another address."""
    change_instance(engine, instance_id, address=address)


@asynccontextmanager
async def serving(engine: Engine, **kwargs: Any) -> AsyncIterator[XdsServer]:
    kwargs.setdefault("poll_interval", 0.05)
    kwargs.setdefault("flush_interval", 0.1)
    server = XdsServer(engine, **kwargs)
    await server.start("127.0.0.1:0")
    try:
        yield server
    finally:
        await server.stop(0.2)


class AdsClient:
    """A fake Envoy: writes requests, reads responses, over a real gRPC stream."""

    def __init__(self, port: int, token: str | None, *, delta: bool = False,
                 metadata: list[tuple[str, str]] | None = None) -> None:
        self.port = port
        self.delta = delta
        md = list(metadata or [])
        if token is not None:
            md.append(("authorization", f"Bearer {token}"))
        self.metadata = md
        self.channel: grpc.aio.Channel | None = None
        self.call: Any = None

    async def __aenter__(self) -> AdsClient:
        self.channel = grpc.aio.insecure_channel(f"127.0.0.1:{self.port}")
        stub = ads_pb2_grpc.AggregatedDiscoveryServiceStub(self.channel)
        method = stub.DeltaAggregatedResources if self.delta else stub.StreamAggregatedResources
        self.call = method(metadata=self.metadata)
        self.queue: asyncio.Queue[Any] = asyncio.Queue()
        self.reader = asyncio.ensure_future(self._read_all())
        return self

    async def _read_all(self) -> None:
        """Read responses into a queue (a timed-out read would cancel the whole RPC)."""
        try:
            while True:
                resp = await self.call.read()
                if resp is grpc.aio.EOF:
                    break
                self.queue.put_nowait(resp)
        except grpc.aio.AioRpcError:
            pass
        finally:
            self.queue.put_nowait(None)

    async def __aexit__(self, *exc: object) -> None:
        if self.call is not None:
            self.call.cancel()
        self.reader.cancel()
        if self.channel is not None:
            await self.channel.close()

    async def send(self, req: Any) -> None:
        await self.call.write(req)

    async def recv(self, timeout: float = 3.0) -> Any:
        resp = await asyncio.wait_for(self.queue.get(), timeout)
        assert resp is not None, f"stream ended: {await self.call.code()} {await self.call.details()}"
        return resp

    async def nothing(self, wait: float = 0.4) -> None:
        """Assert no response arrives within `wait` seconds."""
        try:
            resp = await asyncio.wait_for(self.queue.get(), wait)
        except TimeoutError:
            return
        raise AssertionError(f"unexpected response: {resp}")

    async def status(self, timeout: float = 3.0) -> grpc.StatusCode:
        """Wait for the stream to end; its status code (responses before it are dropped)."""
        await asyncio.wait_for(asyncio.shield(self.reader), timeout)
        return await self.call.code()

    # -- building requests --------------------------------------------------
    @staticmethod
    def sotw(type_url: str, names: list[str] | None = None, *, version: str = "", nonce: str = "",
             node: str | None = None, error: str | None = None) -> discovery_pb2.DiscoveryRequest:
        req = discovery_pb2.DiscoveryRequest(type_url=type_url, resource_names=names or [],
                                             version_info=version, response_nonce=nonce)
        if node is not None:
            req.node.CopyFrom(base_pb2.Node(id=node, cluster="test"))
        if error is not None:
            req.error_detail.CopyFrom(status_pb2.Status(code=3, message=error))
        return req

    @staticmethod
    def dreq(type_url: str, subscribe: list[str] | None = None, *, unsubscribe: list[str] | None = None,
             nonce: str = "", node: str | None = None, initial: dict[str, str] | None = None,
             error: str | None = None) -> discovery_pb2.DeltaDiscoveryRequest:
        req = discovery_pb2.DeltaDiscoveryRequest(
            type_url=type_url, resource_names_subscribe=subscribe or [],
            resource_names_unsubscribe=unsubscribe or [], response_nonce=nonce,
            initial_resource_versions=initial or {},
        )
        if node is not None:
            req.node.CopyFrom(base_pb2.Node(id=node, cluster="test"))
        if error is not None:
            req.error_detail.CopyFrom(status_pb2.Status(code=3, message=error))
        return req


def names_of(resp: Any) -> list[str]:
    """Resource names in a SotW or delta response."""
    msg_type = types.MESSAGE[resp.type_url]
    if isinstance(resp, discovery_pb2.DeltaDiscoveryResponse):
        return [r.name for r in resp.resources]
    return [msg_type.FromString(a.value).name if resp.type_url != EDS
            else msg_type.FromString(a.value).cluster_name for a in resp.resources]


class ServerThread:
    """An XdsServer on its own event loop in a thread, for tests driving real Envoys
    with blocking code. Stopped by `stop()` (or the context manager)."""

    def __init__(self, engine: Engine, **kwargs: Any) -> None:
        import threading

        kwargs.setdefault("poll_interval", 0.05)
        kwargs.setdefault("flush_interval", 0.1)
        self.engine = engine
        self.kwargs = kwargs
        self.loop = asyncio.new_event_loop()
        self.server: XdsServer | None = None
        self.port: int | None = None
        self.thread = threading.Thread(target=self.loop.run_forever, name="xds-server", daemon=True)

    def start(self, listen: str = "127.0.0.1:0", credentials: Any = None) -> ServerThread:
        self.thread.start()

        async def boot() -> int:
            self.server = XdsServer(self.engine, **self.kwargs)
            return await self.server.start(listen, credentials=credentials)

        self.port = asyncio.run_coroutine_threadsafe(boot(), self.loop).result(10)
        return self

    def call(self, fn: Any, *args: Any) -> Any:
        """Run `fn(*args)` on the server's loop (its state is not thread-safe)."""
        async def go() -> Any:
            return fn(*args)

        return asyncio.run_coroutine_threadsafe(go(), self.loop).result(10)

    def stop(self) -> None:
        if self.server is not None:
            asyncio.run_coroutine_threadsafe(self.server.stop(0.2), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()

    def __enter__(self) -> ServerThread:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class FakeSecrets:
    """A SecretProvider test double: placeholder secrets (enough for fake clients),
    with the trust bundle naming the World's revision when `vary` is set."""

    def __init__(self, vary: bool = False) -> None:
        self.vary = vary
        self.calls: list[str] = []
        self.forgotten: list[str] = []

    def secrets_for(self, proxy: Any, world: Any, now: float) -> dict[str, Any]:
        from meshgate.xds.translate.tls import identity_secret, trust_bundle_secret

        self.calls.append(proxy.name)
        bundle = f"roots@{world.revision}" if self.vary else "roots"
        return {"identity": identity_secret(f"cert of {proxy.name}", "key"), "trust-bundle": trust_bundle_secret(bundle)}

    def next_refresh(self, now: float) -> float:
        return float("inf")

    def forget(self, proxy_name: str) -> None:
        self.forgotten.append(proxy_name)


def mesh_fixture(tmp_path: Path, url: str | None = None) -> tuple[Engine, dict[str, str]]:
    """web (http:80) with sidecar web-1 and its instance; orders (http:8080) with one
    instance and sidecar orders-1; default allow. Returns the engine and the tokens.
    The store is tmp_path/mesh.db, or `url` (e.g. the `store_url` fixture's)."""
    engine = new_mesh(url or tmp_path / "mesh.db")
    service(engine, "web")
    service(engine, "orders", port=8080)
    tokens = {"web-1": sidecar(engine, "web-1", "web"), "orders-1": sidecar(engine, "orders-1", "orders", 15002)}
    instance(engine, "web", 15011, 9000, proxy="web-1")
    instance(engine, "orders", 15010, 8080, proxy="orders-1")
    return engine, tokens
