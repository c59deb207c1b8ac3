"""Structure of the compiled RBAC: filters, actions, principals, permissions, shadow rules."""

from __future__ import annotations

import re

import pytest
from envoy.config.rbac.v3 import rbac_pb2 as rbac
from envoy.extensions.filters.http.rbac.v3 import rbac_pb2 as http_rbac
from envoy.extensions.filters.network.rbac.v3 import rbac_pb2 as net_rbac

from meshgate.model import Mesh, PathMatch, Policy, Service, World
from meshgate.policy.compile import (
    ALLOW_FILTER,
    DENY_FILTER,
    http_rbac_filters,
    http_rbac_per_route,
    network_rbac_filters,
    reachable_services,
    rule_sources,
)
from meshgate.policy.hardening import apply_path_hardening, hcm_path_hardening
from meshgate.policy.paths import glob_regex

SERVICES = {
    "web": Service("web"),
    "orders": Service("orders"),
    "billing": Service("billing", "grpc", 9000),
    "db": Service("db", "tcp", 5432),
}


def world(*policies: Policy, default: str = "deny") -> World:
    return World(
        revision=1,
        mesh=Mesh("example.org", default_action=default),  # type: ignore[arg-type]
        services=SERVICES,
        policies=policies,
    )


def unpack(w: World, service: str) -> list[tuple[str, http_rbac.RBAC]]:
    """The RBAC config each filter runs with for `service`: the route's override.
    Filters switched off on the route are left out."""
    out = []
    per_route = http_rbac_per_route(w, service)
    for f in http_rbac_filters(w, service):
        override = http_rbac.RBACPerRoute()
        assert per_route[f.name].Unpack(override)
        if override.HasField("rbac"):
            out.append((f.name, override.rbac))
    return out


def test_listener_filters_do_not_depend_on_policies_and_fail_closed() -> None:
    empty = http_rbac_filters(world(), "orders")
    full = http_rbac_filters(world(Policy("a", "allow", ("web",), "orders"),
                                   Policy("d", "deny", ("*",), "orders", mode="audit")), "orders")
    assert [f.SerializeToString(deterministic=True) for f in empty] == \
        [f.SerializeToString(deterministic=True) for f in full]
    assert [f.name for f in empty] == [DENY_FILTER, ALLOW_FILTER]
    configs = []
    for f in empty:
        cfg = http_rbac.RBAC()
        assert f.typed_config.Unpack(cfg)
        configs.append(cfg)
    deny, allow = configs
    assert not deny.HasField("rules")
    assert allow.rules.action == rbac.RBAC.ALLOW and not allow.rules.policies  # refuses all
    assert deny.rules_stat_prefix == "deny." and deny.shadow_rules_stat_prefix == "deny_audit."
    assert allow.rules_stat_prefix == "allow." and allow.shadow_rules_stat_prefix == "allow_audit."
    assert deny.track_per_rule_stats and allow.track_per_rule_stats


def test_default_deny_without_rules_is_one_empty_allow_filter() -> None:
    [(name, cfg)] = unpack(world(), "orders")
    assert name == ALLOW_FILTER
    assert cfg.HasField("rules") and cfg.rules.action == rbac.RBAC.ALLOW
    assert dict(cfg.rules.policies) == {}  # ALLOW with no policy refuses every call
    assert not cfg.HasField("shadow_rules")


def test_default_allow_without_deny_rules_switches_both_filters_off() -> None:
    per_route = http_rbac_per_route(world(default="allow"), "orders")
    for name in (DENY_FILTER, ALLOW_FILTER):
        override = http_rbac.RBACPerRoute()
        assert per_route[name].Unpack(override)
        assert not override.HasField("rbac")  # RBACPerRoute without rbac: filter off
    assert unpack(world(default="allow"), "orders") == []
    assert reachable_services(world(default="allow"), "web") == set(SERVICES)


def test_deny_filter_runs_before_allow_filter_and_policies_are_named_by_rule_id() -> None:
    w = world(
        Policy("web-reads", "allow", ("web",), "orders", methods=("GET",)),
        Policy("no-admin", "deny", ("*",), "orders", paths=(PathMatch("prefix", "/admin"),)),
    )
    filters = unpack(w, "orders")
    assert [n for n, _ in filters] == [DENY_FILTER, ALLOW_FILTER]
    deny, allow = filters[0][1], filters[1][1]
    assert deny.rules.action == rbac.RBAC.DENY and list(deny.rules.policies) == ["no-admin"]
    assert allow.rules.action == rbac.RBAC.ALLOW and list(allow.rules.policies) == ["web-reads"]
    # deny '*' = any caller (even without a certificate); paths fold case in deny rules
    p = deny.rules.policies["no-admin"]
    assert p.principals[0].any
    assert p.permissions[0].url_path.path.prefix == "/admin"
    assert p.permissions[0].url_path.path.ignore_case
    # the allow rule: exact SPIFFE id of the caller, method header, case kept
    a = allow.rules.policies["web-reads"]
    assert a.principals[0].authenticated.principal_name.exact == "spiffe://example.org/svc/web"
    assert a.permissions[0].header.name == ":method"
    assert a.permissions[0].header.string_match.exact == "GET"
    assert not a.permissions[0].header.string_match.ignore_case
    assert rule_sources(w, "orders") == ("policy:no-admin", "policy:web-reads")


def test_star_and_edge_sources_in_allow_rules() -> None:
    w = world(Policy("from-all", "allow", ("*",), "orders"),
              Policy("from-edge", "allow", ("edge:public", "web"), "orders"))
    [(_, allow)] = unpack(w, "orders")
    star = allow.rules.policies["from-all"].principals[0]
    assert star.authenticated.principal_name.prefix == "spiffe://example.org/"
    both = allow.rules.policies["from-edge"].principals[0]
    assert [i.authenticated.principal_name.exact for i in both.or_ids.ids] == [
        "spiffe://example.org/edge/public",
        "spiffe://example.org/svc/web",
    ]
    assert allow.rules.policies["from-all"].permissions[0].any


