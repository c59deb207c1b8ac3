from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import inspect, select

from meshgate.store import migrations, schema
from meshgate.store.db import create, open_store, resolve_url
from meshgate.store.errors import StoreError


def test_migrations_create_every_table_and_view(store_url: str) -> None:
    engine = create(store_url)
    ran = migrations.upgrade(engine)
    assert ran == [name for name, _ in migrations.STEPS]
    insp = inspect(engine)
    for table in schema.metadata.tables:
        assert insp.has_table(table), table
    assert {"v_services", "v_proxies", "v_nacks", "v_denials"} <= set(insp.get_view_names())
    # a second open applies nothing
    assert migrations.upgrade(engine) == []
    with engine.connect() as conn:
        names = set(conn.execute(select(schema.schema_migrations.c.name)).scalars())
    engine.dispose()
    assert names == {n for n, _ in migrations.STEPS}


def test_sqlite_pragmas(tmp_path: Path) -> None:
    engine = create(resolve_url(str(tmp_path / "p.db")))
    with engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 5000


def test_open_missing_database_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="meshgate init"):
        open_store(str(tmp_path / "absent.db"))
    assert not (tmp_path / "absent.db").exists()


def test_resolve_url_env_and_paths(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    assert resolve_url("sqlite:///x.db") == "sqlite:///x.db"
    monkeypatch.setenv("MESHGATE_DB", str(tmp_path / "env.db"))
    assert resolve_url(None) == f"sqlite:///{tmp_path / 'env.db'}"
    with pytest.raises(StoreError, match="--db"):
        resolve_url("notadialect+://::")
