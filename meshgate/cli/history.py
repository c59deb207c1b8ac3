"""meshgate CLI: history."""

from __future__ import annotations

import click


@click.command("history")
def history() -> None:
    """List revisions."""
    raise click.ClickException("not available yet")


@click.command("diff")
def diff() -> None:
    """Show what changed between revisions."""
    raise click.ClickException("not available yet")


@click.command("rollback")
def rollback() -> None:
    """Restore the state of a revision."""
    raise click.ClickException("not available yet")
