"""Self-registration (meshgate/xds/registration.py): a sidecar's instance follows its stream.

Streams come from a fake ADS client over real gRPC to an in-process XdsServer
with the Registrar hook; the sweep runs on a fake clock (`registrar.sweep()`).
The same flow with real Envoys under `meshgate serve` is in test_fleet_run.py.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import grpc
import pytest
from envoy.config.core.v3 import base_pb2
from google.protobuf import struct_pb2
from sqlalchemy import Engine, insert, select

from meshgate.store import schema
from meshgate.store.db import create
from meshgate.store.instances import add_instance
from meshgate.store.mesh import create_mesh
from meshgate.store.migrations import upgrade
from meshgate.store.proxies import add_proxy
from meshgate.store.services import add_service
from meshgate.store.txn import write
from meshgate.xds.registration import ACTOR, Registrar
from tests.xds_support import CDS, LDS, AdsClient, FakeSecrets, serving


class Clock:
    def __init__(self, t: float = 1000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def _engine(url: str) -> tuple[Engine, dict[str, str]]:
    engine = create(url)
    upgrade(engine)
    with write(engine, "setup") as w:
        create_mesh(w, "example.org", default_action="allow", instance_grace=30)
        add_service(w, "orders", port=8080)
        add_service(w, "web", port=8080)
        tokens = {
            "orders-1": add_proxy(w, "orders-1", kind="sidecar", service="orders")[1],
            "orders-2": add_proxy(w, "orders-2", kind="sidecar", service="orders", outbound_port=15002)[1],
            "public": add_proxy(w, "public", kind="edge", listen="127.0.0.1:8443")[1],
        }
    return engine, tokens


@pytest.fixture
def mesh(tmp_path: Path) -> Any:
    engine, tokens = _engine(f"sqlite:///{tmp_path / 'm.db'}")
    yield engine, tokens
    engine.dispose()


def node(name: str, meta: dict[str, Any] | None) -> base_pb2.Node:
    n = base_pb2.Node(id=name, cluster="test")
    if meta is not None:
        s = struct_pb2.Struct()
        s.update({"meshgate": meta})
        n.metadata.CopyFrom(s)
    return n


def sidecar_meta(address: str = "127.0.0.1", inbound: Any = 15006, app: Any = 8080,
                 service: str = "orders") -> dict[str, Any]:
    return {"kind": "sidecar", "service": service,
            "instance": {"address": address, "inbound_port": inbound, "app_port": app}}


def instances(engine: Engine) -> list[dict[str, Any]]:
    i = schema.instances
    with engine.connect() as conn:
        return [dict(r._mapping) for r in conn.execute(select(i).order_by(i.c.id))]


def revisions(engine: Engine) -> list[dict[str, Any]]:
    r = schema.revisions
    with engine.connect() as conn:
        return [dict(x._mapping) for x in conn.execute(select(r).order_by(r.c.id))]


async def connect(port: int, token: str, name: str, meta: dict[str, Any] | None) -> AdsClient:
    c = AdsClient(port, token, delta=True)
    await c.__aenter__()
    req = c.dreq(CDS)
    req.node.CopyFrom(node(name, meta))
    await c.send(req)
    return c


async def refused(engine: Engine, token: str, name: str, meta: dict[str, Any] | None) -> tuple[grpc.StatusCode, str]:
    """Connect proxy `name` with node metadata `meta` to a registering server: the stream
    must be refused before anything is sent, with no instance and no revision written.
    Returns the status code and its details."""
    before = (instances(engine), revisions(engine))
    async with serving(engine, secrets=FakeSecrets(), hooks=[Registrar(engine, replica="r1")]) as srv:
        c = await connect(srv.port, token, name, meta)
        try:
            code = await c.status()
            details: str = await c.call.details()
            assert c.queue.get_nowait() is None  # refused before anything was sent
        finally:
            await c.__aexit__()
    assert (instances(engine), revisions(engine)) == before
    return code, details


async def test_connect_registers_the_instance_and_its_inbound_side_follows(mesh) -> None:  # type: ignore[no-untyped-def]
    engine, tokens = mesh
    registrar = Registrar(engine, replica="r1")
    async with serving(engine, secrets=FakeSecrets(), hooks=[registrar], replica="r1") as srv:
        c = await connect(srv.port, tokens["orders-1"], "orders-1", sidecar_meta())
        try:
            await c.send(c.dreq(LDS))
            names: dict[str, set[str]] = {CDS: set(), LDS: set()}
            # the first answers come from the World before the registration; `local-app`
            # and the inbound listener follow with the World that has the instance
            while "local-app" not in names[CDS] or "inbound" not in names[LDS]:
                resp = await c.recv()
                names.setdefault(resp.type_url, set()).update(r.name for r in resp.resources)
                await c.send(c.dreq(resp.type_url, nonce=resp.nonce))
        finally:
            await c.__aexit__()
    [inst] = instances(engine)
    assert (inst["service"], inst["address"], inst["inbound_port"], inst["app_port"]) == ("orders", "127.0.0.1", 15006, 8080)
    assert (inst["proxy"], inst["source"], inst["disconnected_at"]) == ("orders-1", "proxy", None)
    last = revisions(engine)[-1]
    assert last["actor"] == ACTOR and "orders-1 connected (127.0.0.1:15006)" in last["summary"]
    [change] = json.loads(last["changes"])
    assert (change["kind"], change["op"], change["before"]) == ("instances", "add", None)
    assert change["after"]["proxy"] == "orders-1" and change["after"]["source"] == "proxy"


@pytest.mark.parametrize(
    ("name", "meta", "fields"),
    [
        ("orders-1", sidecar_meta(address="no such host!", inbound=70000, app="8080"),
         ["instance.address", "instance.inbound_port: 70000", "instance.app_port: '8080'"]),
        ("orders-1", sidecar_meta(inbound=15006.5, app=True), ["instance.inbound_port: 15006.5", "instance.app_port: True"]),
        ("orders-1", sidecar_meta(service="web"), ["meshgate.service: 'web', but proxy 'orders-1' is the sidecar of 'orders'"]),
        ("orders-1", {"kind": "edge"}, ["meshgate.kind: 'edge', but proxy 'orders-1' is a sidecar"]),
        ("orders-1", {"kind": "sidecar", "service": "orders", "instance": "10.0.0.1:80"}, ["meshgate.instance: must be an object"]),
        ("orders-1", {**sidecar_meta(), "instance": {**sidecar_meta()["instance"], "weight": 3}},
         ["unknown field(s): weight"]),
        ("public", {"kind": "edge", "instance": sidecar_meta()["instance"]}, ["only sidecars register instances"]),
    ],
)
async def test_bad_metadata_refuses_the_stream_naming_every_field(mesh, name, meta, fields) -> None:  # type: ignore[no-untyped-def]
    engine, tokens = mesh
    code, details = await refused(engine, tokens[name], name, meta)  # nothing registered, no revision
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert f'node metadata of proxy "{name}"' in details
    for f in fields:
        assert f in details, details
    assert instances(engine) == []


async def test_sidecar_without_instance_metadata_registers_nothing(mesh) -> None:  # type: ignore[no-untyped-def]
    engine, tokens = mesh
    async with serving(engine, secrets=FakeSecrets(), hooks=[Registrar(engine, replica="r1")]) as srv:
        for meta in (None, {"kind": "sidecar", "service": "orders"}):
            c = await connect(srv.port, tokens["orders-1"], "orders-1", meta)
            try:
                assert (await c.recv()).type_url == CDS  # served
            finally:
                await c.__aexit__()
    assert instances(engine) == []


async def test_address_held_by_a_cli_instance_refuses_the_stream(mesh) -> None:  # type: ignore[no-untyped-def]
    engine, tokens = mesh
    with write(engine, "cli instance") as w:
        add_instance(w, "orders", "127.0.0.1", 15006, 9000)
    async with serving(engine, secrets=FakeSecrets(), hooks=[Registrar(engine, replica="r1")]) as srv:
        c = await connect(srv.port, tokens["orders-1"], "orders-1", sidecar_meta())
        try:
            assert await c.status() == grpc.StatusCode.FAILED_PRECONDITION
            details = await c.call.details()
        finally:
            await c.__aexit__()
    assert "127.0.0.1:15006 is already registered" in details and "by the CLI" in details
    assert [(i["proxy"], i["source"]) for i in instances(engine)] == [(None, "cli")]


async def test_disconnect_marks_grace_keeps_a_reconnect_then_removal(mesh) -> None:  # type: ignore[no-untyped-def]
    engine, tokens = mesh
    clock = Clock()
    registrar = Registrar(engine, replica="r1", clock=clock, settle=0)
    async with serving(engine, secrets=FakeSecrets(), hooks=[registrar], replica="r1") as srv:
        c = await connect(srv.port, tokens["orders-1"], "orders-1", sidecar_meta())
        await c.recv()
        assert not await registrar.sweep()  # connected: nothing to do
        await c.__aexit__()
        await _until(lambda: "orders-1" not in registrar.live)
        result = await registrar.sweep()
        assert result.marked == ["orders-1"]
        [inst] = instances(engine)
        assert inst["disconnected_at"] == clock.t
        assert revisions(engine)[-1]["actor"] == ACTOR
        assert "orders-1 (127.0.0.1:15006) disconnected, removed after 30s" in revisions(engine)[-1]["summary"]

        clock.t += 29  # within the grace: kept
        assert not await registrar.sweep()
        n = len(revisions(engine))
        c = await connect(srv.port, tokens["orders-1"], "orders-1", sidecar_meta())  # back in time
        await c.recv()
        [inst] = instances(engine)
        assert inst["disconnected_at"] is None and len(revisions(engine)) == n + 1
        assert "orders-1 connected" in revisions(engine)[-1]["summary"]
        await c.__aexit__()
        await _until(lambda: "orders-1" not in registrar.live)
        assert (await registrar.sweep()).marked == ["orders-1"]
        clock.t += 30
        result = await registrar.sweep()
        assert result.removed == ["orders-1"]
    assert instances(engine) == []
    last = revisions(engine)[-1]
    assert last["actor"] == ACTOR and "removed" in last["summary"]
    [change] = json.loads(last["changes"])
    assert (change["kind"], change["op"], change["after"]) == ("instances", "remove", None)


async def test_a_stream_that_ended_here_is_marked_even_while_settling(mesh) -> None:  # type: ignore[no-untyped-def]
    """The start-up settle time is for sidecars that have not reconnected yet, not for
    one this replica saw leave."""
    engine, tokens = mesh
    registrar = Registrar(engine, replica="r1", settle=3600)
    async with serving(engine, secrets=FakeSecrets(), hooks=[registrar]) as srv:
        c = await connect(srv.port, tokens["orders-1"], "orders-1", sidecar_meta())
        await c.recv()
        await c.__aexit__()
        await _until(lambda: not registrar.live)
        assert (await registrar.sweep()).marked == ["orders-1"]


async def test_reconnect_with_the_same_instance_writes_nothing(mesh) -> None:  # type: ignore[no-untyped-def]
    engine, tokens = mesh
    async with serving(engine, secrets=FakeSecrets(), hooks=[Registrar(engine, replica="r1")]) as srv:
        for _ in range(2):
            c = await connect(srv.port, tokens["orders-1"], "orders-1", sidecar_meta())
            await c.recv()
            await c.__aexit__()
            n = len(revisions(engine))
    assert len(revisions(engine)) == n and len(instances(engine)) == 1


async def test_a_sidecar_that_moved_updates_its_instance_and_takes_over_a_gone_ones_address(mesh) -> None:  # type: ignore[no-untyped-def]
    engine, tokens = mesh
    clock = Clock()
    registrar = Registrar(engine, replica="r1", clock=clock, settle=0)
    async with serving(engine, secrets=FakeSecrets(), hooks=[registrar]) as srv:
        c1 = await connect(srv.port, tokens["orders-1"], "orders-1", sidecar_meta(inbound=15006))
        await c1.recv()
        await c1.__aexit__()
        await _until(lambda: not registrar.live)
        await registrar.sweep()  # orders-1 gone: its instance is in its grace
        # orders-2 starts on the address orders-1 had: it takes it over
        c2 = await connect(srv.port, tokens["orders-2"], "orders-2", sidecar_meta(inbound=15006, app=8081))
        await c2.recv()
        await c2.__aexit__()
        # orders-2 comes back on another port: its instance moves
        c2 = await connect(srv.port, tokens["orders-2"], "orders-2", sidecar_meta(inbound=15007, app=8081))
        await c2.recv()
        await c2.__aexit__()
    assert [(i["proxy"], i["inbound_port"], i["app_port"], i["disconnected_at"]) for i in instances(engine)] == [
        ("orders-2", 15007, 8081, None)]


@pytest.fixture
def both(store_url: str) -> Any:
    engine, tokens = _engine(store_url)
    yield engine
    engine.dispose()


async def test_sweep_leaves_instances_whose_sidecar_streams_from_another_replica(both: Engine) -> None:
    engine = both
    clock = Clock()
    with write(engine, "registered by replica r2") as w:
        for p, port in (("orders-1", 15006), ("orders-2", 15007)):
            add_instance(w, "orders", "127.0.0.1", port, 8080, proxy=p, source="proxy")
    with engine.begin() as conn:  # orders-1 streams from r2 (its ledger wrote this)
        conn.execute(insert(schema.proxy_status).values(
            proxy="orders-1", type="cds", replica="r2", connected=True, last_seen=clock.t))
        conn.execute(insert(schema.proxy_status).values(
            proxy="orders-2", type="cds", replica="r2", connected=False, last_seen=clock.t))
    r1 = Registrar(engine, replica="r1", clock=clock, settle=5)
    r1.started = clock.t
    clock.t += 1
    assert not await r1.sweep()  # settling: sidecars may still be reconnecting
    clock.t += 5
    result = await r1.sweep()
    assert result.marked == ["orders-2"]  # connected nowhere
    clock.t += 31
    result = await r1.sweep()
    assert result.removed == ["orders-2"]
    assert [i["proxy"] for i in instances(engine)] == ["orders-1"]  # r2 owns it

    # a mark left behind by a replica the sidecar moved away from is lifted by its new one
    with write(engine, "stale mark") as w:
        w.conn.execute(schema.instances.update().values(disconnected_at=clock.t - 100))
    r2 = Registrar(engine, replica="r2", clock=clock, settle=0)
    r2.live["orders-1"] = 1
    assert (await r2.sweep()).cleared == ["orders-1"]
    assert instances(engine)[0]["disconnected_at"] is None


async def test_grace_counts_from_the_replica_start(both: Engine) -> None:
    """A control plane down for longer than the grace does not remove instances at start."""
    engine = both
    clock = Clock()
    with write(engine, "old mark") as w:
        add_instance(w, "orders", "127.0.0.1", 15006, 8080, proxy="orders-1", source="proxy")
        w.conn.execute(schema.instances.update().values(disconnected_at=clock.t - 3600))
    r = Registrar(engine, replica="r1", clock=clock, settle=5)
    r.started = clock.t
    clock.t += 29
    assert not await r.sweep()
    clock.t += 1
    assert (await r.sweep()).removed == ["orders-1"]


async def test_a_stopping_server_marks_nothing(mesh) -> None:  # type: ignore[no-untyped-def]
    engine, tokens = mesh
    registrar = Registrar(engine, replica="r1", settle=0, interval=0.05)
    async with serving(engine, secrets=FakeSecrets(), hooks=[registrar]) as srv:
        await registrar.start()
        c = await connect(srv.port, tokens["orders-1"], "orders-1", sidecar_meta())
        await c.recv()
        await registrar.stop()  # what `meshgate serve` does before closing streams
    await c.__aexit__()
    [inst] = instances(engine)
    assert inst["disconnected_at"] is None


async def _until(cond: Any, timeout: float = 5.0) -> None:
    import asyncio
    import time

    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.01)
