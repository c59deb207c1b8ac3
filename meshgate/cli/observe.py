"""meshgate CLI: observe."""

from __future__ import annotations

import click


@click.command("top")
def top() -> None:
    """Live table of service-to-service traffic."""
    raise click.ClickException("not available yet")


@click.command("events")
def events() -> None:
    """Recent denied attempts."""
    raise click.ClickException("not available yet")
