"""Checking one policy against the rules of the model and the current world.

Every violation is reported, each naming its field the way the model names it
(`methods[1]: unknown method "GTE"`), so CLI flags and YAML documents get the
same messages.
"""

from __future__ import annotations

import json
import re

from meshgate.errors import ValidationError, Violation
from meshgate.model import HTTP_METHODS, Policy, World
from meshgate.policy.paths import rule_path_problems
from meshgate.validation import Checker, is_dns_label

ACTIONS = ("allow", "deny")
MODES = ("enforce", "audit")
PATH_KINDS = ("exact", "prefix", "glob")
ANY_SOURCE = "*"
EDGE_PREFIX = "edge:"

# RFC 9110 token, lower case (Envoy lower-cases header names before matching)
_HEADER_NAME = re.compile(r"^[a-z0-9!#$%&'*+.^_`|~-]+$")
_HEADER_VALUE = re.compile(r"^[\x20-\x7e]*$")
# gRPC full method `package.Service/Method`, or `package.Service/*` for every method
_GRPC_METHOD = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*/([A-Za-z_][A-Za-z0-9_]*|\*)$")


def _q(value: object) -> str:
    """A value quoted for a message: "GTE"."""
    return json.dumps(value) if isinstance(value, str) else repr(value)


def _source_problem(source: str, world: World | None, allow_unknown: bool) -> str | None:
    if source == ANY_SOURCE:
        return None
    if source.startswith(EDGE_PREFIX):
        gateway = source[len(EDGE_PREFIX):]
        if not is_dns_label(gateway):
            return f"{_q(source)}: {_q(gateway)} is not an edge gateway name (a DNS label)"
        if world is not None and not allow_unknown:
            proxy = world.proxies.get(gateway)
            if proxy is None or proxy.kind != "edge":
                return f"unknown edge gateway {_q(gateway)} (pass --allow-unknown to refer to it before it exists)"
        return None
    if not is_dns_label(source):
        return f"{_q(source)} is not a service name (a DNS label), '*' or 'edge:<gateway>'"
    if world is not None and not allow_unknown and source not in world.services:
        return f"unknown service {_q(source)} (pass --allow-unknown to refer to it before it exists)"
    return None


def policy_violations(
    p: Policy, world: World | None = None, *, allow_unknown: bool = False
) -> list[Violation]:
    """Every way `p` breaks the model; [] when it is fine. `world` enables existence checks."""
    v = Checker()
    v.dns_label("id", p.id)
    v.one_of("action", p.action, ACTIONS)
    v.one_of("mode", p.mode, MODES)

    if not p.sources:
        v.add("sources", "at least one source is required (a service, '*' or 'edge:<gateway>')")
    seen: set[str] = set()
    for i, src in enumerate(p.sources):
        problem = _source_problem(src, world, allow_unknown)
        if problem:
            v.add(f"sources[{i}]", problem)
        elif src in seen:
            v.add(f"sources[{i}]", f"{_q(src)} is listed twice")
        seen.add(src)
    if ANY_SOURCE in p.sources and len(p.sources) > 1:
        v.add("sources", "'*' already means every mesh identity: list it alone")

    protocol = None
    if v.dns_label("target", p.target) and world is not None:
        svc = world.services.get(p.target)
        if svc is not None:
            protocol = svc.protocol
        elif not allow_unknown:
            v.add("target", f"unknown service {_q(p.target)} (pass --allow-unknown to refer to it before it exists)")

    tcp = protocol == "tcp"
    tcp_msg = f"service {_q(p.target)} is tcp: only sources apply (no methods, paths, headers or gRPC methods)"
    for i, m in enumerate(p.methods):
        if m not in HTTP_METHODS:
            v.add(f"methods[{i}]", f"unknown method {_q(m)} (one of {', '.join(HTTP_METHODS)})")
        elif m in p.methods[:i]:
            v.add(f"methods[{i}]", f"{_q(m)} is listed twice")
        elif tcp:
            v.add(f"methods[{i}]", tcp_msg)
    for i, pm in enumerate(p.paths):
        if pm.kind not in PATH_KINDS:
            v.add(f"paths[{i}].kind", f"{_q(pm.kind)} is not one of: {', '.join(PATH_KINDS)}")
            continue
        for problem in rule_path_problems(pm.value, pm.kind):
            v.add(f"paths[{i}]", problem)
        if tcp:
            v.add(f"paths[{i}]", tcp_msg)
    for i, (name, value) in enumerate(p.headers):
        if not _HEADER_NAME.match(name):
            v.add(f"headers[{i}]", f"{_q(name)} is not a header name (lower-case token, no ':' pseudo-headers; use methods/paths)")
        elif name in [h for h, _ in p.headers[:i]]:
            v.add(f"headers[{i}]", f"{_q(name)} is given twice (one value per header)")
        if not _HEADER_VALUE.match(value):
            v.add(f"headers[{i}]", f"value of {_q(name)} holds control or non-ASCII characters")
        if tcp:
            v.add(f"headers[{i}]", tcp_msg)
    for i, gm in enumerate(p.grpc_methods):
        if not _GRPC_METHOD.match(gm):
            v.add(f"grpc_methods[{i}]", f"{_q(gm)} is not a gRPC method (package.Service/Method or package.Service/*)")
        elif protocol is not None and protocol != "grpc":
            v.add(f"grpc_methods[{i}]", f"service {_q(p.target)} is {protocol}, not grpc")
    if p.claims and not any(s.startswith(EDGE_PREFIX) for s in p.sources):
        v.add("claims", "claims apply only to edge sources ('edge:<gateway>')")
    return v.violations


def check_policy(p: Policy, world: World | None = None, *, allow_unknown: bool = False) -> None:
    """Raise ValidationError listing every violation of `p`."""
    violations = policy_violations(p, world, allow_unknown=allow_unknown)
    if violations:
        raise ValidationError(violations, f"policy {_q(p.id)}")
