"""`meshgate history|diff|rollback`: every write is a revision; see, compare, restore."""

from __future__ import annotations

from typing import Any

import click

from meshgate.cli.context import CliContext, pass_ctx
from meshgate.cli.output import emit, output_option
from meshgate.store.db import reading

BOOKKEEPING = ("created_at", "updated_at")
_OP = {"add": "+", "update": "~", "remove": "-"}
MAX_VALUE = 60


def _value(v: Any) -> str:
    if v is None:
        return "null"
    text = str(v)
    if "-----BEGIN" in text:
        return f"(PEM, {len(text)} bytes)"
    if len(text) > MAX_VALUE:
        return text[: MAX_VALUE - 1] + "…"
    return text


def describe(change: dict[str, Any]) -> str:
    """`~ services "orders": port 8080 -> 8081` (bookkeeping columns left out)."""
    head = f"{_OP.get(change['op'], '?')} {change['kind']} {change['key']!r}"
    before, after = change.get("before") or {}, change.get("after") or {}
    if change["op"] == "update":
        fields = [k for k in dict.fromkeys([*before, *after])
                  if k not in BOOKKEEPING and before.get(k) != after.get(k)]
        return head + ": " + "; ".join(f"{k} {_value(before.get(k))} -> {_value(after.get(k))}"
                                        for k in fields)
    return head


@click.command("history")
@click.option("--limit", "-n", type=click.IntRange(min=1), default=20, show_default=True,
              help="Show this many revisions, newest first.")
@click.option("--changes", "with_changes", is_flag=True, help="List each revision's changes too.")
@output_option
@pass_ctx
def history(ctx: CliContext, limit: int, with_changes: bool, output: str) -> None:
    """List revisions: who changed what, when. Every write (CLI, apply, rollback) is one.

    \b
    Examples:
        meshgate history
        meshgate history --limit 5 --changes
        meshgate history --output json
    """
    from meshgate.store.revisions import list_revisions

    with reading(ctx.engine) as conn:
        revs = list_revisions(conn, limit)
    if output != "table":
        emit([r.as_dict(with_changes=True) for r in revs], output)
        return
    if not with_changes:
        emit([r.as_dict() for r in revs], output, columns=("revision", "at", "actor", "summary", "changes"))
        return
    for r in revs:
        d = r.as_dict()
        click.echo(f"revision {r.id}  {d['at']}  {r.actor}  {r.summary}")
        for c in r.changes:
            click.echo("  " + describe(c))


@click.command("diff")
@click.argument("rev_a", type=int, metavar="REV")
@click.argument("rev_b", type=int, required=False, metavar="[REV2]")
@output_option
@pass_ctx
def diff(ctx: CliContext, rev_a: int, rev_b: int | None, output: str) -> None:
    """Show what changed from the state at REV to the state at REV2 (default: now).

    One line per row that differs (changes in between are composed); REV2 below
    REV shows the way back. `meshgate diff 6 7` is what revision 7 changed.

    \b
    Examples:
        meshgate diff 5
        meshgate diff 5 9 --output json
    """
    from meshgate.store.revisions import net_changes

    with reading(ctx.engine) as conn:
        changes = net_changes(conn, rev_a, rev_b)
    if output != "table":
        emit(changes, output)
        return
    if not changes:
        click.echo("no differences")
        return
    for c in changes:
        click.echo(describe(c))


@click.command("rollback")
@click.argument("rev", type=int)
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
@output_option
@pass_ctx
def rollback(ctx: CliContext, rev: int, yes: bool, output: str) -> None:
    """Restore the state as of REV, as a NEW revision (history is never rewritten).

    Running servers push it like any other change. Never rolled back: CA
    certificates and rotation, proxy revocation and join tokens (a proxy that
    comes back gets a new token, printed once), self-registered instances.

    \b
    Examples:
        meshgate diff 12          # what rolling back to 12 would undo
        meshgate rollback 12 --yes
    """
    from meshgate.store.revisions import net_changes
    from meshgate.store.revisions import rollback as do_rollback

    if not yes:
        with reading(ctx.engine) as conn:
            undo = net_changes(conn, rev)
        if not undo:
            click.echo(f"nothing to roll back: the state is the same as at revision {rev}")
            return
        click.echo(f"rolling back to revision {rev} undoes:")
        for c in undo:
            click.echo("  " + describe({**c, "op": {"add": "remove", "remove": "add"}.get(c["op"], c["op"]),
                                        "before": c["after"], "after": c["before"]}))
        click.confirm("roll back?", abort=True)
    res = do_rollback(ctx.engine, rev, ctx.actor)
    if output != "table":
        emit({"revision": res.revision, "target": rev, "changes": res.changes, "tokens": res.tokens,
              "notes": res.notes}, output)
        return
    for note in res.notes:
        click.echo(f"note: {note}", err=True)
    if res.revision is None:
        click.echo(f"nothing to roll back: the state is the same as at revision {rev}")
        return
    for c in res.changes:
        click.echo(describe(c))
    click.echo(f"rolled back to revision {rev} (revision {res.revision})")
    for name, token in sorted(res.tokens.items()):
        click.echo(f'join token for proxy "{name}" (shown once, keep it secret): {token}')
