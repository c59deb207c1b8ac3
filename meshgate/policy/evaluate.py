"""Evaluating compiled Envoy RBAC protobufs against one request, the way Envoy does.

`policy check` runs the very RBAC messages `compile.py` sends to Envoy through
this evaluator, so the explanation and the data path cannot drift apart. It
understands exactly the matchers meshgate generates and refuses anything else
(`UnsupportedRule`), so a new kind of rule cannot be silently misjudged.

Envoy semantics reproduced here:
- a policy matches when any of its permissions and any of its principals match;
- policies are tried in name order (Envoy keeps them in a sorted map), the
  first match is the effective policy;
- ALLOW action: allowed iff some policy matches; DENY: denied iff some matches;
- `authenticated.principal_name` matches the peer certificate's URI SAN;
  without a client certificate `authenticated` never matches;
- a StringMatcher `safe_regex` must match the whole value; `ignore_case`
  folds ASCII case for exact/prefix/suffix/contains;
- url_path matches the path without its query string.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from envoy.config.rbac.v3 import rbac_pb2 as rbac
from envoy.config.route.v3 import route_components_pb2
from envoy.type.matcher.v3 import string_pb2

from meshgate.policy.errors import PolicyError


class UnsupportedRule(PolicyError):
    """The compiled RBAC uses a matcher this evaluator does not model."""


@dataclass(frozen=True)
class Request:
    principal: str | None  # the caller certificate's URI SAN; None for plaintext
    path: str  # normalized, without query
    headers: Mapping[str, str]  # lower-case names, with ":method"


def string_matches(m: string_pb2.StringMatcher, value: str) -> bool:
    kind = m.WhichOneof("match_pattern")
    if kind == "safe_regex":
        return re.fullmatch(m.safe_regex.regex, value) is not None
    if kind not in ("exact", "prefix", "suffix", "contains"):
        raise UnsupportedRule(f"string matcher {kind!r}")
    pattern = getattr(m, kind)
    if m.ignore_case:
        pattern, value = pattern.lower(), value.lower()
    if kind == "exact":
        return value == pattern
    if kind == "prefix":
        return value.startswith(pattern)
    if kind == "suffix":
        return value.endswith(pattern)
    return pattern in value


def header_matches(h: route_components_pb2.HeaderMatcher, req: Request) -> bool:
    kind = h.WhichOneof("header_match_specifier")
    value = req.headers.get(h.name.lower())
    if kind == "string_match":
        result = value is not None and string_matches(h.string_match, value)
    elif kind == "present_match":
        result = (value is not None) == h.present_match
    else:
        raise UnsupportedRule(f"header matcher {kind!r}")
    return result != h.invert_match


def permission_matches(p: rbac.Permission, req: Request) -> bool:
    kind = p.WhichOneof("rule")
    if kind == "any":
        return p.any
    if kind == "and_rules":
        return all(permission_matches(r, req) for r in p.and_rules.rules)
    if kind == "or_rules":
        return any(permission_matches(r, req) for r in p.or_rules.rules)
    if kind == "not_rule":
        return not permission_matches(p.not_rule, req)
    if kind == "header":
        return header_matches(p.header, req)
    if kind == "url_path":
        if p.url_path.WhichOneof("rule") != "path":
            raise UnsupportedRule("url_path without a path matcher")
        return string_matches(p.url_path.path, req.path)
    raise UnsupportedRule(f"permission {kind!r}")


def principal_matches(p: rbac.Principal, req: Request) -> bool:
    kind = p.WhichOneof("identifier")
    if kind == "any":
        return p.any
    if kind == "and_ids":
        return all(principal_matches(i, req) for i in p.and_ids.ids)
    if kind == "or_ids":
        return any(principal_matches(i, req) for i in p.or_ids.ids)
    if kind == "not_id":
        return not principal_matches(p.not_id, req)
    if kind == "authenticated":
        if req.principal is None:
            return False
        if not p.authenticated.HasField("principal_name"):
            return True
        return string_matches(p.authenticated.principal_name, req.principal)
    raise UnsupportedRule(f"principal {kind!r}")


def policy_matches(policy: rbac.Policy, req: Request) -> bool:
    if policy.HasField("condition") or policy.HasField("checked_condition"):
        raise UnsupportedRule("CEL conditions")
    return any(permission_matches(p, req) for p in policy.permissions) and any(
        principal_matches(i, req) for i in policy.principals
    )


def matching_policies(rules: rbac.RBAC, req: Request) -> list[str]:
    """Names of every policy of `rules` matching `req`, in Envoy's order."""
    return [name for name in sorted(rules.policies) if policy_matches(rules.policies[name], req)]


def engine_decision(rules: rbac.RBAC, req: Request) -> tuple[bool, str | None]:
    """(allowed, effective policy name or None), like Envoy's RBAC engine."""
    matched = matching_policies(rules, req)
    first = matched[0] if matched else None
    if rules.action == rbac.RBAC.ALLOW:
        return first is not None, first
    if rules.action == rbac.RBAC.DENY:
        return first is None, first
    raise UnsupportedRule(f"RBAC action {rbac.RBAC.Action.Name(rules.action)}")
