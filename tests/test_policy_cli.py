"""`meshgate policy ...` through the CLI: success paths, output formats, bad input."""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest
import yaml
from sqlalchemy import text

from meshgate.store.db import create, resolve_url
from tests.conftest import Invoke


@pytest.fixture
def db(store_url: str) -> str:
    """Every test here runs on SQLite and on PostgreSQL (skipped without MESHGATE_TEST_PG)."""
    return store_url


@pytest.fixture
def mesh(initialized: Invoke) -> Invoke:
    for args in (
        ("web",), ("orders", "--port", "8080"), ("db", "--protocol", "tcp", "--port", "5432"),
        ("billing", "--protocol", "grpc", "--port", "9000"),
    ):
        r = initialized("service", "add", *args)
        assert r.exit_code == 0, r.output
    return initialized


def ok(run: Invoke, *args: str) -> str:
    r = run(*args)
    assert r.exit_code == 0, r.output
    return r.output


def test_allow_generates_readable_ids_and_records_revisions(mesh: Invoke, db: str) -> None:
    out = ok(mesh, "policy", "allow", "--from", "web", "--to", "orders", "--method", "get,head",
             "--path", "/api/**")
    assert 'policy "allow-web-to-orders" added' in out and "GET,HEAD /api/**" in out
    out = ok(mesh, "policy", "allow", "--from", "web", "--to", "orders", "--path-exact", "/health")
    assert 'policy "allow-web-to-orders-2" added' in out
    out = ok(mesh, "policy", "deny", "--from", "*", "--to", "orders", "--path-prefix", "/admin")
    assert 'policy "deny-any-to-orders" added' in out
    out = ok(mesh, "policy", "deny", "--from", "web", "--to", "orders", "--method", "DELETE",
             "--id", "web-no-delete", "--audit")
    assert 'policy "web-no-delete" added' in out and "audit" in out
    rows = json.loads(ok(mesh, "policy", "list", "--output", "json"))
    assert [r["id"] for r in rows] == [
        "allow-web-to-orders", "allow-web-to-orders-2", "deny-any-to-orders", "web-no-delete"
    ]
    assert rows[0]["methods"] == ["GET", "HEAD"]
    assert rows[0]["paths"] == [{"kind": "glob", "value": "/api/**"}]
    assert rows[3]["mode"] == "audit"
    engine = create(resolve_url(db))
    try:
        with engine.connect() as conn:
            changes = [json.loads(c) for (c,) in conn.execute(text(
                "SELECT changes FROM revisions WHERE summary LIKE 'policy %' ORDER BY id"))]
    finally:
        engine.dispose()
    assert len(changes) == 4  # one revision per command
    assert [c[0]["key"] for c in changes] == [r["id"] for r in rows]
    assert all(c[0]["op"] == "add" and c[0]["before"] is None for c in changes)


def test_list_filters_and_show(mesh: Invoke) -> None:
    ok(mesh, "policy", "allow", "--from", "web", "--to", "orders")
    ok(mesh, "policy", "allow", "--from", "*", "--to", "billing", "--grpc-method", "shop.Billing/Charge")
    ok(mesh, "policy", "allow", "--from", "orders", "--to", "db")
    by_target = json.loads(ok(mesh, "policy", "list", "--to", "db", "-o", "json"))
    assert [r["id"] for r in by_target] == ["allow-orders-to-db"]
    by_source = json.loads(ok(mesh, "policy", "list", "--from", "web", "-o", "json"))
    assert [r["id"] for r in by_source] == ["allow-web-to-orders", "allow-any-to-billing"]
    table = ok(mesh, "policy", "list")
    assert "allow-web-to-orders" in table and "shop.Billing/Charge" in table
    shown = yaml.safe_load(ok(mesh, "policy", "show", "allow-any-to-billing", "-o", "yaml"))
    assert shown["grpc_methods"] == ["shop.Billing/Charge"]
    envoy = shown["envoy_policy"]
    assert envoy["permissions"][0]["urlPath"]["path"]["exact"] == "/shop.Billing/Charge"
    assert envoy["principals"][0]["authenticated"]["principalName"]["prefix"] == "spiffe://example.org/"
    assert "allow-web-to-orders" in ok(mesh, "policy", "show", "allow-web-to-orders")


def test_check_and_matrix(mesh: Invoke) -> None:
    ok(mesh, "policy", "allow", "--from", "web", "--to", "orders", "--path", "/api/**")
    ok(mesh, "policy", "deny", "--from", "*", "--to", "orders", "--path-prefix", "/admin",
       "--id", "no-admin")
    out = ok(mesh, "policy", "check", "--from", "web", "--to", "orders", "--path", "/api/x")
    assert out.startswith("ALLOW") and "allow-web-to-orders" in out
    out = ok(mesh, "policy", "check", "--from", "web", "--to", "orders", "--path", "/api/../ADMIN")
    assert out.startswith("DENY") and "rbac_access_denied_matched_policy[no-admin]" in out
    assert "/ADMIN" in out  # the path as Envoy sees it
    d = json.loads(ok(mesh, "policy", "check", "--from", "orders", "--to", "web", "-o", "json"))
    assert d["allowed"] is False and d["rule"] is None
    assert d["envoy_detail"] == "rbac_access_denied_matched_policy[none]"
    d = json.loads(ok(mesh, "policy", "check", "--from", "web", "--to", "orders", "--path",
                      "/a%2Fb", "-o", "json"))
    assert d["status"] == 400
    cells = json.loads(ok(mesh, "policy", "matrix", "-o", "json"))
    access = {(c["from"], c["to"]): c["access"] for c in cells}
    assert access[("web", "orders")] == "some"
    assert access[("orders", "web")] == "none"
    table = ok(mesh, "policy", "matrix")
    assert "mesh default: deny" in table and "some" in table


