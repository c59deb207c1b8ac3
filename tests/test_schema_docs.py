"""docs/schema.md documents every table and view with exactly its columns, and its
example queries run."""

from __future__ import annotations

import re
import shlex
import sqlite3
import time
from pathlib import Path

import pytest
from conftest import Invoke
from sqlalchemy import insert, inspect

from meshgate.store import schema
from meshgate.store.db import create, resolve_url

DOC = Path(__file__).resolve().parent.parent / "docs" / "schema.md"


def documented() -> dict[str, list[str]]:
    """`### name` section -> the column names in its table (first cell, in backticks)."""
    found: dict[str, list[str]] = {}
    current = None
    for line in DOC.read_text().splitlines():
        heading = re.match(r"^### (\w+)\s*$", line)
        if heading:
            current = heading.group(1)
            found[current] = []
            continue
        cell = re.match(r"^\| `(\w+)` \|", line)
        if cell and current:
            found[current].append(cell.group(1))
    return found


def example_queries() -> list[str]:
    """The SQL of every `sqlite3 ... meshgate.db '...'` line in the doc."""
    queries = []
    for line in DOC.read_text().splitlines():
        if line.startswith("sqlite3 "):
            queries.append(shlex.split(line)[-1])
    return queries


@pytest.fixture
def populated(initialized: Invoke, db_path: Path) -> Path:
    """A mesh with a row in every table the views read."""
    initialized("service", "add", "orders", "--port", "8080", "--label", "team=shop")
    initialized("service", "add", "web")
    initialized("instance", "add", "orders", "--address", "127.0.0.1", "--inbound-port", "15006",
                "--app-port", "8080")
    now = time.time()
    engine = create(resolve_url(str(db_path)))
    try:
        with engine.begin() as conn:
            conn.execute(insert(schema.proxies), [
                {"name": "orders-1", "kind": "sidecar", "service": "orders", "listen": None,
                 "token_hash": "h", "created_at": now},
                {"name": "public", "kind": "edge", "service": None, "listen": "127.0.0.1:8443",
                 "token_hash": "h", "created_at": now},
            ])
            conn.execute(insert(schema.policies).values(
                id="web-to-orders", seq=1, action="allow", sources='["web"]', target="orders",
                created_at=now))
            conn.execute(insert(schema.edge_routes).values(
                id="shop", gateway="public", host="shop.example.org", prefix="/",
                service="orders", auth="none", created_at=now))
            conn.execute(insert(schema.proxy_status), [
                {"proxy": "orders-1", "type": "cds", "connected": True, "last_seen": now,
                 "acked_version": "a", "acked_at": now - 5, "nack_version": "b",
                 "nack_detail": "bad cluster", "nack_resources": '["svc/orders"]',
                 "nack_sources": '["service:orders"]', "nack_at": now},
                {"proxy": "orders-1", "type": "lds", "connected": True, "last_seen": now,
                 "acked_version": "c", "acked_at": now, "nack_version": "d",
                 "nack_detail": "old", "nack_resources": "[]", "nack_sources": "[]",
                 "nack_at": now - 60},
            ])
            conn.execute(insert(schema.denial_events).values(
                at=now, proxy="orders-1", caller="spiffe://example.org/svc/web",
                callee="payments", method="GET", path="/", status=403, rule_id="none",
                reason="rbac_access_denied_matched_policy[none]"))
    finally:
        engine.dispose()
    return db_path


def test_every_table_and_view_is_documented_with_its_columns(populated: Path) -> None:
    docs = documented()
    engine = create(resolve_url(str(populated)))
    try:
        insp = inspect(engine)
        actual = {
            name: [c["name"] for c in insp.get_columns(name)]
            for name in [*insp.get_table_names(), *insp.get_view_names()]
        }
    finally:
        engine.dispose()
    problems = []
    for name, columns in sorted(actual.items()):
        if name not in docs:
            problems.append(f"{name}: no '### {name}' section")
            continue
        missing = [c for c in columns if c not in docs[name]]
        extra = [c for c in docs[name] if c not in columns]
        if missing:
            problems.append(f"{name}: undocumented columns {missing}")
        if extra:
            problems.append(f"{name}: documented columns that do not exist {extra}")
    problems += [f"{name}: documented but not in the database" for name in docs if name not in actual]
    assert not problems, "docs/schema.md is out of date:\n" + "\n".join(problems)


def test_example_queries_run(populated: Path) -> None:
    queries = example_queries()
    assert len(queries) >= 15
    conn = sqlite3.connect(populated)
    try:
        for sql in queries:
            try:
                conn.execute(sql).fetchall()
            except sqlite3.Error as exc:
                pytest.fail(f"docs/schema.md query fails: {sql}\n{exc}")
    finally:
        conn.close()


def test_views_answer_questions(populated: Path) -> None:
    conn = sqlite3.connect(populated)
    try:
        assert conn.execute(
            "select name, identity, instances, healthy_instances from v_services order by name"
        ).fetchall() == [
            ("orders", "spiffe://example.org/svc/orders", 1, 1),
            ("web", "spiffe://example.org/svc/web", 0, 0),
        ]
        assert conn.execute(
            "select name from v_services where labels ->> '$.team' = 'shop'"
        ).fetchall() == [("orders",)]
        assert conn.execute(
            "select name, connected, types_nacked from v_proxies order by name"
        ).fetchall() == [("orders-1", 1, 1), ("public", 0, 0)]
        assert conn.execute(
            "select proxy, type, current from v_nacks order by type"
        ).fetchall() == [("orders-1", "cds", 1), ("orders-1", "lds", 0)]
        assert conn.execute(
            "select p.id from v_policies p, json_each(p.sources) s where s.value = 'web'"
        ).fetchall() == [("web-to-orders",)]
        assert conn.execute(
            "select address, inbound_port, app_port, source from v_instances"
        ).fetchall() == [("127.0.0.1", 15006, 8080, "cli")]
    finally:
        conn.close()
