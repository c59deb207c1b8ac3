"""meshgate CLI: config."""

from __future__ import annotations

import click


@click.command("apply")
def apply() -> None:
    """Apply a YAML mesh description."""
    raise click.ClickException("not available yet")


@click.command("export")
def export() -> None:
    """Export the mesh as YAML."""
    raise click.ClickException("not available yet")


@click.command("plan")
def plan() -> None:
    """Show what applying a YAML file would change."""
    raise click.ClickException("not available yet")


@click.command("validate")
def validate() -> None:
    """Validate every proxy's config with Envoy."""
    raise click.ClickException("not available yet")
