"""The store on both backends: the same migrations, views, revisions and World
on SQLite and PostgreSQL, and the same behaviour under concurrent writers.

PostgreSQL cases need MESHGATE_TEST_PG (`make pg`); without it they skip.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
from sqlalchemy import Engine, insert, inspect, select, text

from meshgate.errors import MeshgateError
from meshgate.store import migrations, schema, txn
from meshgate.store.db import create, open_store, resolve_url
from meshgate.store.errors import LockedError, StoreError
from meshgate.store.instances import add_instance
from meshgate.store.mesh import create_mesh
from meshgate.store.services import add_service
from meshgate.store.txn import current_revision, write
from meshgate.store.world import load_world

SEALED = bytes(range(256))  # every byte value: bytea / BLOB must round-trip it exactly


@pytest.fixture
def engine(store_url: str) -> Engine:
    eng = create(store_url)
    migrations.upgrade(eng)
    yield eng  # type: ignore[misc]
    eng.dispose()


def test_migrations_and_views_exist(store_url: str) -> None:
    eng = create(store_url)
    try:
        assert migrations.upgrade(eng) == [n for n, _ in migrations.STEPS]
        insp = inspect(eng)
        assert set(schema.metadata.tables) <= set(insp.get_table_names())
        assert set(migrations._VIEWS) <= set(insp.get_view_names())
        assert migrations.upgrade(eng) == []
        # every view runs on an empty store
        with eng.connect() as conn:
            for view in migrations._VIEWS:
                assert conn.execute(text(f"SELECT * FROM {view}")).all() == []
    finally:
        eng.dispose()


def _populate(eng: Engine) -> None:
    """A small mesh touching every table the World reads, through real writes."""
    s = schema
    now = 1_700_000_000.0
    with write(eng, "init") as w:
        create_mesh(w, "example.org")
    with write(eng, "services") as w:
        add_service(w, "orders", "http", 8080, {"team": "shop"})
        add_service(w, "payments", "grpc", 9090)
    with write(eng, "proxies and rows") as w:
        c = w.conn
        c.execute(insert(s.proxies).values(
            name="orders-1", kind="sidecar", service="orders", outbound_port=15001,
            token_hash="h" * 64, revoked=False, created_at=now))
        c.execute(insert(s.proxies).values(
            name="edge", kind="edge", listen="127.0.0.1:8443", outbound_port=15001,
            token_hash="e" * 64, revoked=True, created_at=now))
        c.execute(insert(s.policies).values(
            id="p1", seq=1, action="allow", sources=json.dumps(["orders"]), target="payments",
            methods=json.dumps(["GET"]), paths=json.dumps([{"kind": "prefix", "value": "/v1/"}]),
            headers="[]", grpc_methods="[]", claims=json.dumps([["sub", "alice"]]),
            mode="enforce", created_at=now))
        c.execute(insert(s.jwt_providers).values(
            name="idp", issuer="https://idp.example", audiences=json.dumps(["api"]),
            jwks='{"keys": []}', created_at=now))
        c.execute(insert(s.edge_routes).values(
            id="r1", gateway="edge", host="shop.example", prefix="/", service="orders",
            auth="none", rate_requests=10, rate_per_seconds=1, created_at=now))
        c.execute(insert(s.edge_certs).values(
            gateway="edge", host="shop.example", cert_pem="CERT", key_encrypted=SEALED,
            not_after=now + 3600, created_at=now))
        w.record("test", "rows", "add", after={"rows": 6})
    with write(eng, "instances") as w:
        add_instance(w, "orders", "127.0.0.1", 20001, 8080, proxy="orders-1", source="proxy")
        add_instance(w, "orders", "127.0.0.2", 20001, 8080, weight=3)
        add_instance(w, "payments", "127.0.0.3", 20002, 9090)


def test_world_loads_the_same_on_each_backend(engine: Engine) -> None:
    _populate(engine)
    world = load_world(engine)
    assert world.revision == 4
    assert world.mesh.trust_domain == "example.org"
    assert list(world.services) == ["orders", "payments"]
    assert world.services["orders"].labels == (("team", "shop"),)
    assert [(i.id, i.address, i.weight, i.healthy, i.proxy) for i in world.instances] == [
        (1, "127.0.0.1", 1, True, "orders-1"),
        (2, "127.0.0.2", 3, True, None),
        (3, "127.0.0.3", 1, True, None),
    ]
    assert world.proxies["edge"].revoked is True and world.proxies["orders-1"].revoked is False
    (policy,) = world.policies
    assert policy.claims == (("sub", "alice"),) and policy.paths[0].value == "/v1/"
    assert world.routes[0].rate is not None and world.routes[0].rate.requests == 10
    assert world.jwt_providers["idp"].audiences == ("api",)
    (cert,) = world.edge_certs
    assert bytes(cert.key_pem_encrypted) == SEALED


@pytest.mark.postgres
def test_world_is_identical_on_sqlite_and_postgres(tmp_path: Path, pg_url: str) -> None:
    worlds = []
    for url in (f"sqlite:///{tmp_path / 'w.db'}", pg_url):
        eng = create(url)
        try:
            migrations.upgrade(eng)
            _populate(eng)
            worlds.append(load_world(eng))
        finally:
            eng.dispose()
    assert worlds[0] == worlds[1]


def test_views_on_each_backend(engine: Engine) -> None:
    _populate(engine)
    s = schema
    with engine.begin() as conn:
        conn.execute(s.instances.update().where(s.instances.c.id == 2).values(healthy=False))
        conn.execute(insert(s.proxy_status).values(
            proxy="orders-1", type="cds", connected=True, last_seen=10.0,
            acked_version="a", acked_at=5.0))
        conn.execute(insert(s.proxy_status).values(
            proxy="orders-1", type="lds", connected=True, last_seen=12.0,
            acked_version="a", acked_at=5.0, nack_version="b", nack_at=6.0,
            nack_detail="duplicate port"))
    with engine.connect() as conn:
        services = {r.name: r for r in conn.execute(text("SELECT * FROM v_services"))}
        assert (services["orders"].instances, services["orders"].healthy_instances) == (2, 1)
        assert (services["payments"].instances, services["payments"].healthy_instances) == (1, 1)
        proxies = {r.name: r for r in conn.execute(text("SELECT * FROM v_proxies"))}
        assert proxies["orders-1"].connected == 1
        assert proxies["orders-1"].last_seen == 12.0
        assert proxies["orders-1"].types_nacked == 1
        assert bool(proxies["edge"].revoked) is True and proxies["edge"].connected == 0
        unhealthy = conn.execute(
            text("SELECT address FROM v_instances WHERE NOT healthy")
        ).scalars().all()
        assert unhealthy == ["127.0.0.2"]
        (nack,) = conn.execute(text("SELECT * FROM v_nacks")).all()
        assert (nack.proxy, nack.type, nack.nack_detail) == ("orders-1", "lds", "duplicate port")


def test_revisions_record_writes_and_nothing_on_failure(engine: Engine) -> None:
    with write(engine, "init", actor="alice") as w:
        create_mesh(w, "example.org")
    assert w.revision == 1
    with pytest.raises(MeshgateError):
        with write(engine, "two services") as w2:
            add_service(w2, "a", "http", 80)
            add_service(w2, "a", "http", 80)  # AlreadyExists: the whole write rolls back
    with write(engine, "no change") as w3:
        pass
    assert w3.revision is None
    with write(engine, "add b") as w4:
        add_service(w4, "b", "tcp", 5432)
    assert w4.revision == 2
    with engine.connect() as conn:
        assert current_revision(conn) == 2
        rows = conn.execute(select(schema.revisions).order_by(schema.revisions.c.id)).all()
        names = conn.execute(select(schema.services.c.name)).scalars().all()
    assert [(r.id, r.actor, r.summary) for r in rows] == [(1, "alice", "init"), (2, "test@meshgate", "add b")]
    assert json.loads(rows[1].changes)[0]["after"]["name"] == "b"
    assert names == ["b"]


def test_a_revision_is_seen_by_another_engine(store_url: str) -> None:
    """What a replica polls: max(revisions.id), through its own connection pool."""
    writer, reader = create(store_url), create(store_url)
    try:
        migrations.upgrade(writer)
        with reader.connect() as conn:
            before = current_revision(conn)
        with write(writer, "init") as w:
            create_mesh(w, "example.org")
        with reader.connect() as conn:
            assert current_revision(conn) == before + 1
        assert load_world(reader).mesh.trust_domain == "example.org"
    finally:
        writer.dispose()
        reader.dispose()


def _wait_for_lock_waiter(eng: Engine, deadline: float) -> None:
    """PostgreSQL: until another session waits on an advisory lock (SQLite: a short pause)."""
    if eng.dialect.name != "postgresql":
        time.sleep(0.3)
        return
    with eng.connect() as conn:
        while time.monotonic() < deadline:
            waiting = conn.execute(text(
                "SELECT count(*) FROM pg_stat_activity "
                "WHERE wait_event_type = 'Lock' AND wait_event = 'advisory'"
            )).scalar_one()
            if waiting:
                return
            conn.rollback()  # pg_stat_activity is a snapshot per transaction
            time.sleep(0.02)
        seen = conn.execute(text(
            "SELECT state, wait_event_type, wait_event, query FROM pg_stat_activity "
            "WHERE datname = current_database()"
        )).all()
    raise AssertionError(f"the second writer never waited for the first: {seen}")


def test_racing_writers_are_serialized(engine: Engine) -> None:
    """Two writers adding the same service at once: one wins, the other gets a clear
    AlreadyExists (not a unique-constraint traceback), exactly as on SQLite."""
    with write(engine, "init") as w:
        create_mesh(w, "example.org")
    inserted = threading.Event()
    outcome: dict[str, object] = {}

    def second() -> None:
        inserted.wait(10)
        try:
            with write(engine, "add orders (second)") as w2:
                add_service(w2, "orders", "http", 81)
            outcome["second"] = "added"
        except MeshgateError as exc:
            outcome["second"] = exc

    t = threading.Thread(target=second)
    t.start()
    try:
        with write(engine, "add orders (first)") as w1:
            add_service(w1, "orders", "http", 80)
            inserted.set()
            try:
                _wait_for_lock_waiter(engine, time.monotonic() + 10)
            except AssertionError as exc:
                raise AssertionError(f"{exc}; second writer: {outcome}") from None
    finally:
        inserted.set()
        t.join(20)
    assert type(outcome["second"]).__name__ == "AlreadyExists", outcome
    with engine.connect() as conn:
        assert conn.execute(select(schema.services.c.port)).scalars().all() == [80]
        assert current_revision(conn) == 2


def test_a_held_lock_gives_locked_error(store_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    import meshgate.store.db as db

    monkeypatch.setattr(db, "BUSY_TIMEOUT_MS", 200)
    monkeypatch.setattr(txn, "BUSY_TIMEOUT_MS", 200)
    eng = create(store_url)
    try:
        migrations.upgrade(eng)
        with write(eng, "holder") as holder:
            if eng.dialect.name == "sqlite":  # BEGIN IMMEDIATE holds the lock already
                holder.conn.execute(text("SELECT 1"))
            with pytest.raises(LockedError, match="locked by another writer"):
                with write(eng, "blocked") as w:
                    create_mesh(w, "example.org")
    finally:
        eng.dispose()
    eng = create(store_url)
    with eng.connect() as conn:
        assert current_revision(conn) == 0
    eng.dispose()


_MIGRATE = textwrap.dedent(
    """
    import json, sys, time
    from pathlib import Path
    from meshgate.store import migrations
    from meshgate.store.db import create
    go = Path(sys.argv[2])
    deadline = time.monotonic() + 30
    while not go.exists() and time.monotonic() < deadline:
        time.sleep(0.005)
    engine = create(sys.argv[1])
    print(json.dumps(migrations.upgrade(engine)))
    engine.dispose()
    """
)


def test_two_processes_migrate_at_once(store_url: str, tmp_path: Path) -> None:
    """Replicas starting together: every step applied exactly once, neither fails."""
    go = tmp_path / "go"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _MIGRATE, store_url, str(go)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    try:
        time.sleep(0.5)  # both interpreters are up and polling for the go file
        go.touch()
        results = [p.communicate(timeout=60) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    for p, (_out, err) in zip(procs, results, strict=True):
        assert p.returncode == 0, err
    ran = [json.loads(out) for out, _ in results]
    steps = [n for n, _ in migrations.STEPS]
    assert sorted(ran[0] + ran[1]) == sorted(steps)
    eng = create(store_url)
    try:
        with eng.connect() as conn:
            names = conn.execute(select(schema.schema_migrations.c.name)).scalars().all()
        assert sorted(names) == sorted(steps)
    finally:
        eng.dispose()


@pytest.mark.postgres
def test_postgres_urls_and_errors(pg_url: str) -> None:
    plain = pg_url.replace("postgresql+psycopg://", "postgresql://", 1)
    assert resolve_url(plain) == pg_url
    assert resolve_url(plain.replace("postgresql://", "postgres://", 1)) == pg_url
    with pytest.raises(StoreError, match="meshgate init"):
        open_store(plain)  # migrated, but no mesh yet
    # an unreachable server: one clear line, and the password is never printed
    with pytest.raises(StoreError, match="cannot open database") as info:
        open_store("postgresql://meshgate:s3cret-pw@127.0.0.1:9/none")
    assert "s3cret-pw" not in str(info.value)


def _pg_tool(name: str) -> str:
    """pg_dump / pg_restore of the newest installed PostgreSQL (as .ci/postgres.sh finds the server)."""
    found = sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"), key=lambda p: int(p.parts[-3]))
    if found:
        return str(found[-1])
    which = shutil.which(name)
    if which is None:
        pytest.skip(f"{name} is not installed")
    return which


def _libpq(url: str) -> str:
    return url.replace("postgresql+psycopg://", "postgresql://", 1)


def _check_restored(original: Engine, restored_url: str) -> None:
    """The copy holds the same World, needs no migration, and takes the next revision."""
    before = load_world(original)
    copy = create(restored_url)
    try:
        assert migrations.upgrade(copy) == []
        assert load_world(copy) == before
        with write(copy, "after restore") as w:
            add_service(w, "restored", "http", 80)
        assert w.revision == before.revision + 1
        with copy.connect() as conn:  # sequences came along: the next instance id follows
            with write(copy, "instance") as w2:
                inst = add_instance(w2, "restored", "127.0.0.9", 20009, 80)
            assert inst.id == max(i.id for i in before.instances) + 1
            assert conn.execute(select(schema.services.c.name).where(
                schema.services.c.name == "restored")).scalar_one() == "restored"
    finally:
        copy.dispose()


def test_sqlite_backup_and_restore(tmp_path: Path) -> None:
    """docs/production.md: `sqlite3 meshgate.db ".backup ..."` and VACUUM INTO, while in use."""
    src = tmp_path / "meshgate.db"
    eng = create(f"sqlite:///{src}")
    try:
        migrations.upgrade(eng)
        _populate(eng)
        reader = sqlite3.connect(src, isolation_level=None)
        try:  # a reader in the middle of a transaction (a running server) does not block a backup
            reader.execute("BEGIN")
            reader.execute("SELECT count(*) FROM services").fetchall()
            sqlite = shutil.which("sqlite3")
            if sqlite is not None:
                subprocess.run([sqlite, str(src), f".backup {tmp_path / 'dot-backup.db'}"], check=True)
            conn = sqlite3.connect(src, isolation_level=None)
            try:
                conn.execute("VACUUM INTO ?", (str(tmp_path / "vacuum.db"),))
            finally:
                conn.close()
        finally:
            reader.close()
        if sqlite is not None:
            _check_restored(eng, f"sqlite:///{tmp_path / 'dot-backup.db'}")
        _check_restored(eng, f"sqlite:///{tmp_path / 'vacuum.db'}")
    finally:
        eng.dispose()


@pytest.mark.postgres
def test_postgres_dump_and_restore(pg_url: str, tmp_path: Path) -> None:
    """docs/production.md: pg_dump -Fc, then pg_restore --no-owner into an empty database."""
    from tests.pgdb import fresh_database

    eng = create(pg_url)
    try:
        migrations.upgrade(eng)
        _populate(eng)
        dump = tmp_path / "meshgate.dump"
        subprocess.run([_pg_tool("pg_dump"), "-Fc", "-f", str(dump), _libpq(pg_url)], check=True)
        with fresh_database() as target:
            subprocess.run([_pg_tool("pg_restore"), "--no-owner", "--exit-on-error", "-d", _libpq(target),
                            str(dump)], check=True)
            _check_restored(eng, target)
    finally:
        eng.dispose()


def test_revision_ids_become_visible_in_order(store_url: str) -> None:
    """Two writers at once, a reader polling like a replica: the reader never sees a
    revision id before a lower one (so polling max(id) and patching from the last
    id skips nothing). On PostgreSQL this holds because writers take txn.WRITE_LOCK."""
    import random

    from sqlalchemy import event

    eng = create(store_url)
    try:
        migrations.upgrade(eng)
        with write(eng, "init") as w:
            create_mesh(w, "example.org")
        # widen the window between drawing a revision id and committing it
        event.listen(eng, "commit", lambda conn: time.sleep(random.random() * 0.01))
        stop = threading.Event()
        errors: list[BaseException] = []
        seen: list[int] = []

        def writer(prefix: str) -> None:
            try:
                for n in range(15):
                    with write(eng, f"{prefix}{n}") as w:
                        add_service(w, f"{prefix}{n}", "http", 80)
            except BaseException as exc:  # noqa: BLE001 - reported below
                errors.append(exc)

        def reader() -> None:
            last = 1
            while True:
                done = stop.is_set()  # read before polling: one last poll after the writers finished
                with eng.connect() as conn:
                    ids = conn.execute(select(schema.revisions.c.id).where(
                        schema.revisions.c.id > last).order_by(schema.revisions.c.id)).scalars().all()
                if ids:
                    seen.extend(ids)
                    last = ids[-1]
                if done:
                    return

        threads = [threading.Thread(target=writer, args=(p,)) for p in ("a", "b")]
        watcher = threading.Thread(target=reader)
        watcher.start()
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        stop.set()
        watcher.join(10)
        assert errors == []
        assert seen == list(range(2, 32)), "a revision became visible after a higher one"
    finally:
        eng.dispose()
