"""The store refuses an instance whose sidecar would listen twice on one address
(meshgate/store/ports.py): on 127.0.0.1, its inbound port is neither its own
sidecar's outbound port nor a tcp service's port (that sidecar's
`outbound-tcp/<svc>` listener). Envoy NACKs such a listener update ("duplicate
address"); the store now refuses it on every write path: `instance add`, a tcp
service onto such a port, `apply`, a rollback, and self-registration.

Each refusal: exit 1, the message names the field, the port, the sidecar and
why, and the database is unchanged (full dump compared).
"""

from __future__ import annotations

import json
import textwrap
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest
from sqlalchemy import update

from meshgate.store import schema
from meshgate.store.db import open_store
from meshgate.store.instances import add_instance
from meshgate.store.ports import WHY_INBOUND
from meshgate.store.txn import write
from meshgate.xds.registration import Registrar
from tests.conftest import Invoke
from tests.test_fleet_registration import connect, instances, refused, sidecar_meta
from tests.xds_support import CDS, FakeSecrets, serving

OUTBOUND = 15001  # orders-1's outbound port
TCP = 6379  # the tcp service cache


@pytest.fixture
def mesh(initialized: Invoke) -> Invoke:
    for args in (("service", "add", "orders", "--port", "8080"),
                 ("service", "add", "cache", "--protocol", "tcp", "--port", str(TCP)),
                 ("proxy", "add", "orders-1", "--service", "orders", "--outbound-port", str(OUTBOUND))):
        r = initialized(*args)
        assert r.exit_code == 0, r.output
    return initialized


def _refused(run: Invoke, db_dump: Callable[[], str], *args: str) -> str:
    before = db_dump()
    r = run(*args)
    assert r.exit_code == 1, r.output
    assert "Traceback" not in r.output
    assert db_dump() == before  # nothing written, no revision
    return r.output


def test_instance_on_its_sidecars_outbound_port_is_refused(mesh: Invoke, db_dump: Callable[[], str]) -> None:
    out = _refused(mesh, db_dump, "instance", "add", "orders", "--address", "127.0.0.1", "--inbound-port",
                   str(OUTBOUND), "--app-port", "9", "--proxy", "orders-1")
    assert f'error: instance 127.0.0.1:{OUTBOUND} of service "orders": inbound_port {OUTBOUND} on 127.0.0.1 ' \
           f'is the outbound port of sidecar "orders-1"' in out, out
    assert WHY_INBOUND in out and "(pick another --inbound-port)" in out


def test_instance_on_a_tcp_service_port_is_refused(mesh: Invoke, db_dump: Callable[[], str]) -> None:
    out = _refused(mesh, db_dump, "instance", "add", "orders", "--address", "127.0.0.1", "--inbound-port",
                   str(TCP), "--app-port", "9", "--proxy", "orders-1")
    assert f'inbound_port {TCP} on 127.0.0.1 is the port of tcp service "cache" (its local listener ' \
           f'outbound-tcp/cache on sidecar "orders-1")' in out, out
    assert "(pick another --inbound-port)" in out


@pytest.mark.parametrize("address, proxy", [
    ("127.0.0.1", None),  # no sidecar fronts it: no inbound listener anywhere
    ("127.0.0.2", "orders-1"),  # other addresses bind next to 127.0.0.1:PORT (SO_REUSEPORT)
    ("::1", "orders-1"),
    ("0.0.0.0", "orders-1"),
    ("orders-1.internal", "orders-1"),  # a host name binds 0.0.0.0
])
def test_what_does_not_collide_is_accepted(mesh: Invoke, address: str, proxy: str | None) -> None:
    args = ["instance", "add", "orders", "--address", address, "--inbound-port", str(OUTBOUND), "--app-port", "9"]
    r = mesh(*args, *(["--proxy", proxy] if proxy else []))
    assert r.exit_code == 0, r.output


def test_a_tcp_service_onto_an_instances_inbound_port_is_refused(mesh: Invoke, db_dump: Callable[[], str]) -> None:
    r = mesh("instance", "add", "orders", "--address", "127.0.0.1", "--inbound-port", "15006", "--app-port", "9",
             "--proxy", "orders-1")
    assert r.exit_code == 0, r.output
    why = 'port 15006 is the inbound port of instance 1 (127.0.0.1:15006), which sidecar "orders-1" fronts'
    # a new tcp service, an http service turned tcp, a tcp service moved onto the port
    out = _refused(mesh, db_dump, "service", "add", "db", "--protocol", "tcp", "--port", "15006")
    assert f'error: service "db": {why}' in out and "(pick another --port)" in out, out
    assert mesh("service", "add", "api", "--port", "15006").exit_code == 0
    out = _refused(mesh, db_dump, "service", "update", "api", "--protocol", "tcp")
    assert f'error: service "api": {why}' in out, out
    out = _refused(mesh, db_dump, "service", "update", "cache", "--port", "15006")
    assert f'error: service "cache": {why}' in out, out
    # the same port for an http service, or for a tcp service when the instance is elsewhere, is fine
    assert mesh("service", "update", "cache", "--port", "15007").exit_code == 0


CONFIG = textwrap.dedent("""\
    kind: Service
    name: orders
    port: 8080
    ---
    kind: Service
    name: cache
    protocol: tcp
    port: 6379
    ---
    kind: Sidecar
    name: orders-1
    service: orders
    outbound_port: 15001
    ---
    kind: Instance
    service: orders
    address: 127.0.0.1
    inbound_port: 15006
    app_port: 9
    proxy: orders-1
    """)


