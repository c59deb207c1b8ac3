"""`policy check`: would this call pass, and which rule decides?

The answer comes from the compiled configuration itself: `check` unpacks the
exact messages Envoy gets (the listener's RBAC filters, overridden by the
inbound route's RBACPerRoute; or the network RBAC filters for tcp) and
evaluates them in filter order (evaluate.py), after the same
path normalization the hardened HCM applies (paths.py). So it agrees with
Envoy by construction; tests compare it with the real Envoy too.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from envoy.config.rbac.v3 import rbac_pb2 as rbac
from envoy.extensions.filters.http.rbac.v3 import rbac_pb2 as http_rbac
from envoy.extensions.filters.network.rbac.v3 import rbac_pb2 as net_rbac

from meshgate.errors import NotFound, ValidationError, Violation
from meshgate.model import World
from meshgate.policy.compile import http_rbac_filters, http_rbac_per_route, network_rbac_filters
from meshgate.policy.evaluate import Request, engine_decision, matching_policies
from meshgate.policy.paths import normalize_request_path
from meshgate.policy.validate import ANY_SOURCE, EDGE_PREFIX

DENIED_DETAIL = "rbac_access_denied_matched_policy[{}]"

# Methods Envoy's HTTP/1 codec accepts (the http-parser list); anything else,
# lower-case spellings included, is answered 400 before any filter runs (measured).
HTTP1_METHODS = frozenset(
    "ACL BIND CHECKOUT CONNECT COPY DELETE GET HEAD LINK LOCK M-SEARCH MERGE MKACTIVITY "
    "MKCALENDAR MKCOL MOVE NOTIFY OPTIONS PATCH POST PROPFIND PROPPATCH PURGE PUT REBIND "
    "REPORT SEARCH SOURCE SUBSCRIBE TRACE UNBIND UNLINK UNLOCK UNSUBSCRIBE".split()
)


@dataclass(frozen=True)
class Decision:
    allowed: bool
    rule_id: str | None  # the rule that decided; None when the mesh default decided
    reason: str
    status: int | None = None  # what Envoy answers instead of the app: 403 denied, 400 rejected
    detail: str | None = None  # Envoy's response code detail for a denial
    audit_rule_ids: tuple[str, ...] = ()  # audit rules matching this call
    would_allow: bool = True  # the decision if audit rules were enforced
    path: str | None = None  # the path as Envoy's filters see it

    def as_dict(self) -> dict[str, object]:
        return {
            "allowed": self.allowed,
            "rule": self.rule_id,
            "reason": self.reason,
            "status": self.status,
            "envoy_detail": self.detail,
            "audit_rules": list(self.audit_rule_ids),
            "with_audit_enforced": "allow" if self.would_allow else "deny",
            "normalized_path": self.path,
        }


def caller_identity(world: World, caller: str) -> str:
    """The SPIFFE id a caller presents: a service name, 'edge:<gw>' or a spiffe:// URI."""
    if caller.startswith("spiffe://"):
        return caller
    if caller == ANY_SOURCE:
        raise ValidationError([Violation("from", "'*' is not one caller: name a service")])
    if caller.startswith(EDGE_PREFIX):
        return world.mesh.edge_identity(caller[len(EDGE_PREFIX):])
    return world.mesh.service_identity(caller)


def _rules(cfg) -> tuple[rbac.RBAC | None, rbac.RBAC | None]:  # type: ignore[no-untyped-def]
    return (
        cfg.rules if cfg.HasField("rules") else None,
        cfg.shadow_rules if cfg.HasField("shadow_rules") else None,
    )


