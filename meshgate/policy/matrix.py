"""Which service may call which: the access matrix, read off the compiled RBAC.

For every (caller, target) pair the compiled filters of the target are asked
which of their policies name the caller's identity:
- `all`: every request passes (an unconditional allow, or the mesh default is
  allow, and no deny rule names the caller);
- `some`: only some requests pass (the allow rules naming the caller are
  narrowed by method/path/header, or a narrowed deny rule names the caller);
- `none`: nothing passes (no allow rule names the caller under default deny,
  or an unconditional deny rule does).
Audit rules naming the pair are listed beside the cell; they change nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

from envoy.config.rbac.v3 import rbac_pb2 as rbac

from meshgate.model import World
from meshgate.policy.compile import compiled_rbac
from meshgate.policy.evaluate import Request, principal_matches
from meshgate.policy.validate import EDGE_PREFIX


@dataclass(frozen=True)
class Cell:
    caller: str
    target: str
    access: str  # all | some | none
    rules: tuple[str, ...]  # enforced rules naming this pair
    audit_rules: tuple[str, ...]  # audit rules naming this pair

    def as_dict(self) -> dict[str, object]:
        return {
            "from": self.caller,
            "to": self.target,
            "access": self.access,
            "rules": list(self.rules),
            "audit_rules": list(self.audit_rules),
        }


def callers(world: World) -> list[str]:
    """Every service, then every edge gateway (`edge:<name>`)."""
    edges = sorted(p.name for p in world.proxies.values() if p.kind == "edge")
    return sorted(world.services) + [EDGE_PREFIX + e for e in edges]


def _naming(rules: rbac.RBAC | None, req: Request) -> list[tuple[str, bool]]:
    """(policy name, unconditional?) for the policies whose principals match the caller."""
    if rules is None:
        return []
    out = []
    for name in sorted(rules.policies):
        policy = rules.policies[name]
        if any(principal_matches(i, req) for i in policy.principals):
            out.append((name, any(p.WhichOneof("rule") == "any" and p.any for p in policy.permissions)))
    return out


def cell(world: World, caller: str, target: str) -> Cell:
    if caller.startswith(EDGE_PREFIX):
        identity = world.mesh.edge_identity(caller[len(EDGE_PREFIX):])
    else:
        identity = world.mesh.service_identity(caller)
    req = Request(principal=identity, path="", headers={})
    http = world.services[target].protocol != "tcp"
    access = "all"
    rules: list[str] = []
    audit: list[str] = []
    for _name, live, shadow in compiled_rbac(world, target, http=http):
        enforced = _naming(live, req)
        enforced_names = {n for n, _ in enforced}
        audit += [n for n, _ in _naming(shadow, req) if n not in enforced_names]
        if live is None:
            continue
        rules += [n for n, _ in enforced]
        if live.action == rbac.RBAC.DENY:
            if any(unconditional for _, unconditional in enforced):
                access = "none"
            elif enforced and access == "all":
                access = "some"
        else:
            if not enforced:
                access = "none"
            elif not any(unconditional for _, unconditional in enforced) and access == "all":
                access = "some"
    return Cell(caller, target, access, tuple(rules), tuple(audit))


def access_matrix(world: World) -> list[Cell]:
    """One cell per (caller, target) pair, callers and targets sorted."""
    return [cell(world, c, t) for c in callers(world) for t in sorted(world.services)]
