"""meshgate CLI: serve."""

from __future__ import annotations

import click


@click.command("serve")
def serve() -> None:
    """Run the xDS control plane."""
    raise click.ClickException("not available yet")
