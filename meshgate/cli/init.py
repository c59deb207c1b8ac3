"""meshgate CLI: init."""

from __future__ import annotations

import click


@click.command("init")
def init() -> None:
    """Create the database and the mesh."""
    raise click.ClickException("not available yet")
