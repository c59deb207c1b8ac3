"""check/explain, table-driven: decision, deciding rule, audit notes, normalized path."""

from __future__ import annotations

import pytest

from meshgate.errors import NotFound, ValidationError
from meshgate.model import Mesh, PathMatch, Policy, Proxy, Service, World
from meshgate.policy.check import check
from meshgate.policy.matrix import access_matrix, cell
from meshgate.policy.paths import normalize_request_path, rule_path_problems

SERVICES = {
    "web": Service("web"),
    "api": Service("api"),
    "orders": Service("orders"),
    "billing": Service("billing", "grpc", 9000),
    "db": Service("db", "tcp", 5432),
}
POLICIES = (
    Policy("web-orders", "allow", ("web",), "orders", methods=("GET",), paths=(PathMatch("glob", "/api/**"),)),
    Policy("api-orders-write", "allow", ("api",), "orders", methods=("POST", "PUT"),
           paths=(PathMatch("prefix", "/api/orders"),), headers=(("x-tenant", "blue"),)),
    Policy("all-health", "allow", ("*",), "orders", paths=(PathMatch("exact", "/health"),)),
    Policy("no-admin", "deny", ("*",), "orders", paths=(PathMatch("prefix", "/admin"),)),
    Policy("api-no-delete", "deny", ("api",), "orders", methods=("DELETE",)),
    Policy("try-deny-legacy", "deny", ("web",), "orders", paths=(PathMatch("exact", "/api/legacy"),), mode="audit"),
    Policy("try-allow-api", "allow", ("api",), "orders", methods=("GET",), mode="audit"),
    Policy("charge", "allow", ("web",), "billing", grpc_methods=("shop.Billing/Charge",)),
    Policy("web-db", "allow", ("web", "edge:public"), "db"),
)


def world(default: str = "deny", policies: tuple[Policy, ...] = POLICIES) -> World:
    return World(
        revision=1,
        mesh=Mesh("example.org", default_action=default),  # type: ignore[arg-type]
        services=SERVICES,
        proxies={"public": Proxy("public", "edge", listen="127.0.0.1:8443")},
        policies=policies,
    )


# caller, target, method, path, headers, grpc, -> allowed, rule, status
TABLE = [
    ("web", "orders", "GET", "/api/x", {}, None, True, "web-orders", None),
    ("web", "orders", "GET", "/api/a/b?c=/admin", {}, None, True, "web-orders", None),
    ("web", "orders", "POST", "/api/x", {}, None, False, None, 403),
    ("web", "orders", "GET", "/admin", {}, None, False, "no-admin", 403),
    ("web", "orders", "GET", "/api/../admin", {}, None, False, "no-admin", 403),
    ("web", "orders", "GET", "/ADMIN/x", {}, None, False, "no-admin", 403),
    ("web", "orders", "GET", "/%61dmin", {}, None, False, "no-admin", 403),
    ("web", "orders", "GET", "//admin", {}, None, False, "no-admin", 403),
    ("web", "orders", "GET", "/api/..;/admin", {}, None, False, "no-admin", 403),
    ("web", "orders", "GET", "/api%2Fadmin", {}, None, False, None, 400),
    ("web", "orders", "GET", "/api/x#frag", {}, None, False, None, 400),
    ("web", "orders", "get", "/api/x", {}, None, False, None, 400),
    ("web", "orders", "GET", "/API/x", {}, None, False, None, 403),  # allow rules keep case
    ("api", "orders", "POST", "/api/orders/1", {"x-tenant": "blue"}, None, True, "api-orders-write", None),
    ("api", "orders", "POST", "/api/orders/1", {"X-Tenant": "blue"}, None, True, "api-orders-write", None),
    ("api", "orders", "POST", "/api/orders/1", {"x-tenant": "Blue"}, None, False, None, 403),
    ("api", "orders", "POST", "/api/orders/1", {}, None, False, None, 403),
    ("api", "orders", "DELETE", "/health", {}, None, False, "api-no-delete", 403),
    ("api", "orders", "GET", "/health", {}, None, True, "all-health", None),
    ("edge:public", "orders", "GET", "/health", {}, None, True, "all-health", None),
    ("api", "orders", "GET", "/api/x", {}, None, False, None, 403),  # audit allow is not enforced
    ("orders", "web", "GET", "/", {}, None, False, None, 403),  # unlisted pair, default deny
    ("web", "billing", "POST", "/", {}, "shop.Billing/Charge", True, "charge", None),
    ("web", "billing", "POST", "/", {}, "shop.Billing/Refund", False, None, 403),
    ("web", "db", "GET", "/", {}, None, True, "web-db", None),
    ("edge:public", "db", "GET", "/", {}, None, True, "web-db", None),
    ("api", "db", "GET", "/", {}, None, False, None, 403),
    ("spiffe://other.org/svc/web", "orders", "GET", "/api/x", {}, None, False, None, 403),
]


