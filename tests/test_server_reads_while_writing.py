"""The server's own pure reads never wait for a writer (store.db.reading): while another
connection holds a SQLite write transaction open with uncommitted inserts, the admin
views, the CA expiry gauge, the CA state load, the replicas' watch, self-registration's
reconnect check and sweep, and the CA rotation tick answer with the committed state.

The busy timeout is cut to 0.2 s (as in test_cli_reads_while_writing.py), so a read that
took the write lock, or waited for it, fails with the locked error instead of passing late.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from sqlalchemy import Engine, insert

import meshgate.store.db as store_db
from meshgate.ca import rotation
from meshgate.ca.identity import IdentityIssuer
from meshgate.store import schema, txn
from meshgate.store.instances import add_instance
from meshgate.store.replicas import Liveness, register
from meshgate.store.txn import write
from meshgate.telemetry import admin
from meshgate.telemetry.service import Telemetry
from meshgate.xds.registration import Claim, Registrar, SweepResult
from tests.conftest import Invoke

TIMEOUT_MS = 200


@pytest.fixture
def engine(initialized: Invoke, db: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Engine]:
    """SQLite file: orders with sidecars orders-1 (its instance registered by itself) and
    orders-2, gateway public, another replica r2; the busy timeout cut to 0.2 s."""
    for args in (("service", "add", "orders", "--port", "8080"),
                 ("proxy", "add", "orders-1", "--service", "orders"),
                 ("proxy", "add", "orders-2", "--service", "orders"),
                 ("proxy", "add", "public", "--edge", "--listen", "127.0.0.1:8443")):
        r = initialized(*args)
        assert r.exit_code == 0, r.output
    monkeypatch.setattr(store_db, "BUSY_TIMEOUT_MS", TIMEOUT_MS)
    monkeypatch.setattr(txn, "BUSY_TIMEOUT_MS", TIMEOUT_MS)
    engine = store_db.open_store(db)
    with write(engine, "self-registration", "meshgate-server") as w:
        add_instance(w, "orders", "127.0.0.1", 15006, 8080, proxy="orders-1", source="proxy")
    register(engine, "r2", "127.0.0.2:18000", time.time())
    yield engine
    engine.dispose()


@contextmanager
def held_write(db: str) -> Iterator[None]:
    """Another connection's write, open for the block, inserting what each read would see
    (and, for the sweeps, act on with a write of their own) were it to read uncommitted
    state: a service, an edge gateway, a replica, a self-registered instance of orders-2."""
    engine = store_db.create(store_db.resolve_url(db))
    try:
        with write(engine, "pending", "holder@test") as w:
            w.conn.execute(insert(schema.services).values(
                name="pending", protocol="http", port=80, labels="{}", created_at=0.0, updated_at=0.0))
            w.conn.execute(insert(schema.proxies).values(
                name="pending-gw", kind="edge", listen="127.0.0.1:9443", token_hash="x", outbound_port=15001,
                created_at=0.0))
            w.conn.execute(insert(schema.replicas).values(
                name="r3", listen=None, host="h", pid=1, started_at=0.0, heartbeat_at=0.0, beats=0))
            w.conn.execute(insert(schema.instances).values(
                service="orders", address="127.0.0.1", inbound_port=15007, app_port=8080, weight=1,
                proxy="orders-2", source="proxy", created_at=0.0))
            yield
    finally:
        engine.dispose()


def test_server_reads_answer_with_the_committed_state_while_a_write_is_open(engine: Engine, db: str) -> None:
    nodes, proxies = admin._store_nodes(engine), admin._store_proxies(engine)
    telemetry = Telemetry(engine)
    expiry = telemetry._ca_expiry()
    assert len(expiry) == 1
    liveness = Liveness(engine, "r1", monotonic=lambda: 100.0)
    registrar = Registrar(engine, replica="r1", settle=0.0)
    claim = Claim("orders", "127.0.0.1", 15006, 8080)

    with held_write(db):
        assert admin._store_nodes(engine) == nodes
        assert "pending" not in {n["service"] for n in nodes}
        assert admin._store_proxies(engine) == proxies
        assert "pending-gw" not in {p["proxy"] for p in proxies[0]}
        assert telemetry._ca_expiry() == expiry
        issuer = IdentityIssuer(engine, None)  # loads the CA state
        assert issuer.trust_domain == "example.org"
        assert issuer.reload() is False  # loaded again: nothing committed changed
        assert liveness._sweep_dead(100.0) == []
        assert set(liveness._seen) == {"r2"}  # not the uncommitted r3
        # orders-1 reconnecting with its registered instance: read, no write
        assert registrar._claim("orders-1", claim) == "unchanged"
        # orders-1 live: nothing to plan; orders-2's uncommitted instance would be marked (a write)
        assert registrar._sweep(frozenset({"orders-1"}), frozenset({"orders-1", "orders-2"}), time.time()) \
            == SweepResult()
        assert rotation.advance(engine, time.time()) == "idle"

    # committed now: the same reads see it
    assert "pending" in {n["service"] for n in admin._store_nodes(engine)}
    assert "pending-gw" in {p["proxy"] for p in admin._store_proxies(engine)[0]}
    assert liveness._sweep_dead(100.0) == []
    assert set(liveness._seen) == {"r2", "r3"}
    assert registrar._sweep(frozenset({"orders-1"}), frozenset({"orders-1", "orders-2"}), time.time()).marked \
        == ["orders-2"]
