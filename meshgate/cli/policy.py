"""`meshgate policy allow|deny|list|show|remove|check|matrix`."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import click
from google.protobuf import json_format

from meshgate.cli.context import CliContext, pass_ctx
from meshgate.cli.output import emit, output_option
from meshgate.errors import ValidationError, Violation
from meshgate.model import PathMatch, Policy
from meshgate.policy.check import check
from meshgate.policy.compile import policy_for
from meshgate.policy.matrix import access_matrix, callers
from meshgate.policy.validate import ANY_SOURCE, EDGE_PREFIX, policy_violations
from meshgate.store.db import reading
from meshgate.store.mesh import get_mesh
from meshgate.store.policies import (
    add_policy,
    get_policy,
    list_policies,
    policy_to_dict,
    remove_policy,
)
from meshgate.store.txn import write
from meshgate.store.world import load_world, load_world_conn

LIST_COLUMNS = ("id", "action", "mode", "from", "to", "methods", "paths", "headers", "grpc")


@click.group("policy")
def policy() -> None:
    """Authorization: who may call what, enforced by Envoy RBAC from mTLS identities.

    Deny rules win over allow rules. With the mesh default `deny`, a call
    passes only when an allow rule matches it. `--audit` rules are logged and
    counted by Envoy but never enforced. See docs/policy.md.

    \b
    Examples:
        meshgate policy allow --from web --to orders --method GET --path '/api/**'
        meshgate policy deny --from '*' --to orders --path-prefix /admin
        meshgate policy check --from web --to orders --method GET --path /api/items
        meshgate policy matrix
    """


def _split(values: tuple[str, ...]) -> list[str]:
    """`--x a,b --x c` -> [a, b, c] (empty items kept out). A flag given with nothing in it
    (`--method ""`, e.g. from an unset shell variable) stays as "" for validation to refuse:
    dropping it would silently widen the rule to every method."""
    out: list[str] = []
    for v in values:
        items = [item.strip() for item in v.split(",") if item.strip() != ""]
        out.extend(items or [v.strip()])
    return out


def _headers(raw: tuple[str, ...], v: list[Violation]) -> tuple[tuple[str, str], ...]:
    out = []
    for i, item in enumerate(raw):
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            v.append(Violation(f"headers[{i}]", f'"{item}" is not NAME=VALUE'))
            out.append(("", ""))  # keeps the positions of the others; reported above
            continue
        out.append((name.strip().lower(), value))
    return tuple(out)


def _rule_options(f: Any) -> Any:
    options = [
        click.option("--from", "sources", multiple=True, required=True, metavar="SRC[,SRC]",
                     help="Callers: service names, '*' (any mesh identity) or edge:<gateway>; "
                     "comma-separated or repeated."),
        click.option("--to", "target", required=True, metavar="SERVICE", help="The service called."),
        click.option("--method", "methods", multiple=True, metavar="M[,M]",
                     help="HTTP methods (GET, POST ...); comma-separated or repeated."),
        click.option("--path-prefix", "prefixes", multiple=True, metavar="/P",
                     help="Paths starting with /P; repeatable."),
        click.option("--path-exact", "exacts", multiple=True, metavar="/P",
                     help="Exactly the path /P; repeatable."),
        click.option("--path", "globs", multiple=True, metavar="GLOB",
                     help="Glob: '*' is one segment (/api/*), '**' any depth (/api/**); repeatable."),
        click.option("--header", "headers", multiple=True, metavar="NAME=VALUE",
                     help="Request header equal to VALUE; repeatable (all must match)."),
        click.option("--grpc-method", "grpc_methods", multiple=True, metavar="pkg.Svc/Method",
                     help="gRPC method (pkg.Svc/Method or pkg.Svc/*), grpc services only; repeatable."),
        click.option("--audit", is_flag=True,
                     help="Audit mode: Envoy logs and counts matches but does not enforce."),
        click.option("--id", "policy_id", default="", metavar="NAME",
                     help="Rule id (DNS label); default generated, like allow-web-to-orders."),
        click.option("--allow-unknown", is_flag=True,
                     help="Accept services or edge gateways that do not exist yet."),
    ]
    for option in reversed(options):
        f = option(f)
    return f


def _add(ctx: CliContext, action: str, sources: tuple[str, ...], target: str,
         methods: tuple[str, ...], prefixes: tuple[str, ...], exacts: tuple[str, ...],
         globs: tuple[str, ...], headers: tuple[str, ...], grpc_methods: tuple[str, ...],
         audit: bool, policy_id: str, allow_unknown: bool) -> None:
    parse_errors: list[Violation] = []
    p = Policy(
        id=policy_id,
        action=action,  # type: ignore[arg-type]
        sources=tuple(_split(sources)),
        target=target,
        methods=tuple(m.upper() for m in _split(methods)),
        paths=tuple(
            [PathMatch("exact", x) for x in exacts]
            + [PathMatch("prefix", x) for x in prefixes]
            + [PathMatch("glob", x) for x in globs]
        ),
        headers=_headers(headers, parse_errors),
        grpc_methods=tuple(_split(grpc_methods)),
        mode="audit" if audit else "enforce",
    )
    if parse_errors:
        # report the flags that could not be read together with every other problem
        with reading(ctx.engine) as conn:
            world = load_world_conn(conn)
        # a generated id is valid by construction: check the rest with a placeholder
        more = policy_violations(p if p.id else replace(p, id="x"), world,
                                 allow_unknown=allow_unknown)
        reported = {v.field for v in parse_errors}
        raise ValidationError(parse_errors + [v for v in more if v.field not in reported], "policy")
    with write(ctx.engine, f"policy {action} {','.join(p.sources)} -> {target}", ctx.actor) as w:
        added = add_policy(w, p, allow_unknown=allow_unknown)
        default = get_mesh(w.conn).default_action
    mode = " (audit: logged, not enforced)" if added.mode == "audit" else ""
    click.echo(f'policy "{added.id}" added (revision {w.revision}): {describe(added)}{mode}')
    if action == "allow" and default == "allow":
        click.echo("note: the mesh default is allow, so allow rules change nothing until "
                   "`meshgate mesh set --default-action deny`", err=True)


def describe(p: Policy) -> str:
    """`allow web,api -> orders GET,HEAD /api/** x-tenant=blue`."""
    parts = [p.action, ",".join(p.sources), "->", p.target]
    if p.methods:
        parts.append(",".join(p.methods))
    paths = [pm.value if pm.kind == "glob" else f"{pm.kind}:{pm.value}" for pm in p.paths]
    paths += ["/" + g for g in p.grpc_methods]
    if paths:
        parts.append(",".join(paths))
    parts += [f"{k}={v}" for k, v in p.headers]
    return " ".join(parts)


@policy.command("allow")
@_rule_options
@pass_ctx
def allow(ctx: CliContext, **kw: Any) -> None:
    """Allow callers to call a service (optionally only some methods/paths).

    \b
    Examples:
        meshgate policy allow --from web --to orders
        meshgate policy allow --from web,mobile-api --to orders --method GET,HEAD --path '/api/**'
        meshgate policy allow --from web --to billing --grpc-method shop.Billing/Charge
        meshgate policy allow --from edge:public --to orders --path-prefix /api/ --audit
    """
    _add(ctx, "allow", **kw)


@policy.command("deny")
@_rule_options
@pass_ctx
def deny(ctx: CliContext, **kw: Any) -> None:
    """Deny callers (deny wins over every allow rule).

    Paths and methods in deny rules match ignoring case, so /ADMIN cannot get
    around a rule on /admin.

    \b
    Examples:
        meshgate policy deny --from '*' --to orders --path-prefix /admin
        meshgate policy deny --from web --to orders --method DELETE --id web-no-delete
    """
    _add(ctx, "deny", **kw)


def _listing(p: Policy) -> dict[str, Any]:
    return {
        "id": p.id,
        "action": p.action,
        "mode": p.mode,
        "from": list(p.sources),
        "to": p.target,
        "methods": list(p.methods),
        "paths": [f"{pm.kind}:{pm.value}" for pm in p.paths],
        "headers": {k: v for k, v in p.headers},
        "grpc": list(p.grpc_methods),
    }


@policy.command("list")
@click.option("--to", "target", metavar="SERVICE", help="Only rules on this target.")
@click.option("--from", "source", metavar="SERVICE",
              help="Only rules naming this caller (or '*').")
@output_option
@pass_ctx
def list_(ctx: CliContext, target: str | None, source: str | None, output: str) -> None:
    """List policies in the order they were added.

    \b
    Examples:
        meshgate policy list
        meshgate policy list --to orders --output json
    """
    with reading(ctx.engine) as conn:
        found = list_policies(conn, target=target, source=source)
    if output == "table":
        emit([_listing(p) for p in found], output, columns=LIST_COLUMNS)
    else:
        emit([policy_to_dict(p) for p in found], output)


@policy.command("show")
@click.argument("policy_id", metavar="ID")
@output_option
@pass_ctx
def show(ctx: CliContext, policy_id: str, output: str) -> None:
    """Show one policy and the Envoy RBAC policy it compiles to.

    \b
    Examples:
        meshgate policy show allow-web-to-orders
        meshgate policy show allow-web-to-orders --output yaml
    """
    world = load_world(ctx.engine)
    with reading(ctx.engine) as conn:
        p = get_policy(conn, policy_id)
    svc = world.services.get(p.target)
    compiled = policy_for(world, p, http=svc is None or svc.protocol != "tcp")
    record: dict[str, Any] = policy_to_dict(p)
    record["summary"] = describe(p)
    record["envoy_policy"] = json_format.MessageToDict(compiled)
    if output == "table":
        del record["envoy_policy"]
        emit(record, output, title=f"policy {policy_id}")
        click.echo("(the compiled Envoy RBAC policy: --output yaml)")
    else:
        emit(record, output)


@policy.command("remove")
@click.argument("policy_ids", nargs=-1, required=True, metavar="ID...")
@pass_ctx
def remove(ctx: CliContext, policy_ids: tuple[str, ...]) -> None:
    """Remove policies by id (all or none: one unknown id removes nothing).

    \b
    Examples:
        meshgate policy remove allow-web-to-orders
        meshgate policy remove deny-any-to-orders web-no-delete
    """
    with write(ctx.engine, f"policy remove {' '.join(policy_ids)}", ctx.actor) as w:
        for pid in policy_ids:
            remove_policy(w, pid)
    click.echo(f"removed {', '.join(policy_ids)} (revision {w.revision})")


@policy.command("check")
@click.option("--from", "caller", required=True, metavar="CALLER",
              help="The caller: a service, edge:<gateway> or a spiffe:// id.")
@click.option("--to", "target", required=True, metavar="SERVICE", help="The service called.")
@click.option("--method", default="GET", show_default=True, help="HTTP method.")
@click.option("--path", default="/", show_default=True, help="Request path (query allowed).")
@click.option("--header", "headers", multiple=True, metavar="NAME=VALUE",
              help="A request header; repeatable.")
@click.option("--grpc-method", metavar="pkg.Svc/Method", help="A gRPC call instead of --method/--path.")
@output_option
@pass_ctx
def check_(ctx: CliContext, caller: str, target: str, method: str, path: str,
           headers: tuple[str, ...], grpc_method: str | None, output: str) -> None:
    """Would this call pass? Prints the decision and the rule that decided.

    Computed from the same compiled RBAC Envoy runs, after the same path
    normalization (/a/../b -> /b, // -> /, %2F rejected).

    \b
    Examples:
        meshgate policy check --from web --to orders --method GET --path /api/items
        meshgate policy check --from web --to orders --path /admin/../x --output json
        meshgate policy check --from web --to billing --grpc-method shop.Billing/Charge
    """
    problems: list[Violation] = []
    parsed = dict(_headers(headers, problems))
    world = load_world(ctx.engine)
    svc = world.services.get(target)
    if caller != ANY_SOURCE and not caller.startswith(("spiffe://", EDGE_PREFIX)) \
            and caller not in world.services:
        problems.append(Violation("from", f'unknown service "{caller}"'))
    if svc is not None and svc.protocol == "tcp" and (grpc_method or headers or path != "/"
                                                      or method != "GET"):
        problems.append(Violation("to", f'service "{target}" is tcp: only --from/--to apply'))
    if grpc_method and path != "/":
        problems.append(Violation("grpc-method", "give --grpc-method or --path, not both"))
    if problems:
        raise ValidationError(problems, "check")
    decision = check(world, caller, target, method.upper(), path, parsed, grpc_method)
    record = decision.as_dict()
    if output == "table":
        verdict = "ALLOW" if decision.allowed else "DENY"
        click.echo(f"{verdict}: {decision.reason}")
        if decision.detail:
            click.echo(f"  envoy detail: {decision.detail} (HTTP {decision.status})")
        elif decision.status:
            click.echo(f"  envoy answers HTTP {decision.status}")
        if decision.path is not None and decision.path != path.split("?", 1)[0]:
            click.echo(f"  path as Envoy sees it: {decision.path}")
        for rid in decision.audit_rule_ids:
            click.echo(f"  audit rule {rid!r} matches (logged, not enforced)")
        if decision.audit_rule_ids or decision.would_allow != decision.allowed:
            would = "allow" if decision.would_allow else "deny"
            click.echo(f"  with audit rules enforced: {would}")
    else:
        emit(record, output)


@policy.command("matrix")
@output_option
@pass_ctx
def matrix(ctx: CliContext, output: str) -> None:
    """Which caller may call which service: all, some (narrowed) or none.

    \b
    Examples:
        meshgate policy matrix
        meshgate policy matrix --output json
    """
    world = load_world(ctx.engine)
    cells = access_matrix(world)
    if output != "table":
        emit([c.as_dict() for c in cells], output)
        return
    targets = sorted(world.services)
    grid = {(c.caller, c.target): c for c in cells}
    rows = []
    for caller in callers(world):
        row: dict[str, Any] = {"from \\ to": caller}
        for t in targets:
            c = grid[(caller, t)]
            mark = {"all": "all", "some": "some", "none": "-"}[c.access]
            row[t] = mark + (" (audit)" if c.audit_rules else "")
        rows.append(row)
    emit(rows, output, columns=["from \\ to", *targets],
         title=f"mesh default: {world.mesh.default_action}")