def test_narrowing_is_and_of_or_groups() -> None:
    p = Policy(
        "narrow", "allow", ("web",), "orders",
        methods=("GET", "HEAD"),
        paths=(PathMatch("exact", "/a"), PathMatch("glob", "/api/*/items")),
        headers=(("x-tenant", "blue"),),
    )
    [(_, allow)] = unpack(world(p), "orders")
    perm = allow.rules.policies["narrow"].permissions[0]
    rules = perm.and_rules.rules
    assert len(rules) == 3
    assert [r.header.string_match.exact for r in rules[0].or_rules.rules] == ["GET", "HEAD"]
    paths = rules[1].or_rules.rules
    assert paths[0].url_path.path.exact == "/a"
    assert paths[1].url_path.path.safe_regex.regex == "^/api/[^/]+/items$"
    assert rules[2].header.name == "x-tenant" and rules[2].header.string_match.exact == "blue"


def test_grpc_methods_compile_to_exact_and_prefix_paths() -> None:
    p = Policy("rpc", "allow", ("web",), "billing",
               grpc_methods=("shop.Billing/Charge", "shop.Refunds/*"))
    [(_, allow)] = unpack(world(p), "billing")
    paths = allow.rules.policies["rpc"].permissions[0].or_rules.rules
    assert paths[0].url_path.path.exact == "/shop.Billing/Charge"
    assert paths[1].url_path.path.prefix == "/shop.Refunds/"


def test_audit_rules_go_to_shadow_rules_with_enforced_rules() -> None:
    w = world(
        Policy("enforced-deny", "deny", ("web",), "orders", paths=(PathMatch("prefix", "/x"),)),
        Policy("try-deny", "deny", ("web",), "orders", paths=(PathMatch("prefix", "/y"),), mode="audit"),
        Policy("try-allow", "allow", ("web",), "orders", mode="audit"),
    )
    deny, allow = (cfg for _, cfg in unpack(w, "orders"))
    assert list(deny.rules.policies) == ["enforced-deny"]
    assert sorted(deny.shadow_rules.policies) == ["enforced-deny", "try-deny"]
    assert deny.shadow_rules.action == rbac.RBAC.DENY
    assert list(allow.rules.policies) == []  # audit allow is not enforced
    assert list(allow.shadow_rules.policies) == ["try-allow"]
    # an audited allow makes the target reachable, so the call can be observed there
    assert reachable_services(w, "web") == {"orders"}


def test_audit_only_deny_filter_enforces_nothing() -> None:
    w = world(Policy("try", "deny", ("web",), "orders", mode="audit"), default="allow")
    [(name, cfg)] = unpack(w, "orders")
    assert name == DENY_FILTER
    assert not cfg.HasField("rules")
    assert list(cfg.shadow_rules.policies) == ["try"]


def test_network_filters_for_tcp_have_any_permission() -> None:
    w = world(Policy("app-db", "allow", ("web",), "db"), Policy("no-orders", "deny", ("orders",), "db"))
    out = []
    for f in network_rbac_filters(w, "db"):
        cfg = net_rbac.RBAC()
        assert f.typed_config.Unpack(cfg)
        out.append((f.name, cfg))
    assert [n for n, _ in out] == [DENY_FILTER, ALLOW_FILTER]
    assert all(cfg.stat_prefix for _, cfg in out)
    assert out[1][1].rules.policies["app-db"].permissions[0].any


def test_reachability_ignores_deny_rules_and_other_callers() -> None:
    w = world(
        Policy("a", "allow", ("web",), "orders"),
        Policy("b", "allow", ("*",), "billing"),
        Policy("c", "allow", ("orders",), "db"),
        Policy("d", "deny", ("web",), "db"),
        Policy("ghost", "allow", ("web",), "not-a-service"),
    )
    assert reachable_services(w, "web") == {"orders", "billing"}
    assert reachable_services(w, "orders") == {"billing", "db"}


@pytest.mark.parametrize(
    ("glob", "yes", "no"),
    [
        ("/api/*", ["/api/x", "/api/x.y"], ["/api/", "/api/x/y", "/api"]),
        ("/api/**", ["/api/", "/api/x", "/api/x/y/z"], ["/api", "/apix"]),
        ("/a/**/z", ["/a/z", "/a/b/z", "/a/b/c/z"], ["/a/bz", "/a/z/q"]),
        ("/files/*.json", ["/files/a.json", "/files/.json"], ["/files/a/b.json", "/files/a.jsonx"]),
        ("/v1.2/*", ["/v1.2/x"], ["/v1x2/x"]),
    ],
)
def test_glob_regex(glob: str, yes: list[str], no: list[str]) -> None:
    rx = glob_regex(glob)
    for p in yes:
        assert re.fullmatch(rx, p), (glob, p)
    for p in no:
        assert not re.fullmatch(rx, p), (glob, p)


def test_hcm_hardening_fields() -> None:
    from envoy.extensions.filters.network.http_connection_manager.v3 import (
        http_connection_manager_pb2 as hcm,
    )

    m = hcm.HttpConnectionManager(stat_prefix="x", **hcm_path_hardening())
    assert m.normalize_path.value and m.merge_slashes
    assert m.path_with_escaped_slashes_action == hcm.HttpConnectionManager.REJECT_REQUEST
    assert apply_path_hardening(hcm.HttpConnectionManager(stat_prefix="y")).merge_slashes