@pytest.mark.parametrize(("caller", "target", "method", "path", "headers", "grpc", "allowed", "rule", "status"), TABLE)
def test_check_table(caller: str, target: str, method: str, path: str, headers: dict[str, str],
                     grpc: str | None, allowed: bool, rule: str | None, status: int | None) -> None:
    d = check(world(), caller, target, method, path, headers, grpc)
    assert (d.allowed, d.rule_id, d.status) == (allowed, rule, status), d
    if status == 403:
        assert d.detail == f"rbac_access_denied_matched_policy[{rule or 'none'}]"
    if not allowed and rule is None and status == 403:
        assert "default is deny" in d.reason


def test_default_allow_lets_unlisted_pairs_through_but_deny_still_wins() -> None:
    w = world("allow")
    d = check(w, "orders", "web")
    assert d.allowed and d.rule_id is None and "default is allow" in d.reason
    assert not check(w, "orders", "orders", "GET", "/admin").allowed
    # allow rules change nothing under default allow
    assert check(w, "api", "orders", "GET", "/anything").allowed


def test_audit_notes() -> None:
    w = world()
    d = check(w, "web", "orders", "GET", "/api/legacy")
    assert d.allowed and d.audit_rule_ids == ("try-deny-legacy",) and not d.would_allow
    d = check(w, "api", "orders", "GET", "/api/x")
    assert not d.allowed and d.audit_rule_ids == ("try-allow-api",) and d.would_allow
    d = check(w, "web", "orders", "GET", "/api/other")
    assert d.allowed and d.audit_rule_ids == () and d.would_allow


def test_deny_rule_order_is_by_id_like_envoy() -> None:
    w = world(policies=(
        Policy("b-deny", "deny", ("web",), "orders"),
        Policy("a-deny", "deny", ("*",), "orders"),
    ))
    assert check(w, "web", "orders").rule_id == "a-deny"


def test_check_errors() -> None:
    with pytest.raises(NotFound):
        check(world(), "web", "nope")
    with pytest.raises(ValidationError, match="not one caller"):
        check(world(), "*", "orders")


def test_matrix() -> None:
    w = world()
    assert cell(w, "web", "orders").access == "some"
    assert cell(w, "web", "orders").audit_rules == ("try-deny-legacy",)
    assert cell(w, "web", "db").access == "all"
    assert cell(w, "api", "db").access == "none"
    assert cell(w, "orders", "web").access == "none"
    assert cell(w, "edge:public", "db").access == "all"
    # an unconditional deny makes a pair "none" even with an unconditional allow
    w2 = world(policies=(Policy("a", "allow", ("web",), "db"), Policy("d", "deny", ("web",), "db")))
    assert cell(w2, "web", "db").access == "none"
    # a narrowed deny makes an otherwise open pair "some"
    w3 = world("allow", (Policy("d", "deny", ("web",), "orders", methods=("DELETE",)),))
    assert cell(w3, "web", "orders").access == "some"
    assert cell(w3, "api", "orders").access == "all"
    cells = access_matrix(w)
    assert len(cells) == (len(SERVICES) + 1) * len(SERVICES)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("/a/../b", "/b"), ("/..", "/"), ("/a/.", "/a/"), ("//a//b/", "/a/b/"),
        ("/%7e%41", "/~A"), ("/%3b%3B", "/%3b%3B"), ("/a\\b", "/a/b"), ("/a/..;/b", "/b"),
        ("/a/.;x/b", "/a/b"), ("/a/%2e%2e;/b", "/a/..;/b"), ("/x?y", "/x"), ("///", "//"),
        ("/a/{b}", "/a/%7Bb%7D"), ("/%2e%2E/x", "/x"),
    ],
)
def test_normalization(raw: str, expected: str) -> None:
    assert normalize_request_path(raw).path == expected


@pytest.mark.parametrize("raw", ["/a%2fb", "/a%5Cb", "/a#b", "/a%00", "a/b"])
def test_normalization_rejects(raw: str) -> None:
    n = normalize_request_path(raw)
    assert n.path is None and n.rejected


@pytest.mark.parametrize(
    ("kind", "value", "problem"),
    [
        ("exact", "api", "start with '/'"),
        ("exact", "/a//b", "'//'"),
        ("exact", "/a/../b", "'..'"),
        ("exact", "/a/%41", "percent-escapes"),
        ("prefix", "/a b", "characters"),
        ("exact", "/a*", "wildcard only in --path globs"),
        ("glob", "/a/**b", "whole segment"),
        ("glob", "/a/b", "no '*'"),
    ],
)
def test_rule_path_problems(kind: str, value: str, problem: str) -> None:
    assert any(problem in p for p in rule_path_problems(value, kind)), rule_path_problems(value, kind)


@pytest.mark.parametrize(("kind", "value"), [("prefix", "/v1/."), ("prefix", "/"), ("glob", "/**"), ("exact", "/a;b=c")])
def test_rule_paths_fine(kind: str, value: str) -> None:
    assert rule_path_problems(value, kind) == []
