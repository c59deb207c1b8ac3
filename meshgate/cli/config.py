"""`meshgate apply|export|plan|validate`: the mesh as YAML files kept in git."""

from __future__ import annotations

from typing import Any

import click

from meshgate.cli.context import CliContext, pass_ctx
from meshgate.cli.output import emit, output_option
from meshgate.store.db import reading

_FILE_HELP = "YAML file of documents (see docs/config.md); '-' reads stdin."
_OP = {"add": "+", "update": "~", "remove": "-"}


def _change_line(c: Any) -> str:
    fields = f" ({', '.join(c.changed_fields())})" if c.op == "update" else ""
    return f"{_OP[c.op]} {c.kind} {c.key!r}{fields}"


def _echo_changes(changes: list[Any]) -> None:
    for c in sorted(changes, key=lambda c: ("+~-".index(_OP[c.op]), c.kind, c.key)):
        click.echo(_change_line(c))


def _load(path: str) -> list[Any]:
    from meshgate.config.load import load_path

    return load_path(path)


@click.command("apply")
@click.option("-f", "--file", "path", required=True, metavar="FILE", help=_FILE_HELP)
@click.option("--prune", is_flag=True,
              help="Also remove objects of the managed kinds that the file does not list "
              "(never runtime state: tokens, self-registered instances, certificates).")
@click.option("--validate", "check_envoy", is_flag=True,
              help="Render every affected proxy's config and refuse the change unless the real "
              "Envoy (--mode validate) accepts it.")
@click.option("--dry-run", is_flag=True, help="Show what would change; write nothing.")
@output_option
@pass_ctx
def apply(ctx: CliContext, path: str, prune: bool, check_envoy: bool, dry_run: bool, output: str) -> None:
    """Make the mesh match a YAML file: all of it in one transaction and one revision.

    Objects in the file are added or changed through the same checks as the
    CLI; applying the same file again changes nothing (no new revision).
    Every problem is listed with its file:line:column and nothing is written.
    A Gateway or Sidecar the file creates gets a join token, printed once.

    \b
    Examples:
        meshgate apply -f mesh.yaml
        meshgate apply -f mesh.yaml --prune --validate
        meshgate export | meshgate apply -f - --dry-run
    """
    from meshgate.config import apply as config_apply
    from meshgate.config.plan import make_plan

    docs = _load(path)
    source = "<stdin>" if path == "-" else path
    if dry_run:
        plan = make_plan(ctx.engine, docs, prune=prune)
        if check_envoy:
            _validate_world(plan.after, [p.proxy for p in plan.proxies if p.status != "removed"])
        if output != "table":
            emit({"dry_run": True, "changes": [c.as_dict() for c in plan.changes]}, output)
            return
        _echo_changes(plan.changes)
        click.echo(f"dry run: {config_apply.counts(plan.changes)}; nothing was written")
        return
    expect = None
    if check_envoy:
        expect = _validated_expectation(ctx, docs, prune)
    outcome = config_apply.apply(ctx.engine, docs, prune=prune, actor=ctx.actor, source=source,
                                 expect=expect)
    if output != "table":
        emit({"revision": outcome.revision, "changes": [c.as_dict() for c in outcome.changes],
              "tokens": outcome.effects.tokens}, output)
        return
    if not outcome.changes:
        click.echo("no changes: the store already matches the file")
        return
    _echo_changes(outcome.changes)
    click.echo(f"applied {source}: {config_apply.counts(outcome.changes)} (revision {outcome.revision})")
    for name, token in sorted(outcome.effects.tokens.items()):
        click.echo(f'join token for proxy "{name}" (shown once, keep it secret): {token}')


def _validate_world(world: Any, proxies: list[str]) -> None:
    from meshgate.config.envoy_check import validate_world
    from meshgate.config.errors import EnvoyRejected

    failures = validate_world(world, proxies)
    if failures:
        raise EnvoyRejected(failures, "; nothing was changed")


def _validated_expectation(ctx: CliContext, docs: list[Any], prune: bool) -> Any:
    """Plan (rolled back), run Envoy on every affected proxy, and return the check the
    real apply runs before commit: the store must give the same World that was validated."""
    from meshgate.config.plan import make_plan
    from meshgate.config.world_compare import world_signature
    from meshgate.errors import Conflict
    from meshgate.store.world import load_world_conn

    plan = make_plan(ctx.engine, docs, prune=prune)
    _validate_world(plan.after, [p.proxy for p in plan.proxies if p.status != "removed"])
    expected = world_signature(plan.after)

    def expect(conn: Any) -> None:
        if world_signature(load_world_conn(conn)) != expected:
            raise Conflict("the store changed while Envoy validated the new config; "
                           "nothing was changed, run the command again")

    return expect


