"""Policies to Envoy RBAC: pure, world in, protobuf out.

How the semantics map onto Envoy (docs/policy.md explains it to users):

- A target's inbound HTTP connection manager always runs two RBAC filters, in
  order, before the router:
  1. `meshgate.rbac.deny`: a DENY-action RBAC holding the target's deny rules.
     Deny wins because it runs first.
  2. `meshgate.rbac.allow`: an ALLOW-action RBAC holding the allow rules. With
     no allow rule it holds no policy and so refuses everything (default deny).
- The rules themselves travel in the inbound ROUTE configuration (RDS), as
  `typed_per_filter_config` (RBACPerRoute) on its virtual host
  (`http_rbac_per_route`). The filters in the listener hold only stat
  prefixes and a fail-closed default (the allow filter refuses everything).
  Why: a listener change makes Envoy drain the old listener, and connections
  already open (pooled HTTP/2 from callers' sidecars) keep the OLD rules for
  up to the drain time (10 minutes by default); measured. A route change
  applies to the very next request on every connection.
  A filter that has nothing to do for a target is switched off per route
  (RBACPerRoute without `rbac`): the deny filter without deny rules, the
  allow filter when the mesh default is allow.
- tcp targets: the network RBAC filters sit in the listener (there are no
  routes); a change applies to new connections.
- Each Envoy policy is named by the rule id: a denial reads
  `rbac_access_denied_matched_policy[<rule id>]` (`[none]` when the default
  deny decided).
- Audit rules go to `shadow_rules`. A filter's shadow rules are its enforced
  rules plus its audit rules, i.e. "what this filter would decide if the
  audit rules were enforced"; Envoy counts that as `shadow_allowed` /
  `shadow_denied` under the filter's shadow prefix and names the deciding
  rule in dynamic metadata. Shadow rules exist only when audit rules do.
  HTTP filters also count per rule (`...rbac.deny_audit.policy.<id>.shadow_denied`).
- Principals are the caller's mTLS identity (URI SAN): `spiffe://<td>/svc/<name>`
  or `spiffe://<td>/edge/<gateway>`. '*' in an allow rule is any mesh identity
  (prefix `spiffe://<td>/`); '*' in a deny rule is any caller at all, so a
  plaintext caller (permissive mTLS) cannot slip past a deny rule.
- Deny rules compare methods and paths ignoring ASCII case (`/ADMIN` cannot get
  around `deny /admin`); allow rules match exactly as written.
"""

from __future__ import annotations

from collections.abc import Iterable

from envoy.config.listener.v3 import listener_components_pb2
from envoy.config.rbac.v3 import rbac_pb2 as rbac
from envoy.config.route.v3 import route_components_pb2
from envoy.extensions.filters.http.rbac.v3 import rbac_pb2 as http_rbac
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm,
)
from envoy.extensions.filters.network.rbac.v3 import rbac_pb2 as net_rbac
from envoy.type.matcher.v3 import path_pb2, regex_pb2, string_pb2
from google.protobuf import any_pb2

from meshgate.model import Policy, World
from meshgate.policy.paths import glob_regex
from meshgate.policy.validate import ANY_SOURCE, EDGE_PREFIX

DENY_FILTER = "meshgate.rbac.deny"
ALLOW_FILTER = "meshgate.rbac.allow"
# Stat prefixes keep the two filters' counters apart (http.<hcm prefix>.rbac.<prefix>...).
STAT_PREFIX = {DENY_FILTER: "deny.", ALLOW_FILTER: "allow."}
SHADOW_STAT_PREFIX = {DENY_FILTER: "deny_audit.", ALLOW_FILTER: "allow_audit."}
# Network filters need a stat_prefix of their own (<prefix>rbac.denied ...).
NET_STAT_PREFIX = {DENY_FILTER: "inbound_deny.", ALLOW_FILTER: "inbound_allow."}


def _any(message) -> any_pb2.Any:  # type: ignore[no-untyped-def]
    packed = any_pb2.Any()
    packed.Pack(message)
    return packed


def rules_for(world: World, service: str) -> tuple[Policy, ...]:
    """The rules that land on `service`'s inbound side, in id order."""
    return tuple(sorted((p for p in world.policies if p.target == service), key=lambda p: p.id))


def rule_sources(world: World, service: str) -> tuple[str, ...]:
    """`policy:<id>` of every rule compiled into `service`'s inbound RBAC (for NACK tracing)."""
    return tuple(f"policy:{p.id}" for p in rules_for(world, service))