def effective_http_rbac(world: World, target: str) -> list[tuple[str, rbac.RBAC | None, rbac.RBAC | None]]:
    """What Envoy runs for a request to `target`: the listener's RBAC filters, each
    replaced by the inbound route's RBACPerRoute (or skipped when that switches it off)."""
    per_route = http_rbac_per_route(world, target)
    out = []
    for f in http_rbac_filters(world, target):
        cfg = http_rbac.RBAC()
        if not f.typed_config.Unpack(cfg):
            raise TypeError(f"filter {f.name} is not an HTTP RBAC config")
        if f.name in per_route:
            override = http_rbac.RBACPerRoute()
            if not per_route[f.name].Unpack(override):
                raise TypeError(f"per-route config of {f.name} is not RBACPerRoute")
            if not override.HasField("rbac"):
                continue  # switched off for this route
            cfg = override.rbac
        out.append((f.name, *_rules(cfg)))
    return out


def network_rbac(world: World, target: str) -> list[tuple[str, rbac.RBAC | None, rbac.RBAC | None]]:
    out = []
    for f in network_rbac_filters(world, target):
        cfg = net_rbac.RBAC()
        if not f.typed_config.Unpack(cfg):
            raise TypeError(f"filter {f.name} is not a network RBAC config")
        out.append((f.name, *_rules(cfg)))
    return out


def check(
    world: World,
    caller: str,
    target: str,
    method: str = "GET",
    path: str = "/",
    headers: Mapping[str, str] | None = None,
    grpc_method: str | None = None,
) -> Decision:
    """The decision Envoy's inbound RBAC on `target` makes for this call."""
    svc = world.services.get(target)
    if svc is None:
        raise NotFound(f"service {target!r} not found")
    principal = caller_identity(world, caller)
    hdrs = {k.lower(): v for k, v in (headers or {}).items()}
    if grpc_method:
        method, path = "POST", "/" + grpc_method
        hdrs.setdefault("content-type", "application/grpc")
    hdrs[":method"] = method

    if svc.protocol == "tcp":
        compiled = network_rbac(world, target)
        norm_path = None
        req = Request(principal=principal, path="", headers={})
    else:
        if method not in HTTP1_METHODS:
            return Decision(
                allowed=False, rule_id=None, status=400, would_allow=False,
                reason=f"rejected by Envoy's HTTP/1 codec: unknown method {method!r}",
            )
        normalized = normalize_request_path(path)
        if normalized.path is None:
            return Decision(
                allowed=False, rule_id=None, reason=f"rejected by path hardening: {normalized.rejected}",
                status=400, would_allow=False,
            )
        norm_path = normalized.path
        hdrs[":path"] = norm_path
        req = Request(principal=principal, path=norm_path, headers=hdrs)
        compiled = effective_http_rbac(world, target)

    audit: list[str] = []
    would_allow = True
    allowed_by: str | None = None
    for _name, live, shadow in compiled:
        # Envoy evaluates a filter's shadow rules first, then its enforced rules;
        # a denial stops the chain, so later filters neither decide nor count.
        if shadow is not None:
            enforced_names = set(live.policies) if live is not None else set()
            audit += [n for n in matching_policies(shadow, req) if n not in enforced_names]
            would_allow = engine_decision(shadow, req)[0] and would_allow
        if live is None:
            continue
        ok, policy = engine_decision(live, req)
        if shadow is None:
            would_allow = ok and would_allow
        if not ok:
            detail = DENIED_DETAIL.format(policy or "none")
            if policy is None:
                reason = f"denied: no allow rule lets {caller} call {target} (the mesh default is deny)"
            else:
                reason = f"denied by deny rule {policy!r}"
            return Decision(
                allowed=False, rule_id=policy, reason=reason, status=403, detail=detail,
                audit_rule_ids=tuple(audit), would_allow=would_allow, path=norm_path,
            )
        if live.action == rbac.RBAC.ALLOW:
            allowed_by = policy
    if allowed_by is not None:
        reason = f"allowed by rule {allowed_by!r}"
    else:
        reason = "allowed: no deny rule matches (the mesh default is allow)"
    return Decision(
        allowed=True, rule_id=allowed_by, reason=reason, audit_rule_ids=tuple(audit),
        would_allow=would_allow, path=norm_path,
    )
