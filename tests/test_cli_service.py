"""`meshgate service add|list|show|update|remove`."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
import yaml
from conftest import Invoke, dump_database
from sqlalchemy import text

from meshgate.store.db import create, resolve_url


@pytest.fixture
def db(store_url: str) -> str:
    """Every test here runs on SQLite and on PostgreSQL (skipped without MESHGATE_TEST_PG)."""
    return store_url


def _revision(db: str, rev: int) -> tuple[str, str, list[dict[str, Any]]]:
    engine = create(resolve_url(db))
    try:
        with engine.connect() as conn:
            actor, summary, changes = conn.execute(
                text("SELECT actor, summary, changes FROM revisions WHERE id = :id"), {"id": rev}
            ).one()
    finally:
        engine.dispose()
    return actor, summary, json.loads(changes)


def test_add_then_list_json(initialized: Invoke, db: str) -> None:
    result = initialized(
        "service", "add", "orders", "--protocol", "http", "--port", "8080",
        "--label", "team=shop", "--label", "tier=1",
    )
    assert result.exit_code == 0, result.output
    assert 'service "orders" added (revision 2): spiffe://example.org/svc/orders' in result.output
    assert initialized("service", "add", "payments", "--protocol", "grpc", "--port", "9090").exit_code == 0

    listed = initialized("service", "list", "--output", "json")
    assert listed.exit_code == 0, listed.output
    assert json.loads(listed.output) == [
        {
            "name": "orders", "protocol": "http", "port": 8080,
            "labels": {"team": "shop", "tier": "1"}, "instances": 0,
            "identity": "spiffe://example.org/svc/orders",
        },
        {
            "name": "payments", "protocol": "grpc", "port": 9090, "labels": {},
            "instances": 0, "identity": "spiffe://example.org/svc/payments",
        },
    ]
    actor, summary, changes = _revision(db, 2)
    assert (actor, summary) == ("test@meshgate", "service add orders")
    (change,) = changes
    after = change.pop("after")
    assert change == {"kind": "services", "key": "orders", "op": "add", "before": None}
    assert isinstance(after.pop("created_at"), float) and isinstance(after.pop("updated_at"), float)
    assert after == {"name": "orders", "protocol": "http", "port": 8080,
                     "labels": '{"team": "shop", "tier": "1"}'}


def test_defaults_and_table_and_yaml(initialized: Invoke) -> None:
    assert initialized("service", "add", "web").exit_code == 0
    table = initialized("service", "list")
    assert table.exit_code == 0
    assert "web" in table.output and "http" in table.output and "80" in table.output
    as_yaml = yaml.safe_load(initialized("service", "list", "-o", "yaml").output)
    assert as_yaml[0]["port"] == 80 and as_yaml[0]["protocol"] == "http"


def test_list_empty(initialized: Invoke) -> None:
    assert initialized("service", "list").output.strip() == "(none)"
    assert json.loads(initialized("service", "list", "-o", "json").output) == []


def test_show_includes_instances_and_identity(initialized: Invoke) -> None:
    initialized("service", "add", "orders", "--port", "8080")
    initialized("instance", "add", "orders", "--address", "127.0.0.1",
                "--inbound-port", "15006", "--app-port", "8080", "--weight", "2")
    shown = json.loads(initialized("service", "show", "orders", "-o", "json").output)
    assert shown["identity"] == "spiffe://example.org/svc/orders"
    assert shown["used_by"] == []
    assert [(i["address"], i["inbound_port"], i["app_port"], i["weight"])
            for i in shown["instances"]] == [("127.0.0.1", 15006, 8080, 2)]
    table = initialized("service", "show", "orders")
    assert table.exit_code == 0
    assert "127.0.0.1:15006" in table.output
    assert json.loads(initialized("service", "list", "-o", "json").output)[0]["instances"] == 1


def test_update_port_and_labels(initialized: Invoke, db: str) -> None:
    initialized("service", "add", "orders", "--port", "8080", "--label", "team=shop")
    result = initialized("service", "update", "orders", "--port", "8081",
                         "--label", "tier=2", "--unset-label", "team")
    assert result.exit_code == 0, result.output
    assert "port 8080 -> 8081" in result.output
    shown = json.loads(initialized("service", "show", "orders", "-o", "json").output)
    assert (shown["port"], shown["labels"], shown["protocol"]) == (8081, {"tier": "2"}, "http")
    _actor, summary, changes = _revision(db, 3)
    assert summary == "service update orders"
    assert changes[0]["op"] == "update"
    assert changes[0]["before"]["port"] == 8080 and changes[0]["after"]["port"] == 8081
    assert changes[0]["before"]["labels"] == '{"team": "shop"}'


def test_update_to_same_values_records_nothing(initialized: Invoke, db: str) -> None:
    initialized("service", "add", "orders", "--port", "8080")
    before = dump_database(db)
    result = initialized("service", "update", "orders", "--port", "8080")
    assert result.exit_code == 0
    assert 'service "orders" unchanged' in result.output
    assert dump_database(db) == before


def test_remove_takes_its_instances_and_records_them(initialized: Invoke, db: str) -> None:
    initialized("service", "add", "orders", "--port", "8080")
    for port in ("15006", "15007"):
        r = initialized("instance", "add", "orders", "--address", "127.0.0.1",
                        "--inbound-port", port, "--app-port", "8080")
        assert r.exit_code == 0, r.output
    result = initialized("service", "remove", "orders")
    assert result.exit_code == 0, result.output
    assert "with 2 instances" in result.output
    assert json.loads(initialized("service", "list", "-o", "json").output) == []
    assert json.loads(initialized("instance", "list", "-o", "json").output) == []
    _actor, summary, changes = _revision(db, 5)
    assert summary == "service remove orders"
    assert [(c["kind"], c["key"], c["op"]) for c in changes] == [
        ("instances", "1", "remove"),
        ("instances", "2", "remove"),
        ("services", "orders", "remove"),
    ]
    assert changes[0]["before"]["app_port"] == 8080 and changes[0]["after"] is None


def _add_dependents(db: str) -> None:
    """Rows other nouns will own (proxies, policies, routes), written straight to the tables."""
    from sqlalchemy import insert

    from meshgate.store import schema

    now = time.time()
    engine = create(resolve_url(db))
    try:
        with engine.begin() as conn:
            conn.execute(insert(schema.proxies), [
                {"name": "orders-1", "kind": "sidecar", "service": "orders", "token_hash": "x",
                 "created_at": now},
                {"name": "edge", "kind": "edge", "service": None, "token_hash": "y", "created_at": now},
            ])
            conn.execute(insert(schema.policies), [
                {"id": "web-to-orders", "seq": 1, "action": "allow", "sources": '["web"]',
                 "target": "orders", "created_at": now},
                {"id": "orders-to-pay", "seq": 2, "action": "allow",
                 "sources": '["orders", "web"]', "target": "pay", "created_at": now},
            ])
            conn.execute(insert(schema.edge_routes).values(
                id="shop", gateway="edge", host="shop.example.org", prefix="/", service="orders",
                auth="none", created_at=now))
    finally:
        engine.dispose()


def test_remove_refuses_while_others_refer_to_it(initialized: Invoke, db: str) -> None:
    initialized("service", "add", "orders", "--port", "8080")
    _add_dependents(db)
    before = dump_database(db)
    result = initialized("service", "remove", "orders")
    assert result.exit_code == 1, result.output
    assert result.output.strip() == (
        'error: service "orders" is still used by proxy "orders-1", policy "web-to-orders", '
        'policy "orders-to-pay", edge route "shop": remove or change them first'
    )
    assert dump_database(db) == before
    shown = json.loads(initialized("service", "show", "orders", "-o", "json").output)
    assert shown["used_by"] == [
        'proxy "orders-1"', 'policy "web-to-orders"', 'policy "orders-to-pay"', 'edge route "shop"'
    ]


@pytest.mark.parametrize("protocol", ["http", "grpc", "tcp"])
def test_every_protocol(initialized: Invoke, protocol: str) -> None:
    assert initialized("service", "add", "svc", "--protocol", protocol, "--port", "1").exit_code == 0
    assert json.loads(initialized("service", "show", "svc", "-o", "json").output)["protocol"] == protocol


def test_edge_values_accepted(initialized: Invoke) -> None:
    name = "a" + "b" * 61 + "c"  # 63 characters
    r = initialized("service", "add", name, "--port", "65535", "--label", "example.com/team=a.b_c-d",
                    "--label", "empty=")
    assert r.exit_code == 0, r.output
    shown = json.loads(initialized("service", "show", name, "-o", "json").output)
    assert shown["port"] == 65535
    assert shown["labels"] == {"example.com/team": "a.b_c-d", "empty": ""}


def test_actor_option_is_recorded(run: Invoke, db: str) -> None:
    run("init", "--trust-domain", "example.org")
    r = run("--actor", "bob@laptop", "service", "add", "orders")
    assert r.exit_code == 0, r.output
    assert _revision(db, 2)[0] == "bob@laptop"