def principal_for_source(world: World, source: str, action: str) -> rbac.Principal:
    td = world.mesh.trust_domain
    if source == ANY_SOURCE:
        if action == "deny":
            return rbac.Principal(any=True)
        return _authenticated(string_pb2.StringMatcher(prefix=f"spiffe://{td}/"))
    if source.startswith(EDGE_PREFIX):
        uri = world.mesh.edge_identity(source[len(EDGE_PREFIX):])
    else:
        uri = world.mesh.service_identity(source)
    return _authenticated(string_pb2.StringMatcher(exact=uri))


def _authenticated(m: string_pb2.StringMatcher) -> rbac.Principal:
    return rbac.Principal(authenticated=rbac.Principal.Authenticated(principal_name=m))


def _any_permission(items: list[rbac.Permission]) -> rbac.Permission:
    return items[0] if len(items) == 1 else rbac.Permission(or_rules=rbac.Permission.Set(rules=items))


def _any_principal(items: list[rbac.Principal]) -> rbac.Principal:
    return items[0] if len(items) == 1 else rbac.Principal(or_ids=rbac.Principal.Set(ids=items))


def _path_matcher(kind: str, value: str, ignore_case: bool) -> rbac.Permission:
    if kind == "exact":
        m = string_pb2.StringMatcher(exact=value, ignore_case=ignore_case)
    elif kind == "prefix":
        m = string_pb2.StringMatcher(prefix=value, ignore_case=ignore_case)
    else:
        regex = glob_regex(value)
        if ignore_case:
            regex = "(?i)" + regex
        # no engine field: google_re2 is deprecated and RE2 is the default
        m = string_pb2.StringMatcher(safe_regex=regex_pb2.RegexMatcher(regex=regex))
    return rbac.Permission(url_path=path_pb2.PathMatcher(path=m))


def _grpc_matcher(method: str, ignore_case: bool) -> rbac.Permission:
    if method.endswith("/*"):
        return _path_matcher("prefix", "/" + method[:-1], ignore_case)
    return _path_matcher("exact", "/" + method, ignore_case)


def _header(name: str, value: str, ignore_case: bool = False) -> rbac.Permission:
    return rbac.Permission(
        header=route_components_pb2.HeaderMatcher(
            name=name, string_match=string_pb2.StringMatcher(exact=value, ignore_case=ignore_case)
        )
    )


def permission_for(p: Policy, *, http: bool) -> rbac.Permission:
    """What a request must look like to match `p` (every narrowing must hold)."""
    if not http:
        return rbac.Permission(any=True)
    fold = p.action == "deny"
    conditions: list[rbac.Permission] = []
    if p.methods:
        conditions.append(_any_permission([_header(":method", m, fold) for m in p.methods]))
    paths = [_path_matcher(pm.kind, pm.value, fold) for pm in p.paths]
    paths += [_grpc_matcher(gm, fold) for gm in p.grpc_methods]
    if paths:
        conditions.append(_any_permission(paths))
    conditions += [_header(k, v) for k, v in p.headers]
    if not conditions:
        return rbac.Permission(any=True)
    if len(conditions) == 1:
        return conditions[0]
    return rbac.Permission(and_rules=rbac.Permission.Set(rules=conditions))


def policy_for(world: World, p: Policy, *, http: bool) -> rbac.Policy:
    sources = p.sources
    if p.claims and p.action == "deny":
        # A sidecar sees the gateway's identity, never the caller's token: a deny
        # conditioned on claims is enforced by the gateway (xds/translate/edge_auth.py);
        # here it would deny every request the gateway forwards.
        sources = tuple(s for s in sources if not s.startswith(EDGE_PREFIX))
    principals = [principal_for_source(world, s, p.action) for s in sources]
    if not principals:
        principals = [rbac.Principal(not_id=rbac.Principal(any=True))]
    return rbac.Policy(
        permissions=[permission_for(p, http=http)],
        principals=[_any_principal(principals)],
    )


def _rbac(world: World, rules: Iterable[Policy], action: int, *, http: bool) -> rbac.RBAC:
    return rbac.RBAC(
        action=action, policies={p.id: policy_for(world, p, http=http) for p in rules}
    )