def test_apply_reports_the_collision_at_the_field(initialized: Invoke, tmp_path: Path,
                                                  db_dump: Callable[[], str]) -> None:
    path = tmp_path / "mesh.yaml"
    path.write_text(CONFIG.replace("inbound_port: 15006", "inbound_port: 15001"))
    out = _refused(initialized, db_dump, "apply", "-f", str(path))
    line = CONFIG.splitlines().index("inbound_port: 15006") + 1
    assert f'{path}:{line}:15 (Instance "127.0.0.1:15001"): inbound_port: 15001 on 127.0.0.1 is ' \
           f'the outbound port of sidecar "orders-1"; {WHY_INBOUND}' in out, out
    assert "nothing was changed" in out and "--inbound-port" not in out  # the file's field, not the CLI option

    # a tcp service moved onto an applied instance's port: reported at the service's `port`
    path.write_text(CONFIG)
    r = initialized("apply", "-f", str(path))
    assert r.exit_code == 0, r.output
    path.write_text(CONFIG.replace("port: 6379", "port: 15006"))
    out = _refused(initialized, db_dump, "apply", "-f", str(path))
    line = CONFIG.splitlines().index("port: 6379") + 1
    assert f'{path}:{line}:7 (Service "cache"): port: 15006 is the inbound port of instance 1 ' \
           '(127.0.0.1:15006), which sidecar "orders-1" fronts' in out, out
    # validate-only paths refuse it too, writing nothing
    out = _refused(initialized, db_dump, "plan", "-f", str(path))
    assert 'port: 15006 is the inbound port of instance 1' in out, out


def test_a_rollback_that_would_collide_is_refused(mesh: Invoke, db: str, db_dump: Callable[[], str]) -> None:
    """The one way a sidecar's outbound port changes: a rollback restores it, while the
    instance its sidecar registered itself (runtime state) is kept."""
    rev = json.loads(mesh("history", "-o", "json").output)[0]["revision"]
    for args in (("proxy", "remove", "orders-1"),
                 ("proxy", "add", "orders-1", "--service", "orders", "--outbound-port", "15002")):
        r = mesh(*args)
        assert r.exit_code == 0, r.output
    engine = open_store(db)
    try:  # orders-1 registers itself on 127.0.0.1:15001 (free for it now: its outbound port is 15002)
        with write(engine, "self-registration", "meshgate-server") as w:
            add_instance(w, "orders", "127.0.0.1", OUTBOUND, 9, proxy="orders-1", source="proxy")
    finally:
        engine.dispose()
    out = _refused(mesh, db_dump, "rollback", str(rev), "--yes")
    assert f"cannot roll back to revision {rev}: instance 1 (127.0.0.1:{OUTBOUND}, fronted by sidecar " \
           f'"orders-1"): inbound_port {OUTBOUND} is the outbound port of sidecar "orders-1"' in out, out
    assert "nothing was changed" in out


# -- self-registration: the stream is refused cleanly, nothing is written ---------------

@pytest.fixture
def engine(mesh: Invoke, db: str):  # type: ignore[no-untyped-def]
    engine = open_store(db)
    yield engine
    engine.dispose()


def _token(engine, name: str) -> str:  # type: ignore[no-untyped-def]
    from meshgate.store.proxies import rotate_token

    with write(engine, "token") as w:
        return rotate_token(w, name)[1]


async def _refused_stream(engine, meta: dict) -> str:  # type: ignore[no-untyped-def, type-arg]
    code, details = await refused(engine, _token(engine, "orders-1"), "orders-1", meta)
    assert code == grpc.StatusCode.FAILED_PRECONDITION
    return details


@pytest.mark.parametrize("port, owner", [(OUTBOUND, 'the outbound port of sidecar "orders-1"'),
                                         (TCP, 'the port of tcp service "cache"')])
async def test_self_registration_on_a_local_port_refuses_the_stream(engine, port: int, owner: str) -> None:  # type: ignore[no-untyped-def]
    details = await _refused_stream(engine, sidecar_meta(inbound=port))
    assert f'node metadata of proxy "orders-1": node.metadata.meshgate.instance.inbound_port {port} on ' \
           f"127.0.0.1 is {owner}" in details, details
    assert "(pick another --inbound-port for its bootstrap)" in details


async def test_self_registration_cannot_move_onto_a_local_port(engine) -> None:  # type: ignore[no-untyped-def]
    # registered on a good port first (the stream is served), then its bootstrap moves it
    token = _token(engine, "orders-1")
    async with serving(engine, secrets=FakeSecrets(), hooks=[Registrar(engine, replica="r1")]) as srv:
        c = await connect(srv.port, token, "orders-1", sidecar_meta(inbound=15006))
        try:
            assert (await c.recv()).type_url == CDS
        finally:
            await c.__aexit__()
    assert [(i["inbound_port"], i["source"]) for i in instances(engine)] == [(15006, "proxy")]
    with engine.begin() as conn:  # as if it had been marked disconnected: a move is a write
        conn.execute(update(schema.instances).values(disconnected_at=1.0))
    details = await _refused_stream(engine, sidecar_meta(inbound=OUTBOUND))
    assert f"inbound_port {OUTBOUND} on 127.0.0.1 is the outbound port of sidecar" in details, details
    assert [i["inbound_port"] for i in instances(engine)] == [15006]