@click.command("export")
@click.option("--output", "-o", type=click.Choice(("yaml", "json")), default="yaml", show_default=True,
              help="Output format (both can be applied again).")
@pass_ctx
def export(ctx: CliContext, output: str) -> None:
    """Print the mesh's config as documents `meshgate apply` reads back.

    Secrets and runtime state are never exported: join tokens, revocation,
    edge certificates, CA material, self-registered instances.

    \b
    Examples:
        meshgate export > mesh.yaml
        meshgate export --output json
    """
    from meshgate.config.export import export_docs, to_json, to_yaml
    from meshgate.store.txn import current_revision

    with reading(ctx.engine) as conn:
        docs = export_docs(conn)
        rev = current_revision(conn)
    click.echo(to_json(docs) if output == "json" else to_yaml(docs, f"revision {rev}").rstrip())


@click.command("plan")
@click.option("-f", "--file", "path", required=True, metavar="FILE", help=_FILE_HELP)
@click.option("--prune", is_flag=True, help="Plan as `apply --prune` would (removals included).")
@output_option
@pass_ctx
def plan(ctx: CliContext, path: str, prune: bool, output: str) -> None:
    """Show what applying a file would change, writing nothing: objects added, changed
    and removed; each proxy whose Envoy config would change and which resources; the
    access-matrix pairs that become allowed or denied.

    \b
    Examples:
        meshgate plan -f mesh.yaml
        meshgate plan -f mesh.yaml --prune --output json
    """
    from meshgate.config.plan import make_plan

    p = make_plan(ctx.engine, _load(path), prune=prune)
    if output != "table":
        emit(p.as_dict(), output)
        return
    if not p.changes:
        click.echo("no changes: the store already matches the file")
        return
    click.echo(f"objects ({len(p.changes)}):")
    for c in sorted(p.changes, key=lambda c: ("+~-".index(_OP[c.op]), c.kind, c.key)):
        click.echo("  " + _change_line(c))
    click.echo(f"proxies whose config changes ({len(p.proxies)}):" if p.proxies
               else "proxies whose config changes: none")
    for d in p.proxies:
        if d.error:
            click.echo(f"  {d.proxy} ({d.kind}): cannot translate: {d.error}")
            continue
        parts = [f"+{r}" for r in d.added] + [f"~{r}" for r in d.changed] + [f"-{r}" for r in d.removed]
        status = "" if d.status == "changed" else f" [{d.status}]"
        click.echo(f"  {d.proxy} ({d.kind}){status}: {', '.join(parts) or 'no resources'}")
    click.echo(f"access changes ({len(p.access)}):" if p.access else "access changes: none")
    for a in p.access:
        click.echo(f"  {a['change']}: {a['from']} -> {a['to']} ({a['before'] or '-'} -> {a['after']})")


@click.command("validate")
@click.option("-f", "--file", "path", default=None, metavar="FILE",
              help="Validate the config this file would give (default: the config in the store).")
@click.option("--prune", is_flag=True, help="With -f: as `apply --prune` would leave it.")
@click.option("--proxy", "proxies", multiple=True, metavar="NAME", help="Only these proxies; repeatable.")
@output_option
@pass_ctx
def validate(ctx: CliContext, path: str | None, prune: bool, proxies: tuple[str, ...], output: str) -> None:
    """Render every proxy's Envoy config and run it through the real Envoy (--mode validate).

    Exit 1 when Envoy rejects any proxy's config, naming the proxy and Envoy's reason.

    \b
    Examples:
        meshgate validate
        meshgate validate -f mesh.yaml
    """
    from meshgate.config.envoy_check import validate_world
    from meshgate.config.errors import EnvoyRejected
    from meshgate.config.plan import make_plan
    from meshgate.store.world import load_world

    world = make_plan(ctx.engine, _load(path), prune=prune).after if path else load_world(ctx.engine)
    names = list(proxies) or sorted(world.proxies)
    failures = validate_world(world, names)
    if output != "table":
        emit({"proxies": names, "rejected": [{"proxy": n, "reason": r} for n, r in failures]}, output)
    if failures:
        raise EnvoyRejected(failures)
    if output == "table":
        click.echo(f"Envoy accepts the config of {len(names)} prox{'ies' if len(names) != 1 else 'y'}"
                   + (f": {', '.join(names)}" if names else ""))


__all__ = ["apply", "export", "plan", "validate"]