def compiled_rbac(world: World, service: str, *, http: bool) -> list[tuple[str, rbac.RBAC | None, rbac.RBAC | None]]:
    """(filter name, enforced rules or None, shadow rules or None) in filter order."""
    rules = rules_for(world, service)
    out: list[tuple[str, rbac.RBAC | None, rbac.RBAC | None]] = []
    for name, action, kind, wanted in (
        (DENY_FILTER, rbac.RBAC.DENY, "deny", bool([p for p in rules if p.action == "deny"])),
        (ALLOW_FILTER, rbac.RBAC.ALLOW, "allow", world.mesh.default_action == "deny"),
    ):
        if not wanted:
            continue
        enforced = [p for p in rules if p.action == kind and p.mode == "enforce"]
        audit = [p for p in rules if p.action == kind and p.mode == "audit"]
        # an allow filter always enforces (empty = refuse all); a deny filter only with rules
        live = _rbac(world, enforced, action, http=http) if enforced or kind == "allow" else None
        shadow = _rbac(world, enforced + audit, action, http=http) if audit else None
        out.append((name, live, shadow))
    return out


def _stats_only(name: str) -> http_rbac.RBAC:
    """The listener-side config: stat prefixes, per-rule counters, a fail-closed default.

    Envoy names enforced and shadow counters after these prefixes even when a
    route overrides the rules (measured), so they live here:
    http.<hcm>.rbac.<prefix>{allowed,denied}, ...policy.<rule id>.<result>.
    """
    cfg = http_rbac.RBAC(
        rules_stat_prefix=STAT_PREFIX[name],
        shadow_rules_stat_prefix=SHADOW_STAT_PREFIX[name],
        track_per_rule_stats=True,
    )
    if name == ALLOW_FILTER:
        cfg.rules.CopyFrom(rbac.RBAC(action=rbac.RBAC.ALLOW))  # no route config: refuse all
    return cfg


def http_rbac_filters(world: World, service: str) -> list[hcm.HttpFilter]:
    """The two RBAC filters for `service`'s inbound HCM, before the router.

    They do not depend on the policies (so policy changes never touch the
    listener); the rules come from `http_rbac_per_route` on the inbound route.
    `world` and `service` are kept for the callers' sake (and future use).
    """
    return [hcm.HttpFilter(name=n, typed_config=_any(_stats_only(n))) for n in (DENY_FILTER, ALLOW_FILTER)]


def http_rbac_per_route(world: World, service: str) -> dict[str, any_pb2.Any]:
    """`typed_per_filter_config` for the inbound virtual host of `service`:
    filter name -> packed RBACPerRoute (rules, or none to switch the filter off)."""
    compiled = {name: (live, shadow) for name, live, shadow in compiled_rbac(world, service, http=True)}
    out: dict[str, any_pb2.Any] = {}
    for name in (DENY_FILTER, ALLOW_FILTER):
        per_route = http_rbac.RBACPerRoute()
        if name in compiled:
            live, shadow = compiled[name]
            cfg = _stats_only(name)
            cfg.ClearField("rules")
            if live is not None:
                cfg.rules.CopyFrom(live)
            if shadow is not None:
                cfg.shadow_rules.CopyFrom(shadow)
            else:
                cfg.ClearField("shadow_rules_stat_prefix")
            per_route.rbac.CopyFrom(cfg)
        out[name] = _any(per_route)
    return out


def network_rbac_filters(world: World, service: str) -> list[listener_components_pb2.Filter]:
    """RBAC network filters for a tcp `service`'s inbound listener, before tcp_proxy."""
    filters = []
    for name, live, shadow in compiled_rbac(world, service, http=False):
        cfg = net_rbac.RBAC(stat_prefix=NET_STAT_PREFIX[name])
        if live is not None:
            cfg.rules.CopyFrom(live)
        if shadow is not None:
            cfg.shadow_rules.CopyFrom(shadow)
            cfg.shadow_rules_stat_prefix = SHADOW_STAT_PREFIX[name]
        filters.append(listener_components_pb2.Filter(name=name, typed_config=_any(cfg)))
    return filters


def reachable_services(world: World, service: str) -> set[str]:
    """Services `service` may call, for outbound scoping.

    Every service when the mesh default is allow. Otherwise the targets of allow
    rules (enforced or audit: an audited call must reach the target to be
    counted) naming `service` or '*' among their sources. Deny rules never
    narrow this: they are enforced at the target.
    """
    if world.mesh.default_action == "allow":
        return set(world.services)
    return {
        p.target
        for p in world.policies
        if p.action == "allow"
        and (service in p.sources or ANY_SOURCE in p.sources)
        and p.target in world.services
    }