def test_remove(mesh: Invoke, db_dump: Callable[[], str]) -> None:
    ok(mesh, "policy", "allow", "--from", "web", "--to", "orders")
    ok(mesh, "policy", "allow", "--from", "web", "--to", "db")
    before = db_dump()
    r = mesh("policy", "remove", "allow-web-to-orders", "nope")
    assert r.exit_code == 1 and 'policy "nope" not found' in r.output
    assert db_dump() == before  # all or nothing
    out = ok(mesh, "policy", "remove", "allow-web-to-orders", "allow-web-to-db")
    assert "removed" in out
    assert json.loads(ok(mesh, "policy", "list", "-o", "json")) == []


def test_service_removal_is_refused_while_a_policy_names_it(mesh: Invoke) -> None:
    ok(mesh, "policy", "allow", "--from", "web", "--to", "orders")
    r = mesh("service", "remove", "web")
    assert r.exit_code == 1 and "allow-web-to-orders" in r.output


@pytest.mark.parametrize(
    ("args", "messages"),
    [
        (("--from", "web", "--to", "orders", "--method", "GTE"),
         ['methods[0]: unknown method "GTE"']),
        (("--from", "web", "--to", "orders", "--method", "GET,GTE,PSOT"),
         ['methods[1]: unknown method "GTE"', 'methods[2]: unknown method "PSOT"']),
        (("--from", "ghost,web", "--to", "nowhere"),
         ['sources[0]: unknown service "ghost"', 'target: unknown service "nowhere"']),
        (("--from", "edge:nogw", "--to", "orders"), ['sources[0]: unknown edge gateway "nogw"']),
        (("--from", "Bad_Name", "--to", "orders"), ["sources[0]:"]),
        (("--from", "*,web", "--to", "orders"), ["list it alone"]),
        (("--from", "web", "--to", "orders", "--path", "/api/**x", "--path-exact", "api",
          "--path-prefix", "/a//b"),
         ["paths[0]:", "start with '/'", "paths[1]:", "'//'", "paths[2]:", "whole segment"]),
        (("--from", "web", "--to", "db", "--path-prefix", "/x", "--method", "GET"),
         ['methods[0]: service "db" is tcp', 'paths[0]: service "db" is tcp']),
        (("--from", "web", "--to", "orders", "--grpc-method", "shop.Billing/Charge"),
         ['grpc_methods[0]: service "orders" is http, not grpc']),
        (("--from", "web", "--to", "billing", "--grpc-method", "not a method"),
         ["grpc_methods[0]:"]),
        (("--from", "web", "--to", "orders", "--header", "novalue", "--header", "X Y=1"),
         ['headers[0]: "novalue" is not NAME=VALUE', "headers[1]:"]),
        (("--from", "web", "--to", "orders", "--id", "Not_A_Label"), ["id:"]),
    ],
)
def test_bad_input_names_every_field_and_changes_nothing(
    mesh: Invoke, db_dump: Callable[[], str], args: tuple[str, ...], messages: list[str]
) -> None:
    before = db_dump()
    r = mesh("policy", "allow", *args)
    assert r.exit_code == 2, r.output
    assert "Traceback" not in r.output
    for m in messages:
        assert m in r.output, r.output
    assert db_dump() == before


def test_allow_unknown_accepts_future_services(mesh: Invoke) -> None:
    out = ok(mesh, "policy", "allow", "--from", "ghost", "--to", "later", "--allow-unknown")
    assert "allow-ghost-to-later" in out


def test_duplicates_are_refused(mesh: Invoke, db_dump: Callable[[], str]) -> None:
    ok(mesh, "policy", "allow", "--from", "web", "--to", "orders", "--id", "x1")
    before = db_dump()
    r = mesh("policy", "allow", "--from", "web", "--to", "db", "--id", "x1")
    assert r.exit_code == 1 and 'policy "x1" already exists' in r.output
    r = mesh("policy", "allow", "--from", "web", "--to", "orders")
    assert r.exit_code == 1 and 'policy "x1" already says exactly this' in r.output
    assert db_dump() == before


def test_check_bad_input(mesh: Invoke) -> None:
    r = mesh("policy", "check", "--from", "ghost", "--to", "orders")
    assert r.exit_code == 2 and 'unknown service "ghost"' in r.output
    r = mesh("policy", "check", "--from", "web", "--to", "nope")
    assert r.exit_code == 1 and "not found" in r.output
    r = mesh("policy", "check", "--from", "web", "--to", "db", "--path", "/x")
    assert r.exit_code == 2 and "tcp" in r.output
    r = mesh("policy", "check", "--from", "web", "--to", "orders", "--header", "bad")
    assert r.exit_code == 2 and "NAME=VALUE" in r.output
    r = mesh("policy", "show", "nope")
    assert r.exit_code == 1 and 'policy "nope" not found' in r.output


def test_allow_under_default_allow_warns(mesh: Invoke) -> None:
    ok(mesh, "mesh", "set", "--default-action", "allow")
    r = mesh("policy", "allow", "--from", "web", "--to", "orders")
    assert r.exit_code == 0
    assert "mesh default is allow" in r.output
