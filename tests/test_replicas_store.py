"""Replica liveness in the store (meshgate/store/replicas.py), on SQLite and PostgreSQL.

The failover test with real `meshgate serve` processes and Envoys is
tests/test_replicas.py; these check the bookkeeping with a fake clock.
"""

from __future__ import annotations

import time

import pytest
from sqlalchemy import Engine, insert, select

from meshgate.store import schema
from meshgate.store.db import create
from meshgate.store.migrations import upgrade
from meshgate.store.replicas import Liveness, list_replicas


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def engine(store_url: str) -> Engine:
    eng = create(store_url)
    upgrade(eng)
    now = time.time()
    with eng.begin() as conn:
        for name in ("p1", "p2", "p3"):
            conn.execute(insert(schema.proxies).values(
                name=name, kind="edge", token_hash="h", created_at=now))
    yield eng  # type: ignore[misc]
    eng.dispose()


def _status(eng: Engine, proxy: str, replica: str, connected: bool = True) -> None:
    with eng.begin() as conn:
        for t in ("cds", "lds"):
            conn.execute(insert(schema.proxy_status).values(
                proxy=proxy, type=t, replica=replica, connected=connected, last_seen=1.0))


def _connected(eng: Engine) -> dict[tuple[str, str], tuple[str, bool]]:
    st = schema.proxy_status
    with eng.connect() as conn:
        return {(r.proxy, r.type): (r.replica, bool(r.connected)) for r in conn.execute(select(st))}


def _live(eng: Engine) -> list[str]:
    with eng.connect() as conn:
        return [r["name"] for r in list_replicas(conn)]


def test_a_silent_replica_is_swept_and_only_its_rows_change(engine: Engine) -> None:
    mono_a, mono_b = Clock(), Clock()
    a = Liveness(engine, "a", "127.0.0.1:1", interval=2, stale_after=10, monotonic=mono_a)
    b = Liveness(engine, "b", "127.0.0.1:2", interval=2, stale_after=10, monotonic=mono_b)
    a.start()
    b.start()
    assert _live(engine) == ["a", "b"]
    _status(engine, "p1", "b")  # p1 streams from b
    _status(engine, "p2", "a")  # p2 from a
    _status(engine, "p3", "b", connected=False)  # an old, already-closed stream

    # both beat: nobody is swept, however long it runs
    for _ in range(10):
        mono_a.t += 2
        mono_b.t += 2
        assert b.tick() == (False, [])
        assert a.tick() == (False, [])
    assert _live(engine) == ["a", "b"]

    # b is killed: its counter stops; a notices only after stale_after of a's own clock
    for _ in range(4):
        mono_a.t += 2
        assert a.tick() == (False, [])
    # p1 reconnects to a before the sweep: its cds row is now written by a
    with engine.begin() as conn:
        st = schema.proxy_status
        conn.execute(st.update().where(st.c.proxy == "p1", st.c.type == "cds")
                     .values(replica="a", connected=True))
    mono_a.t += 2
    assert a.tick() == (False, ["b"])
    assert _live(engine) == ["a"]
    assert _connected(engine) == {
        ("p1", "cds"): ("a", True),    # rewritten by the new replica: untouched
        ("p1", "lds"): ("b", False),   # held by the dead replica: disconnected
        ("p2", "cds"): ("a", True),
        ("p2", "lds"): ("a", True),
        ("p3", "cds"): ("b", False),
        ("p3", "lds"): ("b", False),
    }

    # b was only paused: at its next beat it finds its row gone and rejoins
    mono_b.t += 2
    assert b.tick() == (True, [])
    assert _live(engine) == ["a", "b"]


def test_clean_stop_removes_the_row_and_a_new_watcher_waits_a_full_period(engine: Engine) -> None:
    mono = Clock()
    a = Liveness(engine, "a", None, interval=1, stale_after=5, monotonic=mono)
    a.start()
    # a stale row left by a replica killed before this one started
    with engine.begin() as conn:
        conn.execute(insert(schema.replicas).values(
            name="old", started_at=1.0, heartbeat_at=1.0, beats=7))
    _status(engine, "p1", "old")
    assert a.tick() == (False, [])  # first sight of "old": not yet stale
    mono.t += 4
    assert a.tick() == (False, [])
    mono.t += 1
    assert a.tick() == (False, ["old"])
    assert not any(c for _, c in _connected(engine).values())
    a.stop()
    assert _live(engine) == []


def test_status_rows_belong_to_the_replica_holding_the_stream(engine: Engine) -> None:
    """A proxy moved from replica a to b: late writes from a change nothing."""
    from meshgate.store.status import write_rows

    def row(replica: str, connected: bool, since: float, **extra: object) -> dict[str, object]:
        return {"proxy": "p1", "type": "cds", "replica": replica, "connected": connected,
                "connected_since": since, "last_seen": since, **extra}

    assert write_rows(engine, [row("a", True, 10.0, acked_version="v1")]) == 1
    assert write_rows(engine, [row("b", True, 20.0)]) == 1  # p1 reconnected to b
    # a notices the old stream's end only now, or flushes what it had before
    assert write_rows(engine, [row("a", False, 10.0)]) == 0
    assert write_rows(engine, [row("a", True, 10.0, acked_version="v0")]) == 0
    assert _connected(engine) == {("p1", "cds"): ("b", True)}
    # b's own updates go through; so does a takeover after b's stream ended
    assert write_rows(engine, [row("b", True, 20.0, acked_version="v2")]) == 1
    assert write_rows(engine, [row("b", False, 20.0)]) == 1
    assert write_rows(engine, [row("a", True, 30.0)]) == 1
    assert _connected(engine) == {("p1", "cds"): ("a", True)}
    # a newer stream takes over a row a dead replica left "connected"
    assert write_rows(engine, [row("c", True, 40.0)]) == 1
    assert _connected(engine) == {("p1", "cds"): ("c", True)}
    # a removed proxy gets no orphan row
    assert write_rows(engine, [{**row("c", True, 40.0), "proxy": "ghost"}]) == 0
